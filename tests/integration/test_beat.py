"""Scheduled training with a real `celery beat`, real Redis and PostgreSQL, on a test clock.

Every test ends by reading the slot ledger: one run or one recorded skip per slot, nothing else.
No worker runs here, so an organization's first scheduled run stays queued and its later slots
are recorded as skipped for that reason; the messages wait on the organization's queue.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis as redis_lib
from sqlalchemy import Engine, select

from tests.support.beat_process import (
    Beat,
    FileClock,
    beat_process,
    lock_holder,
    step_through,
    wait_for_tick,
)
from tests.support.processes import on_both_brokers, queued_tasks, service_env, wait_for
from tests.support.registry_fixtures import ORG_DOC, migrated_engine
from training_tasks.config.settings import Settings
from training_tasks.db.tables import schedule_slots, training_runs
from training_tasks.protocol.ids import org_queue
from training_tasks.protocol.paths import ModelStore
from training_tasks.runtime import Runtime
from training_tasks.service import TrainingService

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]


@dataclass
class Setup:
    """The test's clock, service (on that clock), Redis, database and beat environment."""

    clock: FileClock
    svc: TrainingService
    redis: redis_lib.Redis
    engine: Engine
    env: dict[str, str]
    log_dir: Path

    def beat(self, **extra_env: str) -> object:
        return beat_process(self.env, self.log_dir, self.clock, extra_env=extra_env)

    def org(self, org_id: str, pattern: str, timezone: str = "UTC") -> str:
        self.svc.register_organization(org_id, ORG_DOC)
        self.svc.schedule_training(org_id, {"pattern": pattern, "timezone": timezone})
        return org_id

    def step(self, beats: list[Beat], until: datetime, step: timedelta) -> None:
        step_through(self.clock, self.redis, beats, until, step)


@pytest.fixture
def setup(postgres_url: str, redis_url: str, broker: str, tmp_path: Path) -> Iterator[Setup]:
    start = datetime(2027, 1, 1, tzinfo=UTC)
    clock = FileClock(tmp_path / "clock.json", start)
    engine = migrated_engine(postgres_url)
    redis = redis_lib.Redis.from_url(redis_url)
    settings = Settings.from_env({"ML_BASE_PATH": str(tmp_path / "ml")})
    rt = Runtime(settings, engine, redis, ModelStore(settings.ml_base_path), now=lambda: clock.now)
    env = service_env(
        redis_url=redis_url,
        database_url=postgres_url,
        ml_base_path=tmp_path / "ml",
        broker_url=broker,
        extra={"BEAT_LOCK_TTL_S": "3"},
    )
    yield Setup(clock, TrainingService(rt), redis, engine, env, tmp_path)
    engine.dispose()
    redis.close()


def ledger(engine: Engine, org_id: str) -> list[tuple[str, str]]:
    """The org's recorded slots, oldest first: (UTC time, outcome)."""
    s = schedule_slots.c
    query = select(s.scheduled_for, s.outcome).where(s.organization_id == org_id)
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(s.scheduled_for)).all()
    return [(at.strftime("%Y-%m-%dT%H:%MZ"), outcome) for at, outcome in rows]


def scheduled_runs(engine: Engine, org_id: str) -> list[dict[str, object]]:
    r = training_runs.c
    query = select(training_runs).where(r.organization_id == org_id, r.trigger == "schedule")
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


DST_CASES = [
    # (zone, pattern, clock start, clock end, expected slots in UTC)
    (
        "America/New_York",
        "30 2 * * *",  # 02:30 does not exist on 2027-03-14: runs at 03:00 EDT
        "2027-03-13T00:00Z",
        "2027-03-15T12:00Z",
        ["2027-03-13T07:30Z", "2027-03-14T07:00Z", "2027-03-15T06:30Z"],
    ),
    (
        "Europe/Berlin",
        "30 2 * * *",  # 02:30 does not exist on 2027-03-28: runs at 03:00 CEST
        "2027-03-27T00:00Z",
        "2027-03-29T06:00Z",
        ["2027-03-27T01:30Z", "2027-03-28T01:00Z", "2027-03-29T00:30Z"],
    ),
    (
        "Australia/Sydney",
        "30 2 * * *",  # 02:30 does not exist on 2027-10-03: runs at 03:00 AEDT
        "2027-10-01T12:00Z",
        "2027-10-03T18:00Z",
        ["2027-10-01T16:30Z", "2027-10-02T16:00Z", "2027-10-03T15:30Z"],
    ),
    (
        "America/New_York",
        "30 1 * * *",  # 01:30 happens twice on 2027-11-07: runs once, at 01:30 EDT
        "2027-11-06T00:00Z",
        "2027-11-08T12:00Z",
        ["2027-11-06T05:30Z", "2027-11-07T05:30Z", "2027-11-08T06:30Z"],
    ),
]


