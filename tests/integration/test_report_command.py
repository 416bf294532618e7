"""`trainctl report` after real trainings: the newest version's report, one against the deployed
version with both models' curves and drift, a report rebuilt after its file and the extracted
data are gone, and a one-line refusal for a version the organization does not have."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.processes import celery_worker, service_env
from training_tasks.config.settings import Settings
from training_tasks.demo import scada
from training_tasks.runtime import build_runtime
from training_tasks.service import TrainingService

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 1, tzinfo=UTC)
RANGE = {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-01-31T00:00:00Z"}
RUN_TIMEOUT_S = 180.0


@dataclass
class Trained:
    env: dict[str, str]
    base: Path
    first: str  # deployed when the second trained
    second: str


@pytest.fixture
def trained(tmp_path: Path, redis_url: str, sqlite_url: str) -> Iterator[Trained]:
    base = tmp_path / "ml"
    scada_path = tmp_path / "scada.db"
    frame = scada.generate_sensor_frame(assets=6, days=30, interval_min=10, seed=7, start=START)
    scada.write_scada_sqlite(scada_path, frame, scada.ACME_LAYOUT)
    env = service_env(redis_url=redis_url, database_url=sqlite_url, ml_base_path=base)
    service = TrainingService(build_runtime(Settings.from_env(env)))
    config = scada.demo_org_config("acme-corp", f"sqlite:///{scada_path}", scada.ACME_LAYOUT)
    service.register_organization("acme-corp", config, actor="test")
    try:
        with celery_worker(env, tmp_path):
            versions = []
            for _ in range(2):
                result = service.train_model(
                    "acme-corp", {"dataRange": RANGE}, timeout_s=RUN_TIMEOUT_S
                )
                assert isinstance(result, dict) and result["status"] == "succeeded", result
                versions.append(result["version"])
        yield Trained(env, base, *versions)
    finally:
        service.close()


def trainctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training_tasks.cli", "report", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_prints_the_newest_versions_report_built_against_the_deployed_one(
    trained: Trained,
) -> None:
    shown = trainctl(trained.env, "acme-corp")

    assert shown.returncode == 0, shown.stderr
    path = Path(shown.stdout.strip())
    assert path == trained.base / "artifacts" / "acme-corp" / trained.second / "report.html"
    html = path.read_text()
    assert trained.second in html and trained.first in html  # drawn over the deployed model
    assert len(re.findall(r"<img[^>]+src=\"data:image/svg\+xml;base64,", html)) >= 5
    assert "http://" not in html.replace("http://www.w3.org", "")  # nothing to fetch


def test_a_report_is_rebuilt_from_the_artifacts_and_one_compares_two_versions(
    trained: Trained,
) -> None:
    folder = trained.base / "artifacts" / "acme-corp" / trained.second
    (folder / "report.html").unlink()
    for parquet in trained.base.rglob("*.parquet"):
        parquet.unlink()  # the extracted data is gone too

    rebuilt = trainctl(trained.env, "acme-corp", trained.second)
    compared = trainctl(trained.env, "acme-corp", trained.second, "--compare", trained.first)

    assert rebuilt.returncode == 0, rebuilt.stderr
    assert Path(rebuilt.stdout.strip()) == folder / "report.html"
    assert (folder / "report.html").stat().st_size > 10_000
    assert compared.returncode == 0, compared.stderr
    assert Path(compared.stdout.strip()) == folder / f"report-vs-{trained.first}.html"


def test_a_version_the_organization_does_not_have_is_one_line(trained: Trained) -> None:
    missing = "v2020-01-01T00-00-00-000Z_00000000"

    refused = trainctl(trained.env, "acme-corp", missing)

    assert refused.returncode == 1
    lines = [line for line in refused.stderr.splitlines() if not line.startswith("using ")]
    assert len(lines) == 1 and missing in lines[0], refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.parametrize("planted", ["symlink", "fifo", "garbage", "huge"])
def test_a_hostile_report_data_file_is_one_line_and_never_hangs(
    trained: Trained, planted: str
) -> None:
    data = trained.base / "artifacts" / "acme-corp" / trained.second / "report_data.json"
    data.unlink()
    if planted == "symlink":
        data.symlink_to("/etc/passwd")
    elif planted == "fifo":
        os.mkfifo(data)  # a reader that follows it would block for ever
    elif planted == "garbage":
        data.write_text("{not json")
    else:
        data.write_bytes(b" " * (200 * 1024 * 1024))

    rebuilt = trainctl(trained.env, "acme-corp", trained.second, "--rebuild")

    assert rebuilt.returncode == 1, rebuilt.stdout + rebuilt.stderr
    assert "Traceback" not in rebuilt.stderr
    lines = [line for line in rebuilt.stderr.splitlines() if not line.startswith("using ")]
    assert len(lines) == 1 and "report_data.json" in lines[0], rebuilt.stderr


def test_report_data_of_the_wrong_shape_gives_a_page_without_the_parts_it_lacks(
    trained: Trained,
) -> None:
    folder = trained.base / "artifacts" / "acme-corp" / trained.second
    (folder / "report_data.json").write_text(
        '{"roc": "x", "pr": [1, 2], "operatingPoint": 3, "features": "<b>y</b>"}'
    )

    rebuilt = trainctl(trained.env, "acme-corp", trained.second, "--rebuild")

    assert rebuilt.returncode == 0 and "Traceback" not in rebuilt.stderr, rebuilt.stderr
    page = (folder / "report.html").read_text()
    assert "<b>y</b>" not in page  # nothing from the file is markup
    assert "Passed" in page or "passed" in page  # the verdict and checks still show
