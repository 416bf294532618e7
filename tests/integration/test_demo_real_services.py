"""`trainctl demo --scada-url URL --load-only`: the demo's data in a real PostgreSQL database, its
organizations registered, and schedules on that data that train on its newest rows."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis as redis_lib
import sqlalchemy as sa

from beat_schedules.dispatch import Dispatcher, Policy
from tests.conftest import PG_ADMIN_URL
from training_tasks.cli.demo import DEMO_START
from training_tasks.config.settings import Settings
from training_tasks.db.engine import make_engine
from training_tasks.messaging.tasks import enqueue_chain
from training_tasks.protocol.paths import ModelStore
from training_tasks.registry import runs
from training_tasks.runtime import Runtime, utc_now
from training_tasks.service.api import TrainingService

pytestmark = pytest.mark.integration

DAYS = 10
# Ten days from DEMO_START, one row per asset every 10 minutes: the newest row is at 23:50.
NEWEST = DEMO_START + timedelta(days=DAYS) - timedelta(minutes=10)
SLOT_CLOCK = datetime(2027, 3, 1, 9, 0, 30, tzinfo=UTC)


def demo(env: dict[str, str], scada_url: str) -> subprocess.CompletedProcess[str]:
    argv = ["demo", "--scada-url", scada_url, "--load-only", "--assets", "3", "--days", str(DAYS)]
    return subprocess.run(
        [sys.executable, "-m", "training_tasks.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def env(postgres_url: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    return {
        **base,
        "DATABASE_URL": postgres_url,
        "REDIS_URL": redis_url,
        "ML_BASE_PATH": str(tmp_path / "ml"),
    }


@pytest.fixture
def missing_database() -> Iterator[str]:
    """The URL of a database that does not exist yet; dropped afterwards if something made it."""
    name = f"t_scada_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        yield sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def table_facts(url: str, table: str) -> tuple[int, str | None]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            count = conn.execute(sa.text(f'SELECT count(*) FROM "{table}"')).scalar_one()
        comment = sa.inspect(engine).get_table_comment(table).get("text")
        return int(count), comment
    finally:
        engine.dispose()


def test_the_demo_creates_its_database_loads_its_tables_and_registers_the_orgs(
    env: dict[str, str], missing_database: str, postgres_url: str
) -> None:
    first = demo(env, missing_database)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "created the database" in first.stdout
    for table in ("sensor_readings", "plant_telemetry", "bearing_log", "press_readings"):
        rows, comment = table_facts(missing_database, table)
        assert rows > 1000 and comment and comment.startswith("trainctl demo data")
    failures, comment = table_facts(missing_database, "failure_events")
    assert failures > 100 and comment and comment.startswith("trainctl demo data")
    assert _index_columns(missing_database, "failure_events") == [["asset_id", "failed_at"]]
    svc = TrainingService(_runtime(env, postgres_url))
    assert sorted(svc.list_organizations()) == ["acme-corp", "globex", "initech", "vandelay"]
    vandelay = svc.get_organization("vandelay")
    assert vandelay["schemaConfig"]["labels"]["eventsTable"] == "failure_events"
    assert vandelay["mlModelConfig"]["windows"]["length"] == 36
    acme = svc.get_organization("acme-corp")
    assert acme["scadaDbConfig"]["url"] == missing_database
    assert acme["mlModelConfig"]["windowEnd"] == "latestData"
    assert acme["schemaConfig"]["table"] == "sensor_readings"
    svc.rt.close()

    again = demo(env, missing_database)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already held") == 5  # four reading tables and the events
    assert "registered organization" not in again.stdout
    assert "updated organization" not in again.stdout


def test_the_demo_leaves_a_table_it_did_not_write_alone(
    env: dict[str, str], postgres_factory: Callable[[], str]
) -> None:
    scada_url = postgres_factory()
    engine = sa.create_engine(scada_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE sensor_readings (ts timestamptz, reading float)"))
        conn.execute(sa.text("INSERT INTO sensor_readings VALUES (now(), 1.5)"))
    engine.dispose()
    done = demo(env, scada_url)
    assert done.returncode == 1
    assert "'sensor_readings'" in done.stdout and "was not written by the demo" in done.stdout
    assert table_facts(scada_url, "sensor_readings") == (1, None)


def test_scheduled_slots_on_demo_data_train_on_its_newest_rows(
    env: dict[str, str], postgres_factory: Callable[[], str], postgres_url: str, redis_url: str
) -> None:
    scada_url = postgres_factory()
    loaded = demo(env, scada_url)
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    engine = sa.create_engine(scada_url)
    with engine.begin() as conn:  # globex's plant sends nothing any more
        conn.execute(sa.text("TRUNCATE plant_telemetry"))
    engine.dispose()
    rt = _runtime(env, postgres_url, now=lambda: SLOT_CLOCK - timedelta(minutes=5))
    svc = TrainingService(rt)
    for org_id in ("acme-corp", "globex"):
        svc.schedule_training(org_id, {"pattern": "0 9 * * *", "enabled": True})
    enqueue = functools.partial(enqueue_chain, broker_url=redis_url)
    dispatcher = Dispatcher(rt, enqueue, beat_id="test-beat", policy=Policy())

    report = dispatcher.dispatch_due(SLOT_CLOCK)

    assert (report.submitted, report.skipped) == (1, 1)
    [run] = runs.list_runs(rt.engine, "acme-corp", 5)
    assert run["trigger"] == "schedule" and run["status"] == "queued"
    end = NEWEST + timedelta(seconds=1)
    assert run["config"]["dataRange"] == {
        "startDate": (end - timedelta(days=DAYS)).isoformat().replace("+00:00", "Z"),
        "endDate": end.isoformat().replace("+00:00", "Z"),
    }
    client = redis_lib.Redis.from_url(redis_url)
    assert client.llen("org.acme-corp") == 1, "the slot's run was sent to the org's queue"
    client.close()
    [slot] = svc.get_schedule_slots("globex", 5)
    assert slot["outcome"] == "skipped"
    assert "mlModelConfig.windowEnd" in slot["reason"] and "holds no rows" in slot["reason"]
    rt.close()


def _index_columns(url: str, table: str) -> list[list[str | None]]:
    engine = sa.create_engine(url)
    try:
        return [ix["column_names"] for ix in sa.inspect(engine).get_indexes(table)]
    finally:
        engine.dispose()


def _runtime(
    env: dict[str, str], database_url: str, now: Callable[[], datetime] = utc_now
) -> Runtime:
    settings = Settings.from_env({"ML_BASE_PATH": env["ML_BASE_PATH"]})
    engine, client = make_engine(database_url), redis_lib.Redis.from_url(env["REDIS_URL"])
    return Runtime(settings, engine, client, ModelStore(settings.ml_base_path), now=now)
