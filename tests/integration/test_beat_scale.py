"""Beat with 10,000 schedules, and two dispatchers racing without the lock, on PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from sqlalchemy import Engine, func, insert, select

from beat_schedules.dispatch import Dispatcher, Policy
from tests.support.beat_process import FileClock, beat_process, step_through
from tests.support.processes import service_env
from tests.support.registry_fixtures import ORG_DOC, migrated_engine
from training_tasks.config.settings import Settings
from training_tasks.db.tables import (
    organizations,
    schedule_slots,
    training_runs,
    training_schedules,
)
from training_tasks.protocol.paths import ModelStore
from training_tasks.runtime import Runtime

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

START = datetime(2027, 1, 1, tzinfo=UTC)


def populate(engine: Engine, count: int, pattern_of: Any, start: datetime) -> list[str]:
    """`count` organizations with daily UTC schedules, in bulk; returns their ids."""
    from beat_schedules.cron import CronSchedule

    ids = [f"scale-{n:05d}" for n in range(count)]
    config = {k: v for k, v in ORG_DOC.items() if k != "scadaDbConfig"} | {"scadaDbConfig": {}}
    orgs_rows, schedule_rows = [], []
    for n, org_id in enumerate(ids):
        pattern = pattern_of(n)
        orgs_rows.append(
            dict(
                id=org_id,
                name=org_id,
                config=config | {"organizationId": org_id},
                scada_url="sqlite:///nowhere.db",
                created_at=start,
                updated_at=start,
            )
        )
        schedule_rows.append(
            dict(
                organization_id=org_id,
                pattern=pattern,
                timezone="UTC",
                enabled=True,
                next_run_at=CronSchedule(pattern, "UTC").next_after(start),
                settled_until=start,
                revision=1,
                updated_at=start,
            )
        )
    with engine.begin() as conn:
        conn.execute(insert(organizations), orgs_rows)
        conn.execute(insert(training_schedules), schedule_rows)
    return ids


def recorded(engine: Engine) -> Counter[tuple[str, datetime]]:
    s = schedule_slots.c
    with engine.connect() as conn:
        return Counter(
            (org, at) for org, at in conn.execute(select(s.organization_id, s.scheduled_for))
        )


def scheduled_run_count(engine: Engine) -> int:
    query = select(func.count()).where(training_runs.c.trigger == "schedule")
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def test_ten_thousand_schedules_fire_each_due_slot_once(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    engine = migrated_engine(postgres_url)
    # Daily at every minute of the day, about seven organizations per minute.
    ids = populate(engine, 10_000, lambda n: f"{n % 60} {(n // 60) % 24} * * *", START)
    clock = FileClock(tmp_path / "clock.json", START)
    redis = redis_lib.Redis.from_url(redis_url)
    env = service_env(redis_url=redis_url, database_url=postgres_url, ml_base_path=tmp_path / "ml")
    until = START + timedelta(hours=1)
    with beat_process(env, tmp_path, clock) as beat:
        step_through(clock, redis, [beat], until, timedelta(minutes=10))
    expected = {
        (org_id, START.replace(hour=(n // 60) % 24, minute=n % 60))
        for n, org_id in enumerate(ids)
        if START < START.replace(hour=(n // 60) % 24, minute=n % 60) <= until
    }
    got = recorded(engine)
    assert set(got) == expected and set(got.values()) == {1}
    assert scheduled_run_count(engine) == len(expected) > 300
    redis.close()
    engine.dispose()


def test_two_dispatchers_racing_without_the_lock_record_each_slot_once(
    postgres_url: str, tmp_path: Path
) -> None:
    engine = migrated_engine(postgres_url)
    ids = populate(engine, 60, lambda n: f"{n % 3 + 1} 0 * * *", START)
    settings = Settings.from_env({"ML_BASE_PATH": str(tmp_path / "ml")})
    rt = Runtime(settings, engine, None, ModelStore(tmp_path / "ml"))
    sent: list[str] = []
    now = START + timedelta(minutes=5)
    barrier = threading.Barrier(2)

    def beat(name: str) -> None:
        dispatcher = Dispatcher(
            rt, lambda run_id, *_: sent.append(run_id) or run_id, beat_id=name, policy=Policy()
        )
        barrier.wait(timeout=10)
        while dispatcher.dispatch_due(now).more:
            pass

    threads = [threading.Thread(target=beat, args=(f"beat-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    got = recorded(engine)
    assert len(got) == len(ids) and set(got.values()) == {1}
    assert sorted(sent) == sorted(set(sent)) and len(sent) == len(ids)
    assert scheduled_run_count(engine) == len(ids)
    engine.dispose()
