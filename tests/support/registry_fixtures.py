"""Helpers shared by registry and deploy tests: a migrated database and a registered org."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from training_tasks.config.org import parse_org_config
from training_tasks.db.engine import make_engine, migrate
from training_tasks.files import sha256_file
from training_tasks.protocol.paths import ModelStore
from training_tasks.registry import orgs, versions

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

ORG_DOC: dict[str, Any] = {
    "mlModelConfig": {"featureColumns": ["temperature", "pressure"], "targetColumn": "failure"},
    "scadaDbConfig": {"url": "sqlite:///nowhere.db"},
    "schemaConfig": {"table": "sensor_readings", "timestampColumn": "ts"},
}


def migrated_engine(url: str) -> Engine:
    engine = make_engine(url)
    migrate(engine)
    return engine


def register(engine: Engine, org_id: str, doc: dict[str, Any] | None = None) -> None:
    orgs.create_org(engine, parse_org_config(doc or ORG_DOC, org_id), actor="test", now=NOW)


def record_model(
    engine: Engine,
    store: ModelStore,
    org_id: str,
    version: str,
    run_id: str,
    *,
    now: datetime,
    data: bytes | None = None,
    report: dict[str, Any] | None = None,
) -> Path:
    """Write a version's model file and record it as trained; with `report`, also its verdict."""
    path = store.version_model(org_id, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"model {version}".encode() if data is None else data)
    versions.record_trained(
        engine,
        version=version,
        org_id=org_id,
        run_id=run_id,
        model_path=str(path),
        sha256=sha256_file(path),
        size_bytes=path.stat().st_size,
        metrics={},
        now=now,
    )
    if report is not None:
        versions.record_validation(
            engine, version, report=report, passed=report["passed"], actor="t", now=now
        )
    return path


def queued_run(engine: Engine, org_id: str, now: datetime) -> dict[str, Any]:
    """A new queued run of `org_id` with an empty config, as the run row stands."""
    from training_tasks.protocol.ids import new_run_id, new_version_id
    from training_tasks.registry import runs

    return runs.create_run(
        engine,
        run_id=new_run_id(),
        org_id=org_id,
        version=new_version_id(now),
        config={},
        trigger="t",
        auto_deploy=True,
        actor="t",
        now=now,
    )


def finished_run(engine: Engine, org_id: str, now: datetime) -> tuple[str, str]:
    """A run of `org_id` that already ended, so the org may start more; returns (run id, version)."""
    from training_tasks.registry import runs

    run = queued_run(engine, org_id, now)
    run_id, version = run["id"], run["version"]
    runs.finish_failed(
        engine, run_id, status="failed", stage=None, error="-", trace=None, actor="t", now=now
    )
    return run_id, version
