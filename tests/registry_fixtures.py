"""Helpers shared by registry and deploy tests: a migrated database and a registered org."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from training_tasks.db.engine import make_engine, migrate
from training_tasks.org_config import parse_org_config
from training_tasks.registry import orgs

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
