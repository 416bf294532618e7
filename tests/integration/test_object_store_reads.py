"""Reading a version on a host that ran none of its stages: the report, the dashboard and
`validate_model` from an empty folder, with only the database and the object store in common.

Two runs are made by a real worker on folder A with MODEL_STORE_URL set (moto in server mode, a
bucket per test; models sealed with ML_MASTER_KEYS). Host B is an empty folder with the same
database and store: `trainctl report`, `trainctl ui` and `validate_model` there show what they
show on A, because they fetch the files from the store, verified against what the run recorded.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_report_command import RANGE, START
from tests.support.processes import celery_worker, service_env, spawn_logged, stop_group, wait_for
from tests.support.s3_server import S3Server, running_s3_server
from training_tasks.config.settings import Settings
from training_tasks.demo import scada
from training_tasks.protocol.keyring import generate_key
from training_tasks.runtime import build_runtime
from training_tasks.service import TrainingService

pytestmark = pytest.mark.integration

ORG = "acme-corp"
MASTER_KEY = generate_key("k1")
RUN_TIMEOUT_S = 180.0
UI_START_TIMEOUT_S = 30.0
# What a validation measures the same way on every host (latency and memory differ per run).
SAME_FIGURES = ("passed", "failures", "metrics", "counts", "intervals", "rows", "modelSha256")


@dataclass
class Hosts:
    """Folder A, where a worker ran both runs, and folder B, empty, on the same store."""

    env_a: dict[str, str]
    env_b: dict[str, str]
    base_a: Path
    base_b: Path
    first: str
    second: str  # deployed: the first was when it was validated


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def hosts(
    tmp_path: Path, redis_url: str, sqlite_url: str, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Hosts]:
    store_env = s3.store_env(s3.new_bucket())
    for name, value in {**store_env, "ML_MASTER_KEYS": MASTER_KEY}.items():
        monkeypatch.setenv(name, value)  # this process is host B's trainctl
    scada_path = tmp_path / "scada.db"
    frame = scada.generate_sensor_frame(assets=6, days=30, interval_min=10, seed=7, start=START)
    scada.write_scada_sqlite(scada_path, frame, scada.ACME_LAYOUT)
    base_a, base_b = tmp_path / "host-a", tmp_path / "host-b"
    env_a = {
        **service_env(redis_url=redis_url, database_url=sqlite_url, ml_base_path=base_a),
        **store_env,
        "ML_MASTER_KEYS": MASTER_KEY,
    }
    service = TrainingService(build_runtime(Settings.from_env(env_a)))
    config = scada.demo_org_config(ORG, f"sqlite:///{scada_path}", scada.ACME_LAYOUT)
    service.register_organization(ORG, config, actor="test")
    try:
        with celery_worker(env_a, tmp_path) as worker:
            made = []
            for _ in range(2):
                result = service.train_model(ORG, {"dataRange": RANGE}, timeout_s=RUN_TIMEOUT_S)
                assert isinstance(result, dict), result
                assert result["status"] == "succeeded", result["error"] or worker.log_tail()
                made.append(result["version"])
    finally:
        service.close()
    env_b = {**env_a, "ML_BASE_PATH": str(base_b)}
    yield Hosts(env_a, env_b, base_a, base_b, *made)


def _trainctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training_tasks.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return reply.status, reply.read().decode()


def test_trainctl_report_on_an_empty_folder_prints_the_report_the_validating_host_wrote(
    hosts: Hosts,
) -> None:
    shown = _trainctl(hosts.env_b, "report", ORG)

    assert shown.returncode == 0, shown.stderr
    path = Path(shown.stdout.strip())
    assert path == hosts.base_b / "artifacts" / ORG / hosts.second / "report.html"
    written = hosts.base_a / "artifacts" / ORG / hosts.second / "report.html"
    assert path.read_bytes() == written.read_bytes()  # the same figures, byte for byte
    html = path.read_text()
    assert hosts.second in html and hosts.first in html  # drawn over the deployed model's
    assert len(re.findall(r"<img[^>]+src=\"data:image/svg\+xml;base64,", html)) >= 5
    # The report data is in the store too: a rebuild here draws every curve again.
    rebuilt = _trainctl(hosts.env_b, "report", ORG, "--rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    html = Path(rebuilt.stdout.strip()).read_text()
    assert hosts.second in html and hosts.first in html
    assert len(re.findall(r"<img[^>]+src=\"data:image/svg\+xml;base64,", html)) >= 5
    earlier = _trainctl(hosts.env_b, "report", ORG, hosts.first)
    assert earlier.returncode == 0, earlier.stderr
    # Not rebuilt: the report as the validating host wrote it.
    assert (
        Path(earlier.stdout.strip()).read_bytes()
        == (hosts.base_a / "artifacts" / ORG / hosts.first / "report.html").read_bytes()
    )


def test_the_dashboard_on_an_empty_folder_lists_and_serves_every_versions_report(
    hosts: Hosts, tmp_path: Path
) -> None:
    log = tmp_path / "ui.log"
    argv = [sys.executable, "-m", "training_tasks.cli", "ui", "--port", "0"]
    ui = spawn_logged(argv, {**os.environ, **hosts.env_b}, log)
    try:
        found = wait_for(
            lambda: re.search(r"on (http://\S+)", log.read_text()), UI_START_TIMEOUT_S, "the UI"
        )
        url = found.group(1).rstrip("/")
        status, page = _get(f"{url}/orgs/{ORG}")
        assert status == 200
        assert page.count(">report</a>") == 2 and "no report" not in page
        for version in (hosts.first, hosts.second):
            status, body = _get(f"{url}/orgs/{ORG}/versions/{version}/report.html")
            written = hosts.base_a / "artifacts" / ORG / version / "report.html"
            assert status == 200 and body == written.read_text()
    finally:
        stop_group(ui)


def test_validate_model_on_an_empty_folder_gives_the_figures_of_the_host_that_trained(
    hosts: Hosts,
) -> None:
    figures: list[dict[str, Any]] = []
    for env, base in ((hosts.env_a, hosts.base_a), (hosts.env_b, hosts.base_b)):
        service = TrainingService(build_runtime(Settings.from_env(env)))
        try:
            model = base / "models" / ORG / f"model_{hosts.second}.onnx"
            figures.append(service.validate_model(ORG, model))
        finally:
            service.close()
    on_a, on_b = figures

    assert on_b["passed"], on_b["failures"]
    assert {name: on_b[name] for name in SAME_FIGURES} == {
        name: on_a[name] for name in SAME_FIGURES
    }
    assert [(c["name"], c["passed"]) for c in on_b["checks"]] == [
        (c["name"], c["passed"]) for c in on_a["checks"]
    ]
    [parity] = [check for check in on_b["checks"] if check["name"] == "parity"]
    assert parity["passed"] and "skipped" not in parity["detail"], parity  # native model opened
    assert on_b["holdoutVersion"] == hosts.second
    assert (
        Path(on_b["holdoutPath"]) == hosts.base_b / "data" / ORG / hosts.second / "holdout.parquet"
    )