def test_slots_across_dst_changes_fire_once_at_the_intended_local_time(setup: Setup) -> None:
    with setup.beat() as beat:
        for n, (zone, pattern, start, end, expected) in enumerate(DST_CASES):
            setup.clock.set(utc(start))
            org_id = setup.org(f"dst-{n}", pattern, zone)
            setup.step([beat], utc(end), timedelta(hours=8))
            assert ledger(setup.engine, org_id) == [
                (expected[0], "submitted"),
                *[(slot, "skipped") for slot in expected[1:]],
            ], f"{zone} {pattern}"
            (run,) = scheduled_runs(setup.engine, org_id)
            assert run["schedule_slot"] == utc(expected[0])
            assert run["config"]["dataRange"]["endDate"].startswith(expected[0][:-1])


def test_a_half_hourly_schedule_does_not_repeat_the_autumn_hour(setup: Setup) -> None:
    org_id = "autumn-half-hourly"
    setup.clock.set(utc("2027-11-07T03:50Z"))  # 23:50 EDT the evening before
    setup.org(org_id, "0,30 * * * *", "America/New_York")
    with setup.beat() as beat:
        setup.step([beat], utc("2027-11-07T08:10Z"), timedelta(minutes=20))
    times = [at for at, _ in ledger(setup.engine, org_id)]
    # 00:00 00:30 01:00 01:30 EDT, then the repeated 01:00 and 01:30 EST do not fire, 02:00 EST on.
    assert times == [
        "2027-11-07T04:00Z",
        "2027-11-07T04:30Z",
        "2027-11-07T05:00Z",
        "2027-11-07T05:30Z",
        "2027-11-07T07:00Z",
        "2027-11-07T07:30Z",
        "2027-11-07T08:00Z",
    ]


@on_both_brokers
def test_a_due_slot_submits_the_run_to_the_organizations_queue(setup: Setup) -> None:
    org_id = setup.org("queued-acme", "0 2 * * 0", "America/New_York")
    with setup.beat() as beat:
        setup.step([beat], utc("2027-01-04T00:00Z"), timedelta(hours=6))  # Sunday 02:00 EST
    (run,) = scheduled_runs(setup.engine, org_id)
    assert run["status"] == "queued" and run["schedule_slot"] == utc("2027-01-03T07:00Z")
    assert run["task_id"], "the run records the id of the chain it was sent as"
    assert queued_tasks(setup.env, org_queue(org_id)) == [("training.extract", [run["id"]])]


def test_edits_while_beat_runs_take_effect_without_a_restart(setup: Setup) -> None:
    org_id = setup.org("edited", "0 3 * * *")
    with setup.beat() as beat:
        setup.step([beat], utc("2027-01-01T04:00Z"), timedelta(hours=6))  # 03:00 fires
        setup.svc.schedule_training(org_id, {"pattern": "0 5 * * *"})
        setup.step([beat], utc("2027-01-02T06:00Z"), timedelta(hours=6))  # 05:00, not 03:00
        setup.svc.schedule_training(org_id, {"enabled": False})
        setup.step([beat], utc("2027-01-03T06:00Z"), timedelta(hours=6))  # nothing
        setup.svc.schedule_training(org_id, {"enabled": True})
        setup.step([beat], utc("2027-01-04T06:00Z"), timedelta(hours=6))  # 05:00 again
        setup.svc.delete_schedule(org_id)
        setup.step([beat], utc("2027-01-05T06:00Z"), timedelta(hours=6))  # nothing
        created = setup.org("created-later", "30 7 * * *")
        setup.step([beat], utc("2027-01-05T08:00Z"), timedelta(hours=6))
    assert ledger(setup.engine, org_id) == [
        ("2027-01-01T03:00Z", "submitted"),
        ("2027-01-01T05:00Z", "skipped"),  # the edit at 04:00 moved the next run to 05:00
        ("2027-01-02T05:00Z", "skipped"),
        ("2027-01-04T05:00Z", "skipped"),  # re-enabled on the 3rd at 06:00: no catch-up
    ]
    assert ledger(setup.engine, created) == [("2027-01-05T07:30Z", "submitted")]
    events = [e["event"] for e in setup.svc.get_audit_trail(org_id)]
    assert events.count("schedule.changed") == 3 and "schedule.deleted" in events


