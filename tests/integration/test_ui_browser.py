"""The dashboard in a real browser, on a registry that real trainings filled.

A real worker trains `acme-corp` from a SCADA table in PostgreSQL (deployed), then trains it
again under thresholds no model meets (rejected, with every reason). `trainctl ui --port 0` serves
the registry; Debian's headless Chromium opens the pages and the test checks what a person sees:
the deployed version, the rejected run's reasons, the trend chart drawn at a real size, and the
version's report when the validate stage wrote one. Screenshots go to the test's folder.
"""

from __future__ import annotations

import re
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support import browser as chromium
from tests.support.browser import rendered_size, screenshot
from tests.support.processes import (
    celery_worker,
    service_env,
    spawn_logged,
    stop_group,
    wait_for,
)
from training_tasks.config.settings import Settings
from training_tasks.demo import scada
from training_tasks.runtime import build_runtime
from training_tasks.service import TrainingService

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.postgres]
browser = chromium.browser  # the fixture: headless Debian Chromium

START = datetime(2026, 1, 1, tzinfo=UTC)
RANGE = {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-02-15T00:00:00Z"}
RUN_TIMEOUT_S = 120.0
UI_START_TIMEOUT_S = 30.0
IMPOSSIBLE = {"accuracy": 1.0, "precision": 1.0, "recall": 1.0}


@dataclass
class Trained:
    """The registry after the two runs, and the dashboard serving it."""

    url: str
    base: Path
    deployed: dict[str, Any]
    rejected: dict[str, Any]


def _train(service: TrainingService) -> tuple[dict[str, Any], dict[str, Any]]:
    request = {"dataRange": RANGE}
    deployed = service.train_model("acme-corp", request, timeout_s=RUN_TIMEOUT_S)
    assert isinstance(deployed, dict) and deployed["status"] == "succeeded", deployed
    config = service.get_organization("acme-corp")
    config["mlModelConfig"]["thresholds"] = IMPOSSIBLE
    service.update_organization("acme-corp", _writable(config), actor="test")
    rejected = service.train_model("acme-corp", request, timeout_s=RUN_TIMEOUT_S)
    assert isinstance(rejected, dict) and rejected["status"] == "rejected", rejected
    return deployed, rejected


def _writable(doc: dict[str, Any]) -> dict[str, Any]:
    """The organization document as `update_organization` takes it (no deployment state)."""
    state = ("deployedVersion", "previousVersion", "deploySequence", "organizationId", "id")
    return {key: value for key, value in doc.items() if key not in state}


@pytest.fixture
def trained(tmp_path: Path, redis_url: str, postgres_factory: Any) -> Iterator[Trained]:
    service_db, scada_db = postgres_factory(), postgres_factory()
    frames = scada.iter_sensor_frames(assets=6, days=45, interval_min=10, seed=7, start=START)
    scada.write_scada_postgres(scada_db, frames, scada.ACME_LAYOUT)
    base = tmp_path / "ml"
    env = service_env(redis_url=redis_url, database_url=service_db, ml_base_path=base)
    service = TrainingService(build_runtime(Settings.from_env(env)))
    try:
        doc = scada.demo_org_config("acme-corp", scada_db, scada.ACME_LAYOUT)
        service.register_organization("acme-corp", doc, actor="test")
        with celery_worker(env, tmp_path):
            deployed, rejected = _train(service)
    finally:
        service.close()
    with _dashboard(env, tmp_path) as url:
        yield Trained(url, base, deployed, rejected)


def _dashboard(env: dict[str, str], log_dir: Path) -> Any:
    """`trainctl ui --port 0` as a process of its own; yields its address once it answers."""
    import contextlib

    @contextlib.contextmanager
    def running() -> Iterator[str]:
        log = log_dir / "ui.log"
        argv = [sys.executable, "-m", "training_tasks.cli", "ui", "--port", "0"]
        proc = spawn_logged(argv, env, log)
        try:
            found = wait_for(
                lambda: re.search(r"on (http://127\.0\.0\.1:\d+/)", log.read_text()),
                UI_START_TIMEOUT_S,
                "trainctl ui to print its address",
            )
            url = found.group(1)
            with urllib.request.urlopen(f"{url}healthz", timeout=10) as reply:
                assert reply.status == 200
            yield url
        finally:
            stop_group(proc)

    return running()


def test_a_person_sees_the_deployed_version_the_rejection_the_chart_and_the_report(
    trained: Trained, browser: Any, tmp_path: Path
) -> None:
    version = trained.deployed["version"]
    browser.get(trained.url)
    row = browser.find_element("css selector", 'tr[data-org="acme-corp"]')
    assert version in row.text
    assert "rejected" in row.text  # the latest run's health, while the old model serves
    screenshot(browser, tmp_path, "overview")

    row.find_element("link text", "acme-corp").click()
    assert browser.find_element("id", "deployed-version").text == version
    rejected_run = browser.find_element(
        "css selector", f'tr[data-run="{trained.rejected["runId"]}"]'
    )
    assert "rejected" in rejected_run.text and "validate" in rejected_run.text
    reasons = browser.find_element(
        "css selector", f'tr[data-version="{trained.rejected["version"]}"] ul.reasons'
    ).text
    assert "precision" in reasons and "recall" in reasons, reasons
    width, height = rendered_size(browser, "#trend svg")
    assert width > 300 and height > 150, (width, height)
    assert browser.find_elements("css selector", "#trend .deployed-marker")
    assert len(browser.find_elements("css selector", "#trend circle")) >= 4
    screenshot(browser, tmp_path, "organization")
    _open_report(trained, browser, tmp_path)


def _open_report(trained: Trained, browser: Any, tmp_path: Path) -> None:
    """Follow the deployed version's report link; without the file, the page says so."""
    version = trained.deployed["version"]
    report = trained.base / "artifacts" / "acme-corp" / version / "report.html"
    cell = browser.find_element("css selector", f'tr[data-version="{version}"] td:last-child')
    if not report.exists():
        assert cell.text == "no report"
        browser.get(f"{trained.url}orgs/acme-corp/versions/{version}/report.html")
        assert "has no report" in browser.page_source
        return
    cell.find_element("css selector", "a.report").click()
    assert browser.current_url.endswith(f"/orgs/acme-corp/versions/{version}/report.html")
    assert version in browser.page_source
    plots = browser.find_elements("css selector", "svg, img, canvas")
    assert plots, "the report shows no plot"
    for plot in plots:
        width, height = plot.size["width"], plot.size["height"]
        assert width > 0 and height > 0, f"a plot of the report is drawn at {width}x{height}"
    screenshot(browser, tmp_path, "report")
