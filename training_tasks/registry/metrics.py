"""The service's own Prometheus metrics, read from the service database at scrape time.

Flower's `/metrics` covers workers and tasks (events, runtimes, who is online). What only the
database knows is here: runs by organization and status, the last successful run, deployments
and rollbacks, the deployed version and its holdout scores, schedule slots, and how long finished
runs took. Every query covers all organizations at once, so a scrape costs six short queries on
one connection, whatever the number of organizations.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import ColumnElement, Connection, Engine, extract, func, select
from sqlalchemy.exc import SQLAlchemyError

from training_tasks.db.tables import (
    audit_events,
    model_versions,
    organizations,
    schedule_slots,
    training_runs,
)
from training_tasks.registry.rows import ACTIVE_STATUSES, SLOT_OUTCOMES, FinishedStatus

log = logging.getLogger(__name__)

DEPLOY_EVENTS = {"model.deployed": "deployed", "model.rolled_back": "rolled_back"}
# A run that did what it was asked: deployed, or validated where deploying was left to a person.
SUCCESSFUL: tuple[FinishedStatus, ...] = ("succeeded", "validated")
# The deployed version's scores on its holdout, as the validate stage measured them.
HOLDOUT_GAUGES = {"rocAuc": "auc", "precision": "precision", "recall": "recall"}
METRICS_PATH = "/metrics"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class ServiceCollector(Collector):
    """Collects the service's metrics from `engine` each time the registry is scraped."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        with self.engine.connect() as conn:
            yield from _runs(conn)
            yield _last_success(conn)
            yield _deployments(conn)
            yield from _deployed(conn)
            yield _schedule_slots(conn)
            yield _run_seconds(conn)


def _runs(conn: Connection) -> Iterator[Metric]:
    c = training_runs.c
    rows = conn.execute(
        select(c.organization_id, c.status, func.count()).group_by(c.organization_id, c.status)
    ).all()
    by_status = GaugeMetricFamily(
        "training_runs",
        "Training runs recorded, by organization and status.",
        labels=["organization", "status"],
    )
    active = 0
    for org_id, status, count in rows:
        by_status.add_metric([org_id, status], count)
        active += count if status in ACTIVE_STATUSES else 0
    yield by_status
    yield GaugeMetricFamily(
        "training_runs_active", "Training runs queued or running now.", value=active
    )


def _last_success(conn: Connection) -> Metric:
    c = training_runs.c
    rows = conn.execute(
        select(c.organization_id, func.max(c.finished_at))
        .where(c.status.in_(SUCCESSFUL), c.finished_at.is_not(None))
        .group_by(c.organization_id)
    ).all()
    family = GaugeMetricFamily(
        "training_last_success_timestamp_seconds",
        "Unix time the organization's last successful run (succeeded or validated) finished.",
        labels=["organization"],
    )
    for org_id, finished_at in rows:
        family.add_metric([org_id], finished_at.timestamp())
    return family


def _deployed(conn: Connection) -> Iterator[Metric]:
    o, v = organizations.c, model_versions.c
    rows = conn.execute(
        select(o.id, o.current_version, v.validation)
        .join(model_versions, v.version == o.current_version)
        .order_by(o.id)
    ).all()
    info = InfoMetricFamily(
        "model_deployed",
        "The model version deployed for each organization.",
        labels=["organization"],
    )
    gauges = {
        key: GaugeMetricFamily(
            f"model_deployed_holdout_{name}",
            f"The deployed model's {name} on its holdout (0 to 1), scored by validation.",
            labels=["organization"],
        )
        for key, name in HOLDOUT_GAUGES.items()
    }
    for org_id, version, validation in rows:
        info.add_metric([org_id], {"version": version})
        scores = (validation or {}).get("metrics") or {}
        for key, family in gauges.items():
            if isinstance(scores.get(key), int | float):  # None: undefined on this holdout
                family.add_metric([org_id], float(scores[key]))
    yield info
    yield from gauges.values()


def _deployments(conn: Connection) -> Metric:
    a = audit_events.c
    rows = conn.execute(
        select(a.organization_id, a.event, func.count())
        .where(a.event.in_(DEPLOY_EVENTS))
        .group_by(a.organization_id, a.event)
    ).all()
    family = CounterMetricFamily(
        "model_deployments",
        "Model deployments (event=deployed) and rollbacks (event=rolled_back), from the audit trail.",
        labels=["organization", "event"],
    )
    for org_id, event, count in rows:
        family.add_metric([org_id or "", DEPLOY_EVENTS[event]], count)
    return family


def _schedule_slots(conn: Connection) -> Metric:
    s = schedule_slots.c
    counts: dict[str, int] = dict(
        conn.execute(select(s.outcome, func.count()).group_by(s.outcome)).all()
    )
    family = CounterMetricFamily(
        "schedule_slots",
        "Schedule slots recorded by beat: outcome=submitted started a run, skipped did not.",
        labels=["outcome"],
    )
    for outcome in sorted({*SLOT_OUTCOMES, *counts}):
        family.add_metric([outcome], counts.get(outcome, 0))
    return family


def _run_seconds(conn: Connection) -> Metric:
    c = training_runs.c
    seconds = _seconds_between(conn, c.started_at, c.finished_at)
    rows = conn.execute(
        select(c.status, func.count(), func.sum(seconds))
        .where(c.started_at.is_not(None), c.finished_at.is_not(None))
        .group_by(c.status)
    ).all()
    family = SummaryMetricFamily(
        "training_run_seconds",
        "Time from a run's first stage starting to the run finishing, by final status.",
        labels=["status"],
    )
    for status, count, total_s in rows:
        family.add_metric([status], count_value=count, sum_value=float(total_s or 0.0))
    return family


def _seconds_between(conn: Connection, start: Any, end: Any) -> ColumnElement[Any]:
    """`end - start` in seconds, in the SQL of the connection's database."""
    if conn.dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return extract("epoch", end - start)


def registry_for(engine: Engine) -> CollectorRegistry:
    """A registry holding only the service's collector (no process or Python metrics)."""
    registry = CollectorRegistry()
    registry.register(ServiceCollector(engine))
    return registry


def metrics_app(registry: CollectorRegistry) -> WsgiApp:
    """A WSGI app: the registry's metrics on /metrics, 404 elsewhere, 503 if the database fails."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != METRICS_PATH:
            return _reply(start_response, "404 Not Found", b"the metrics are on /metrics\n")
        try:
            body = generate_latest(registry)
        except SQLAlchemyError as exc:
            log.warning("metrics scrape: cannot read the service database: %s", exc)
            text = (
                f"cannot read the service database ({type(exc).__name__}); "
                "check DATABASE_URL and that `trainctl db upgrade` ran\n"
            )
            return _reply(start_response, "503 Service Unavailable", text.encode())
        return _reply(start_response, "200 OK", body, CONTENT_TYPE_LATEST)

    return app


def _reply(
    start_response: StartResponse,
    status: str,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes come every few seconds; they are not worth a line each."""


def make_metrics_server(host: str, port: int, engine: Engine) -> WSGIServer:
    """An HTTP server for the service's metrics, bound but not yet serving (port 0: any free)."""
    return make_server(
        host,
        port,
        metrics_app(registry_for(engine)),
        server_class=_ThreadingServer,
        handler_class=_QuietHandler,
    )