def test_a_beat_restarted_after_a_crash_runs_only_the_latest_missed_slot(setup: Setup) -> None:
    org_id = setup.org("missed", "0 6 * * *")
    with setup.beat() as beat:
        setup.step([beat], utc("2027-01-01T07:00Z"), timedelta(hours=1))
        beat.kill()
    with setup.engine.begin() as conn:  # let the 06:00 run finish so that slots can run again
        conn.execute(training_runs.update().values(status="succeeded"))
    setup.clock.set(utc("2027-01-04T07:00Z"))  # 2nd, 3rd and 4th at 06:00 passed without a beat
    with setup.beat() as beat:
        wait_for_tick(setup.redis, setup.clock.now, [beat])
    assert ledger(setup.engine, org_id) == [
        ("2027-01-01T06:00Z", "submitted"),
        ("2027-01-02T06:00Z", "skipped"),
        ("2027-01-03T06:00Z", "skipped"),
        ("2027-01-04T06:00Z", "submitted"),
    ]
    reasons = [s["reason"] for s in setup.svc.get_schedule_slots(org_id)]
    assert "2 missed slot(s)" in reasons[0]
    assert "SCHEDULE_MISSED_SLOTS=latest" in reasons[1] and "missed" in reasons[2]


def test_with_the_skip_policy_a_restarted_beat_runs_no_late_slot(setup: Setup) -> None:
    org_id = setup.org("missed-skip", "0 6 * * *")
    setup.clock.set(utc("2027-01-03T07:00Z"))
    with setup.beat(SCHEDULE_MISSED_SLOTS="skip", SCHEDULE_GRACE_S="600") as beat:
        wait_for_tick(setup.redis, setup.clock.now, [beat])
        setup.step([beat], utc("2027-01-04T06:05Z"), timedelta(hours=1))
    assert ledger(setup.engine, org_id) == [
        ("2027-01-01T06:00Z", "skipped"),
        ("2027-01-02T06:00Z", "skipped"),
        ("2027-01-03T06:00Z", "skipped"),
        ("2027-01-04T06:00Z", "submitted"),
    ]


def test_two_beats_record_each_slot_once_and_the_standby_takes_over(setup: Setup) -> None:
    org_ids = [setup.org(f"twin-{n}", f"{n * 5} * * * *") for n in range(12)]
    with setup.beat() as first, setup.beat() as second:
        beats = [first, second]
        setup.step(beats, utc("2027-01-01T02:00Z"), timedelta(minutes=20))
        holder = lock_holder(setup.redis)
        assert holder is not None
        leader = first if f":{first.proc.pid}:" in holder else second
        standby = second if leader is first else first
        leader.kill()
        # The standby takes the lock once the dead leader's 3 s TTL runs out.
        wait_for(lambda: lock_holder(setup.redis) not in (None, holder), 15, "the standby's lock")
        setup.step([standby], utc("2027-01-01T04:00Z"), timedelta(minutes=20))
        assert standby.alive()
    for n, org_id in enumerate(org_ids):
        hours = range(1, 5) if n == 0 else range(4)  # slots after 00:00, up to 04:00
        expected = [f"2027-01-01T{h:02d}:{n * 5:02d}Z" for h in hours]
        assert ledger(setup.engine, org_id) == [
            (expected[0], "submitted"),
            *[(slot, "skipped") for slot in expected[1:]],
        ], org_id
        assert len(scheduled_runs(setup.engine, org_id)) == 1


def test_a_beat_that_loses_its_lock_stops_dispatching_and_keeps_running(setup: Setup) -> None:
    org_id = setup.org("lock-lost", "0 * * * *")
    with setup.beat() as beat:
        setup.step([beat], utc("2027-01-01T01:30Z"), timedelta(minutes=30))
        setup.redis.set("ml:beat:leader", "someone-else", px=60_000)
        wait_for(
            lambda: "lost the leader lock" in beat.log_text(), 15, "the beat to notice the loss"
        )
        setup.clock.set(utc("2027-01-01T03:30Z"))
        time.sleep(1.0)  # five beat intervals without the lock
        assert ledger(setup.engine, org_id) == [("2027-01-01T01:00Z", "submitted")]
        assert beat.alive()
        setup.redis.delete("ml:beat:leader")
        wait_for_tick(setup.redis, setup.clock.now, [beat])
    assert ledger(setup.engine, org_id) == [
        ("2027-01-01T01:00Z", "submitted"),
        ("2027-01-01T02:00Z", "skipped"),
        ("2027-01-01T03:00Z", "skipped"),
    ]
