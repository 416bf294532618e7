"""The dashboard's pages as rendered HTML, from a registry in SQLite: what a person would read.

No server here (the integration tests open the pages in Chromium): the page data is read with the
functions the handlers call and rendered with the same templates.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, update

from tests.support.registry_fixtures import NOW, migrated_engine, register
from training_tasks.db.tables import model_versions, organizations, training_runs
from training_tasks.errors import ConfigError, NotFoundError
from training_tasks.files import UnsafeFile
from training_tasks.protocol.paths import ModelStore
from training_tasks.registry import schedules
from training_tasks.ui.app import parse_basic_auth
from training_tasks.ui.pages import org_page, overview_page
from training_tasks.ui.reports import has_report, read_report
from training_tasks.ui.server import is_loopback
from training_tasks.ui.templates import loader
from training_tasks.ui.views import TREND_METRICS, duration

GOOD = "v2026-06-01T10-00-00-000Z_aaaaaaaa"
REJECTED = "v2026-06-01T11-00-00-000Z_bbbbbbbb"
REASON = "recall is 0.41, below the threshold 0.70"


def add_run(
    engine: Engine, org: str, version: str, status: str, at: datetime, **values: Any
) -> str:
    run_id = version[-8:] * 4
    row = dict(
        id=run_id,
        organization_id=org,
        version=version,
        status=status,
        stage=values.pop("stage", "deploy"),
        stages_done=values.pop("stages_done", 4),
        config={},
        trigger="api",
        auto_deploy=True,
        queued_at=at,
        started_at=at + timedelta(seconds=2),
        finished_at=None if status in ("queued", "running") else at + timedelta(seconds=95),
        attempt=1,
    )
    with engine.begin() as conn:
        conn.execute(insert(training_runs).values(**{**row, **values}))
    return run_id


def add_version(
    engine: Engine, org: str, version: str, run_id: str, status: str, at: datetime, **metrics: float
) -> None:
    failures = [] if status != "rejected" else [REASON]
    with engine.begin() as conn:
        conn.execute(
            insert(model_versions).values(
                version=version,
                organization_id=org,
                run_id=run_id,
                status=status,
                model_path=f"/m/{version}.onnx",
                sha256="0" * 64,
                size_bytes=1000,
                validation={"passed": not failures, "failures": failures, "metrics": metrics},
                created_at=at,
            )
        )


@pytest.fixture
def engine(sqlite_url: str) -> Engine:
    engine = migrated_engine(sqlite_url)
    register(engine, "acme-corp")
    register(engine, "globex")
    t0 = NOW - timedelta(hours=3)
    good = add_run(engine, "acme-corp", GOOD, "succeeded", t0)
    add_version(engine, "acme-corp", GOOD, good, "deployed", t0, accuracy=0.91, recall=0.8)
    bad = add_run(
        engine,
        "acme-corp",
        REJECTED,
        "rejected",
        t0 + timedelta(hours=1),
        stage="validate",
        stages_done=2,
        error=f"model version {REJECTED} was rejected by validation: {REASON}",
    )
    add_version(
        engine, "acme-corp", REJECTED, bad, "rejected", t0 + timedelta(hours=1), recall=0.41
    )
    with engine.begin() as conn:
        conn.execute(
            update(organizations)
            .where(organizations.c.id == "acme-corp")
            .values(current_version=GOOD, deploy_sequence=1)
        )
    return engine


def render(template: str, **data: Any) -> str:
    from tornado.escape import url_escape

    page = (
        loader().load(template).generate(metric_names=TREND_METRICS, url_escape=url_escape, **data)
    )
    return page.decode()


def test_the_overview_lists_each_org_with_its_deployed_version_and_health(engine: Engine) -> None:
    html = render("overview.html", **overview_page(engine, NOW))
    assert GOOD in html
    assert 'href="/orgs/acme-corp"' in html and 'href="/orgs/globex"' in html
    # acme's latest run was rejected while GOOD keeps serving; globex has no model at all.
    assert "rejected" in html and "no model" in html
    assert f"{GOOD} keeps serving" in html


def test_the_org_page_shows_runs_versions_reasons_and_the_chart(
    engine: Engine, tmp_path: Path
) -> None:
    data = org_page(engine, ModelStore(tmp_path), "acme-corp", NOW)
    html = render("org.html", **data)
    assert f'<code id="deployed-version">{GOOD}</code>' in html
    assert REASON in html  # the rejected version's reason, escaped but readable
    assert "validate (2/4 done)" in html and "deploy (4/4 done)" in html
    assert "1 min 33 s" in html  # 95 s from queued, 93 s from started
    assert html.count("no report") == 2
    assert "<svg" in html and 'class="deployed-marker"' in html and "rejected-marker" in html


def test_a_run_in_progress_shows_how_long_it_has_run_so_far(engine: Engine, tmp_path: Path) -> None:
    add_run(engine, "globex", GOOD.replace("aaaa", "cccc"), "running", NOW - timedelta(minutes=3))
    [run] = org_page(engine, ModelStore(tmp_path), "globex", NOW)["runs"]
    assert run.duration == "2 min 58 s so far"


def test_text_from_the_database_is_escaped_in_the_page(engine: Engine, tmp_path: Path) -> None:
    add_run(
        engine, "globex", GOOD.replace("aaaa", "dddd"), "failed", NOW, error="<script>x</script>"
    )
    html = render("org.html", **org_page(engine, ModelStore(tmp_path), "globex", NOW))
    assert "<script>x" not in html and "&lt;script&gt;x&lt;/script&gt;" in html


def test_the_schedule_shows_its_next_runs_in_its_own_time_zone(
    engine: Engine, tmp_path: Path
) -> None:
    from training_tasks.config.org import parse_schedule

    spec = parse_schedule({"pattern": "0 2 * * *", "timezone": "Europe/Berlin"})
    schedules.set_schedule(engine, "globex", spec, actor="t", now=NOW)
    view = org_page(engine, ModelStore(tmp_path), "globex", NOW)["schedule"]
    assert len(view.next_runs) == 5
    assert view.next_runs[0].startswith("2026-06-02 02:00 CEST (2026-06-02 00:00:00 UTC)")


def test_an_unknown_or_malformed_org_is_not_found(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        org_page(engine, ModelStore(tmp_path), "initech", NOW)
    with pytest.raises(ConfigError):
        org_page(engine, ModelStore(tmp_path), "../etc", NOW)


def test_a_report_is_served_only_as_a_regular_file_in_its_version_folder(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    folder = store.artifacts("acme-corp", GOOD)
    folder.mkdir(parents=True)
    assert not has_report(store, "acme-corp", GOOD)
    assert read_report(store, "acme-corp", GOOD) is None
    (folder / "report.html").write_text("<h1>report</h1>")
    assert has_report(store, "acme-corp", GOOD)
    assert read_report(store, "acme-corp", GOOD) == b"<h1>report</h1>"
    with pytest.raises(ConfigError):
        read_report(store, "acme-corp", "../../../etc")
    secret = tmp_path / "secret.html"
    secret.write_text("secret")
    other = store.artifacts("acme-corp", REJECTED)
    other.mkdir()
    os.symlink(secret, other / "report.html")
    assert not has_report(store, "acme-corp", REJECTED)
    with pytest.raises(UnsafeFile):
        read_report(store, "acme-corp", REJECTED)


def test_a_version_folder_that_is_a_link_has_no_report(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "report.html").write_text("secret")
    store.artifacts("acme-corp", GOOD).parent.mkdir(parents=True)
    os.symlink(elsewhere, store.artifacts("acme-corp", GOOD))
    assert not has_report(store, "acme-corp", GOOD)
    assert read_report(store, "acme-corp", GOOD) is None


def test_basic_auth_is_given_as_flower_takes_it() -> None:
    assert parse_basic_auth("ops:pw1,dev:pw:2") == {"ops": "pw1", "dev": "pw:2"}
    assert parse_basic_auth("") == {}
    with pytest.raises(ConfigError, match="USER:PASSWORD"):
        parse_basic_auth("ops")


def test_loopback_addresses_are_recognized() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")


def test_durations_read_as_people_say_them() -> None:
    assert duration(12.44) == "12.4 s"
    assert duration(185) == "3 min 05 s"
    assert duration(3725) == "1 h 02 min"
