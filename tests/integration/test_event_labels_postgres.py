"""Targets computed from failure events (`schemaConfig.labels`) against a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from tests.support.processes import service_env
from tests.unit.test_event_labels import (
    EVENT_LABEL_COLUMN,
    extracted,
    labelled_config,
    labelled_schema,
    org_doc,
    write_source,
)
from training_tasks.config.settings import Settings
from training_tasks.errors import ConfigError, ExtractError
from training_tasks.runtime import build_runtime
from training_tasks.service import TrainingService
from training_tasks.service.api import TrainingHandle
from training_tasks.stages.extract.source import plan_source
from training_tasks.stages.extract.stage import extract

pytestmark = pytest.mark.integration


def conninfo(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(False)


@pytest.mark.parametrize("zoned", [True, False])
def test_postgres_labels_match_the_rule_and_sqlite(
    postgres_url: str, tmp_path: Path, zoned: bool
) -> None:
    expected = write_source(postgres_url, zoned=zoned)
    with psycopg.connect(conninfo(postgres_url), autocommit=True) as conn:
        conn.execute("SET timezone = 'America/New_York'")  # must not shift any label
    lite = f"sqlite:///{tmp_path / 'scada.db'}"
    write_source(lite)
    schema, config = labelled_schema(), labelled_config()
    from_pg = extract(postgres_url, schema, config, tmp_path / "pg", batch_rows=64)
    got = extracted(from_pg)
    labels = got[["timestamp", "asset_id", EVENT_LABEL_COLUMN]]
    assert labels.equals(expected.astype({EVENT_LABEL_COLUMN: "int8"}))
    from_lite = extract(lite, schema, config, tmp_path / "lite", batch_rows=64)
    assert from_pg.data_hash == from_lite.data_hash


def test_zoned_readings_and_zoneless_events_are_refused(postgres_url: str, tmp_path: Path) -> None:
    write_source(postgres_url, zoned=True)
    with psycopg.connect(conninfo(postgres_url), autocommit=True) as conn:
        conn.execute("ALTER TABLE failure_events ALTER failed_at TYPE timestamp")
    with pytest.raises(ExtractError, match="both must be with or both without a time zone"):
        extract(postgres_url, labelled_schema(), labelled_config(), tmp_path / "out")


SETTINGS = ("range_start", "range_end", "label_horizon", "label_exclude")


def test_the_label_probes_are_index_range_scans(postgres_url: str) -> None:
    write_source(postgres_url, zoned=True)
    plan = plan_source(postgres_url, labelled_schema(), labelled_config(), connect_timeout_s=5)
    with psycopg.connect(conninfo(postgres_url)) as conn:
        conn.execute("SET enable_seqscan = off")  # a tiny table: ask whether the index can serve
        for name, value in zip(SETTINGS, plan.parameters, strict=True):
            conn.execute("SELECT set_config(%s, %s, false)", (f"training.{name}", value))
        text = "\n".join(r[0] for r in conn.execute("EXPLAIN " + plan.sql).fetchall())
    assert text.count("failure_events_asset_time") == 2  # one probe ahead, one behind
    assert "failed_at >" in text and "failed_at <=" in text  # bounded by time, not only asset


@pytest.mark.redis
def test_a_training_request_naming_a_target_is_refused_for_a_labelled_org(
    postgres_url: str, redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    write_source(postgres_url, zoned=True)
    env = service_env(redis_url=redis_url, database_url=sqlite_url, ml_base_path=tmp_path / "ml")
    service = TrainingService(build_runtime(Settings.from_env(env)))
    try:
        service.register_organization("acme", {**org_doc(), "scadaDbConfig": {"url": postgres_url}})
        request = {
            "dataRange": {"startDate": "2024-03-01T00:00:00Z", "endDate": "2024-03-11T00:00:00Z"}
        }
        with pytest.raises(ConfigError) as err:
            service.train_model("acme", {**request, "targetColumn": "failure"}, wait=False)
        assert err.value.field == "targetColumn" and "schemaConfig.labels" in str(err.value)
        assert service.get_training_history("acme") == []
        queued = service.train_model("acme", request, wait=False)
        run = service.get_training_history("acme")[0]
        assert isinstance(queued, TrainingHandle) and run["runId"] == queued.run_id
        assert run["config"]["targetColumn"] == EVENT_LABEL_COLUMN
    finally:
        service.close()
