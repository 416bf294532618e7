"""Dashboard page load time with 100 organizations and 10,000 runs in PostgreSQL (server time p50).

A throwaway database gets 100 registered organizations, 100 finished runs each (a mix of
succeeded, rejected and failed) and a version per succeeded or rejected run with validation
metrics. The dashboard serves it on a loopback port; each page is fetched repeatedly and the
server's own time per request (its Server-Timing header: read, render) is summed up, with the
time the client waited next to it.
"""

from __future__ import annotations

import statistics
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from sqlalchemy import Engine, insert, update

from tests.bench.common import host_info, throwaway_database
from training_tasks.config.org import parse_org_config
from training_tasks.db.engine import make_engine, migrate
from training_tasks.db.tables import model_versions, organizations, training_runs
from training_tasks.protocol.paths import ModelStore
from training_tasks.registry import orgs
from training_tasks.ui.app import Dashboard
from training_tasks.ui.server import DashboardServer

ORGS, RUNS_PER_ORG = 100, 100
START = datetime(2026, 1, 1, tzinfo=UTC)
ORG_DOC: dict[str, Any] = {
    "mlModelConfig": {"featureColumns": ["temperature", "pressure"], "targetColumn": "failure"},
    "scadaDbConfig": {"url": "sqlite:///nowhere.db"},
    "schemaConfig": {"table": "sensor_readings", "timestampColumn": "ts"},
}


def run(quick: bool = False) -> dict[str, Any]:
    """Seed, serve, fetch; p50 and p95 of server and client time per page, in milliseconds."""
    requests = 20 if quick else 100
    with throwaway_database("bench_ui") as url, TemporaryDirectory() as tmp:
        engine = make_engine(url)
        migrate(engine)
        seeded_s = _seed(engine)
        dash = Dashboard(engine, ModelStore(Path(tmp)), lambda: datetime.now(UTC))
        with DashboardServer(dash, "127.0.0.1", 0) as server:
            pages = {
                "overview": server.url,
                "organization": f"{server.url}orgs/org-050",
            }
            result = {name: _measure(page, requests) for name, page in pages.items()}
        engine.dispose()
    return {
        "orgs": ORGS,
        "runs": ORGS * RUNS_PER_ORG,
        "requests_per_page": requests,
        "seed_s": round(seeded_s, 1),
        **result,
        "host": host_info(),
    }


def _measure(url: str, requests: int) -> dict[str, float]:
    """Fetch `url` once to warm up, then `requests` times; server and client milliseconds."""
    _fetch(url)
    server_ms, client_ms = [], []
    for _ in range(requests):
        started = time.perf_counter()
        timing = _fetch(url)
        client_ms.append((time.perf_counter() - started) * 1000)
        server_ms.append(float(timing.split("dur=")[1]))
    return {
        "server_ms_p50": round(statistics.median(server_ms), 2),
        "server_ms_p95": round(statistics.quantiles(server_ms, n=20)[-1], 2),
        "client_ms_p50": round(statistics.median(client_ms), 2),
    }


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as reply:
        reply.read()
        return str(reply.headers["Server-Timing"])


def _seed(engine: Engine) -> float:
    """Register the organizations and insert their runs and versions in bulk; seconds taken."""
    started = time.perf_counter()
    for n in range(ORGS):
        org = parse_org_config(ORG_DOC, f"org-{n:03d}")
        orgs.create_org(engine, org, actor="bench", now=START)
    run_rows, version_rows = [], []
    for n in range(ORGS):
        for i in range(RUNS_PER_ORG):
            run, version = _run_and_version(f"org-{n:03d}", n, i)
            run_rows.append(run)
            if version is not None:
                version_rows.append(version)
    with engine.begin() as conn:
        conn.execute(insert(training_runs), run_rows)
        conn.execute(insert(model_versions), version_rows)
        for n in range(ORGS):
            newest = max(
                v["version"] for v in version_rows if v["organization_id"] == f"org-{n:03d}"
            )
            conn.execute(
                update(organizations)
                .where(organizations.c.id == f"org-{n:03d}")
                .values(current_version=newest, deploy_sequence=1)
            )
    return time.perf_counter() - started


def _run_and_version(org: str, n: int, i: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Run `i` of an organization (every 7th failed, every 5th rejected) and its version."""
    at = START + timedelta(hours=6 * i, minutes=n)
    version = f"v{at:%Y-%m-%dT%H-%M-%S}-000Z_{n:04x}{i:04x}"
    run_id = f"{n:04x}{i:04x}".ljust(32, "0")
    status = "failed" if i % 7 == 3 else "rejected" if i % 5 == 4 else "succeeded"
    run = dict(
        id=run_id,
        organization_id=org,
        version=version,
        status=status,
        stage="extract" if status == "failed" else "validate" if status == "rejected" else "deploy",
        stages_done={"failed": 0, "rejected": 2, "succeeded": 4}[status],
        config={},
        trigger="schedule" if i % 2 else "api",
        auto_deploy=True,
        queued_at=at,
        started_at=at + timedelta(seconds=1),
        finished_at=at + timedelta(seconds=60 + i),
        error=None if status == "succeeded" else f"{status}: a reason {i} that says what to do",
        attempt=1,
    )
    if status == "failed":
        return run, None
    recall = 0.6 if status == "rejected" else 0.8 + (i % 10) / 100
    failures = ["recall is below the threshold 0.70"] if status == "rejected" else []
    metrics = {"accuracy": 0.9, "precision": 0.85, "recall": recall, "f1": 0.8, "rocAuc": 0.95}
    return run, dict(
        version=version,
        organization_id=org,
        run_id=run_id,
        status="rejected" if status == "rejected" else "superseded",
        model_path=f"/m/{version}.onnx",
        sha256="0" * 64,
        size_bytes=1000,
        validation={"passed": not failures, "failures": failures, "metrics": metrics},
        created_at=at + timedelta(seconds=50),
    )
