"""One contract for the registry, run against SQLite here and PostgreSQL in the integration tier."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from tests.support.registry_fixtures import NOW, ORG_DOC, migrated_engine, register
from training_tasks.errors import ConflictError, LeaseHeld, NotFoundError, RunFinished
from training_tasks.protocol.ids import new_run_id, new_version_id
from training_tasks.registry import audit, orgs, runs


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = migrated_engine(sqlite_url)
    yield engine
    engine.dispose()


def _queue_run(engine: Engine, org_id: str = "acme") -> dict:
    return runs.create_run(
        engine,
        run_id=new_run_id(),
        org_id=org_id,
        version=new_version_id(NOW),
        config={"organizationId": org_id},
        trigger="test",
        auto_deploy=True,
        actor="test",
        now=NOW,
    )


class RegistryContract:
    def test_an_organization_is_registered_once(self, engine: Engine) -> None:
        register(engine, "acme")
        assert orgs.list_org_ids(engine) == ["acme"]
        assert orgs.get_org(engine, "acme").schema_config.table == "sensor_readings"
        with pytest.raises(ConflictError, match="already exists"):
            register(engine, "acme")

    def test_the_scada_url_is_kept_out_of_the_public_config_column(self, engine: Engine) -> None:
        register(
            engine, "acme", {**ORG_DOC, "scadaDbConfig": {"url": "postgresql://u:secret@h/db"}}
        )
        row = orgs.get_org_row(engine, "acme")
        assert "secret" not in str(row["config"])
        assert orgs.get_org(engine, "acme").resolve_scada_url() == "postgresql://u:secret@h/db"

    def test_an_unknown_organization_says_how_to_register_it(self, engine: Engine) -> None:
        with pytest.raises(NotFoundError, match="trainctl org create ghost"):
            orgs.get_org(engine, "ghost")

    def test_a_second_active_run_is_refused_naming_the_first(self, engine: Engine) -> None:
        register(engine, "acme")
        first = _queue_run(engine)
        with pytest.raises(ConflictError) as err:
            _queue_run(engine)
        assert first["id"] in str(err.value)
        assert len(runs.list_runs(engine, "acme")) == 1

    def test_other_organizations_are_not_blocked_by_an_active_run(self, engine: Engine) -> None:
        register(engine, "acme")
        register(engine, "globex")
        _queue_run(engine, "acme")
        _queue_run(engine, "globex")

    def test_a_stage_is_claimed_once_and_a_duplicate_delivery_is_turned_away(
        self, engine: Engine
    ) -> None:
        register(engine, "acme")
        run = _queue_run(engine)
        claimed = runs.claim_stage(
            engine, run["id"], "extract", owner="w1", worker="w1", now=NOW, ttl_s=60
        )
        assert claimed["status"] == "running"
        with pytest.raises(LeaseHeld):
            runs.claim_stage(
                engine, run["id"], "extract", owner="w2", worker="w2", now=NOW, ttl_s=60
            )
        runs.complete_stage(engine, run["id"], "extract", owner="w1", started_at=NOW, now=NOW)
        with pytest.raises(RunFinished):
            runs.claim_stage(
                engine, run["id"], "extract", owner="w2", worker="w2", now=NOW, ttl_s=60
            )

    def test_an_expired_lease_can_be_taken_over(self, engine: Engine) -> None:
        register(engine, "acme")
        run = _queue_run(engine)
        runs.claim_stage(engine, run["id"], "extract", owner="w1", worker="w1", now=NOW, ttl_s=60)
        later = NOW + timedelta(seconds=61)
        runs.claim_stage(engine, run["id"], "extract", owner="w2", worker="w2", now=later, ttl_s=60)
        with pytest.raises(LeaseHeld):
            runs.complete_stage(engine, run["id"], "extract", owner="w1", started_at=NOW, now=later)

    def test_a_finished_run_frees_the_organization_and_is_audited(self, engine: Engine) -> None:
        register(engine, "acme")
        run = _queue_run(engine)
        assert runs.finish_failed(
            engine,
            run["id"],
            status="failed",
            stage="extract",
            error="boom",
            trace=None,
            actor="t",
            now=NOW,
        )
        assert not runs.finish_failed(
            engine,
            run["id"],
            status="failed",
            stage="extract",
            error="again",
            trace=None,
            actor="t",
            now=NOW,
        )
        assert runs.get_run(engine, run["id"])["error"] == "boom"
        _queue_run(engine)
        events = [e["event"] for e in audit.list_events(engine, "acme")]
        assert "training.failed" in events and "organization.created" in events


class TestRegistryOnSqlite(RegistryContract):
    pass
