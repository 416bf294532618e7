"""The service's Prometheus metrics: what the database holds, read at scrape time (SQLite)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, event, insert, update

from tests.support.registry_fixtures import NOW, migrated_engine, register
from training_tasks.db.engine import make_engine
from training_tasks.db.tables import (
    audit_events,
    model_versions,
    organizations,
    schedule_slots,
    training_runs,
)
from training_tasks.registry.metrics import metrics_app, registry_for

ORGS = ("acme-corp", "globex", "initech")


def add_run(
    engine: Engine,
    n: int,
    org_id: str,
    status: str,
    *,
    took_s: float | None = None,
    started: bool = True,
) -> None:
    queued = NOW + timedelta(hours=n)
    started_at = queued + timedelta(seconds=5) if started else None
    finished_at = started_at + timedelta(seconds=took_s) if started_at and took_s else None
    if not started and status not in ("queued", "running"):
        finished_at = queued + timedelta(seconds=1)
    with engine.begin() as conn:
        conn.execute(
            insert(training_runs).values(
                id=f"{n:032x}",
                organization_id=org_id,
                version=f"v2026-06-01T12-00-00-000Z_{n:08x}",
                status=status,
                config={},
                trigger="test",
                auto_deploy=True,
                queued_at=queued,
                started_at=started_at,
                finished_at=finished_at,
            )
        )


def add_audit(engine: Engine, org_id: str, name: str, times: int = 1) -> None:
    with engine.begin() as conn:
        for _ in range(times):
            conn.execute(
                insert(audit_events).values(organization_id=org_id, event=name, actor="t", at=NOW)
            )


def add_slot(engine: Engine, org_id: str, hour: int, outcome: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(schedule_slots).values(
                organization_id=org_id,
                scheduled_for=NOW + timedelta(hours=hour),
                outcome=outcome,
                reason=None if outcome == "submitted" else "a run was active",
                pattern="0 * * * *",
                timezone="UTC",
                recorded_at=NOW,
                beat="beat-1",
            )
        )


@pytest.fixture
def engine(sqlite_url: str) -> Engine:
    engine = migrated_engine(sqlite_url)
    for org_id in ORGS:
        register(engine, org_id)
    return engine


@pytest.fixture
def history(engine: Engine) -> Engine:
    """acme: 2 succeeded (60 s, 90 s), 1 failed (30 s), 1 running; globex: 1 rejected (45 s),
    1 queued, 1 failed before any stage started; initech: nothing."""
    add_run(engine, 1, "acme-corp", "succeeded", took_s=60)
    add_run(engine, 2, "acme-corp", "succeeded", took_s=90)
    add_run(engine, 3, "acme-corp", "failed", took_s=30)
    add_run(engine, 4, "acme-corp", "running")
    add_run(engine, 5, "globex", "rejected", took_s=45)
    add_run(engine, 6, "globex", "queued", started=False)
    add_run(engine, 7, "globex", "failed", started=False)
    add_audit(engine, "acme-corp", "model.deployed", 2)
    add_audit(engine, "acme-corp", "model.rolled_back")
    add_audit(engine, "globex", "model.deployed")
    add_audit(engine, "acme-corp", "model.removed")
    add_audit(engine, "acme-corp", "schedule.created")
    add_slot(engine, "acme-corp", 1, "submitted")
    add_slot(engine, "acme-corp", 2, "skipped")
    add_slot(engine, "globex", 1, "submitted")
    return engine


def deploy_version(engine: Engine, n: int, org_id: str, scores: dict[str, Any]) -> str:
    """Record run `n`'s model as validated with `scores` and make it the org's deployed one."""
    version = f"v2026-06-01T12-00-00-000Z_{n:08x}"
    with engine.begin() as conn:
        conn.execute(
            insert(model_versions).values(
                version=version,
                organization_id=org_id,
                run_id=f"{n:032x}",
                status="deployed",
                model_path=f"/ml/models/{org_id}/model_{version}.onnx",
                sha256="0" * 64,
                size_bytes=1,
                validation={"passed": True, "metrics": scores},
                created_at=NOW,
            )
        )
        conn.execute(
            update(organizations)
            .where(organizations.c.id == org_id)
            .values(current_version=version)
        )
    return version


def value(engine: Engine, name: str, **labels: str) -> float | None:
    return registry_for(engine).get_sample_value(name, labels)


def test_runs_are_counted_by_organization_and_status(history: Engine) -> None:
    assert value(history, "training_runs", organization="acme-corp", status="succeeded") == 2
    assert value(history, "training_runs", organization="acme-corp", status="failed") == 1
    assert value(history, "training_runs", organization="globex", status="failed") == 1
    assert value(history, "training_runs", organization="globex", status="queued") == 1
    assert value(history, "training_runs", organization="initech", status="succeeded") is None


def test_active_runs_are_the_queued_and_running_ones(history: Engine) -> None:
    assert value(history, "training_runs_active") == 2


def test_deployments_and_rollbacks_are_counted_from_the_audit_trail(history: Engine) -> None:
    assert (
        value(history, "model_deployments_total", organization="acme-corp", event="deployed") == 2
    )
    assert (
        value(history, "model_deployments_total", organization="acme-corp", event="rolled_back")
        == 1
    )
    assert value(history, "model_deployments_total", organization="globex", event="deployed") == 1
    samples = registry_for(history).collect()
    [deployments] = [f for f in samples if f.name == "model_deployments"]
    assert {s.labels["event"] for s in deployments.samples} == {"deployed", "rolled_back"}


def test_the_last_successful_run_is_when_the_newest_succeeded_run_finished(
    history: Engine,
) -> None:
    # Run 2 (queued at hour 2, started 5 s later, took 90 s) is acme's newest success.
    finished = NOW + timedelta(hours=2, seconds=95)
    got = value(history, "training_last_success_timestamp_seconds", organization="acme-corp")
    assert got == pytest.approx(finished.timestamp())
    # globex has only a rejected and failed runs: no success to report.
    assert value(history, "training_last_success_timestamp_seconds", organization="globex") is None


def test_the_deployed_version_and_its_holdout_scores_are_reported_per_organization(
    history: Engine,
) -> None:
    scores = {"rocAuc": 0.91, "precision": 0.82, "recall": 0.77, "accuracy": 0.9}
    version = deploy_version(history, 2, "acme-corp", scores)
    deploy_version(history, 5, "globex", {"rocAuc": None, "precision": 0.7, "recall": 0.71})
    labels = {"organization": "acme-corp", "version": version}
    assert value(history, "model_deployed_info", **labels) == 1
    assert value(history, "model_deployed_holdout_auc", organization="acme-corp") == 0.91
    assert value(history, "model_deployed_holdout_precision", organization="acme-corp") == 0.82
    assert value(history, "model_deployed_holdout_recall", organization="acme-corp") == 0.77
    # An AUC the holdout could not define (one class only) is left out, not reported as 0.
    assert value(history, "model_deployed_holdout_auc", organization="globex") is None
    assert value(history, "model_deployed_holdout_recall", organization="globex") == 0.71
    # initech deployed nothing.
    [deployed] = [f for f in registry_for(history).collect() if f.name == "model_deployed"]
    assert {s.labels["organization"] for s in deployed.samples} == {"acme-corp", "globex"}


def test_schedule_slots_are_counted_by_outcome(history: Engine) -> None:
    assert value(history, "schedule_slots_total", outcome="submitted") == 2
    assert value(history, "schedule_slots_total", outcome="skipped") == 1


def test_finished_runs_report_their_durations_by_status(history: Engine) -> None:
    assert value(history, "training_run_seconds_count", status="succeeded") == 2
    assert value(history, "training_run_seconds_sum", status="succeeded") == pytest.approx(150)
    assert value(history, "training_run_seconds_sum", status="rejected") == pytest.approx(45)
    # The failed run that never started has no duration; the running one is not finished.
    assert value(history, "training_run_seconds_count", status="failed") == 1
    assert value(history, "training_run_seconds_count", status="running") is None


def test_an_empty_database_reports_zeros_not_errors(engine: Engine) -> None:
    assert value(engine, "training_runs_active") == 0
    assert value(engine, "schedule_slots_total", outcome="submitted") == 0
    assert value(engine, "schedule_slots_total", outcome="skipped") == 0


def test_a_scrape_costs_six_queries_however_many_organizations(history: Engine) -> None:
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    event.listen(history, "before_cursor_execute", count)
    try:
        list(registry_for(history).collect())
        first = len(statements)
        for n, org_id in enumerate(f"org-{i}" for i in range(20)):
            register(history, org_id)
            add_run(history, 100 + n, org_id, "succeeded", took_s=10)
        statements.clear()
        list(registry_for(history).collect())
    finally:
        event.remove(history, "before_cursor_execute", count)
    assert first == len(statements) == 6


def call(app: Any, path: str) -> tuple[str, dict[str, str], bytes]:
    reply: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        reply.update(status=status, headers=dict(headers))

    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, start_response))
    return reply["status"], reply["headers"], body


def test_the_http_app_serves_prometheus_text_on_metrics_only(history: Engine) -> None:
    app = metrics_app(registry_for(history))
    status, headers, body = call(app, "/metrics")
    assert status == "200 OK" and headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    expected = {
        "training_runs",
        "training_runs_active",
        "model_deployments",
        "schedule_slots",
        "training_run_seconds",
        "training_last_success_timestamp_seconds",
        "model_deployed_info",
        "model_deployed_holdout_auc",
    }
    assert expected <= set(families)
    assert families["model_deployed_info"].type == "gauge"  # an info metric, in text format
    assert families["model_deployments"].type == "counter"
    assert families["training_run_seconds"].type == "summary"
    assert call(app, "/")[0] == "404 Not Found"


def test_a_database_without_the_schema_answers_503_with_the_fix(tmp_path: Any) -> None:
    app = metrics_app(registry_for(make_engine(f"sqlite:///{tmp_path / 'empty.db'}")))
    status, _headers, body = call(app, "/metrics")
    assert status == "503 Service Unavailable"
    assert b"trainctl db upgrade" in body
