"""Schedules as a user sets them, and how due slots are settled (SQLite, no network)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fakeredis
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from beat_schedules.dispatch import Dispatcher, Policy
from tests.support.registry_fixtures import ORG_DOC, migrated_engine
from training_tasks.config.settings import Settings
from training_tasks.db.tables import schedule_slots, training_schedules
from training_tasks.errors import ConfigError, NotFoundError
from training_tasks.protocol.paths import ModelStore
from training_tasks.registry import runs, schedules
from training_tasks.registry.schedules import PlannedRun
from training_tasks.runtime import Runtime
from training_tasks.service import TrainingService

START = datetime(2027, 1, 1, tzinfo=UTC)


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Sent:
    """Runs handed to the broker by the dispatcher (the broker itself is tested with a real beat)."""

    runs: list[str] = field(default_factory=list)

    def __call__(self, run_id: str, org_id: str, auto_deploy: bool) -> str:
        self.runs.append(run_id)
        return f"task-{run_id}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def svc(sqlite_url: str, tmp_path: Path, clock: Clock) -> Iterator[TrainingService]:
    settings = Settings.from_env({"ML_BASE_PATH": str(tmp_path / "ml")})
    engine = migrated_engine(sqlite_url)
    rt = Runtime(settings, engine, fakeredis.FakeRedis(), ModelStore(tmp_path / "ml"), now=clock)
    service = TrainingService(rt)
    service.register_organization("acme", ORG_DOC)
    yield service
    engine.dispose()


def dispatcher(svc: TrainingService, sent: Sent, **policy: object) -> Dispatcher:
    return Dispatcher(svc.rt, sent, beat_id="test-beat", policy=Policy(**policy))  # type: ignore[arg-type]


def ledger(svc: TrainingService, org_id: str = "acme") -> list[tuple[datetime, str]]:
    s = schedule_slots.c
    with svc.rt.engine.connect() as conn:
        rows = conn.execute(
            select(s.scheduled_for, s.outcome)
            .where(s.organization_id == org_id)
            .order_by(s.scheduled_for)
        ).all()
    return [(at, outcome) for at, outcome in rows]


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2027, 1, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("change", "field_name", "words"),
    [
        ({"pattern": "every sunday"}, "trainingSchedule.pattern", "exactly 5"),
        ({"pattern": "0 0 30 2 *"}, "trainingSchedule.pattern", "never"),
        ({"pattern": "0 2 * * 0", "timezone": "Mars/Olympus"}, "trainingSchedule.timezone", "IANA"),
        ({"pattern": "0 2 * * 0", "enabled": "yes"}, "trainingSchedule.enabled", "true or false"),
        ({"pattern": "0 2 * * 0", "every": "week"}, "trainingSchedule.every", "allowed keys"),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_field_and_changes_nothing(
    svc: TrainingService, change: dict[str, object], field_name: str, words: str
) -> None:
    svc.schedule_training("acme", {"pattern": "0 2 * * 0", "timezone": "Europe/Berlin"})
    before = svc.get_schedule("acme")
    events = len(svc.get_audit_trail("acme"))
    with pytest.raises(ConfigError) as err:
        svc.schedule_training("acme", change)
    assert err.value.field == field_name and words in str(err.value)
    assert svc.get_schedule("acme") == before
    assert len(svc.get_audit_trail("acme")) == events


def test_a_new_schedule_fires_next_at_its_local_time_and_is_audited(svc: TrainingService) -> None:
    doc = svc.schedule_training("acme", {"pattern": "0 2 * * 0", "timezone": "America/New_York"})
    assert doc["nextRunAt"] == "2027-01-03T07:00:00Z"  # Sunday 02:00 EST
    assert svc.get_organization("acme")["trainingSchedule"] == {
        "pattern": "0 2 * * 0",
        "timezone": "America/New_York",
        "enabled": True,
    }
    (event, *_) = svc.get_audit_trail("acme")
    assert event["event"] == "schedule.created" and event["actor"] == "api"
    assert event["details"]["after"]["pattern"] == "0 2 * * 0"


def test_a_partial_change_keeps_the_rest_and_disabling_clears_the_next_run(
    svc: TrainingService,
) -> None:
    svc.schedule_training("acme", {"pattern": "0 2 * * 0", "timezone": "America/New_York"})
    doc = svc.schedule_training("acme", {"pattern": "0 3 * * 0"})
    assert (doc["timezone"], doc["nextRunAt"]) == ("America/New_York", "2027-01-03T08:00:00Z")
    doc = svc.schedule_training("acme", {"enabled": False})
    assert doc["pattern"] == "0 3 * * 0" and doc["nextRunAt"] is None
    events = [e["event"] for e in svc.get_audit_trail("acme")]
    assert events[:3] == ["schedule.changed", "schedule.changed", "schedule.created"]


def test_setting_the_same_schedule_again_records_nothing(svc: TrainingService) -> None:
    svc.schedule_training("acme", {"pattern": "0 2 * * 0"})
    events = len(svc.get_audit_trail("acme"))
    svc.schedule_training("acme", {"pattern": "0 2 * * 0", "timezone": "UTC", "enabled": True})
    assert len(svc.get_audit_trail("acme")) == events


def test_a_schedule_needs_a_pattern_and_an_existing_organization(svc: TrainingService) -> None:
    with pytest.raises(ConfigError, match="pattern: is required"):
        svc.schedule_training("acme", {"timezone": "UTC"})
    with pytest.raises(NotFoundError, match="trainctl org create globex"):
        svc.schedule_training("globex", {"pattern": "0 2 * * 0"})
    with pytest.raises(NotFoundError, match="has no training schedule"):
        svc.delete_schedule("acme")


def test_deleting_a_schedule_removes_it_from_the_config_and_the_audit_says_so(
    svc: TrainingService,
) -> None:
    svc.schedule_training("acme", {"pattern": "0 2 * * 0"})
    svc.delete_schedule("acme")
    assert svc.get_schedule("acme") is None
    assert "trainingSchedule" not in svc.get_organization("acme") or (
        svc.get_organization("acme")["trainingSchedule"] is None
    )
    assert svc.get_audit_trail("acme")[0]["event"] == "schedule.deleted"


def test_the_preview_lists_local_and_utc_times_and_explains_a_dst_gap(
    svc: TrainingService, clock: Clock
) -> None:
    clock.now = datetime(2027, 3, 12, tzinfo=UTC)
    svc.schedule_training("acme", {"pattern": "30 2 * * *", "timezone": "America/New_York"})
    items = svc.preview_schedule("acme", 3)
    assert [i["scheduledFor"] for i in items] == [
        "2027-03-12T07:30:00Z",
        "2027-03-13T07:30:00Z",
        "2027-03-14T07:00:00Z",
    ]
    assert items[0]["scheduledLocal"] == "2027-03-12T02:30:00-05:00" and items[0]["note"] is None
    assert "does not exist" in items[2]["note"] and "03:00" in items[2]["note"]


def test_a_due_slot_starts_a_run_whose_data_window_ends_at_the_slot(
    svc: TrainingService, clock: Clock
) -> None:
    svc.schedule_training("acme", {"pattern": "0 2 * * *"})
    sent = Sent()
    clock.now = at(1, 2, 0) + timedelta(seconds=3)
    report = dispatcher(svc, sent).dispatch_due(clock.now)
    assert (report.submitted, report.skipped) == (1, 0)
    run = runs.get_run(svc.rt.engine, sent.runs[0])
    assert run["trigger"] == "schedule" and run["schedule_slot"] == at(1, 2)
    assert run["config"]["dataRange"]["endDate"] == "2027-01-01T02:00:00Z"
    assert run["task_id"] == f"task-{run['id']}"
    assert svc.get_schedule("acme")["nextRunAt"] == "2027-01-02T02:00:00Z"


def test_a_scheduled_run_of_an_organization_labelled_by_events_trains_the_computed_target(
    svc: TrainingService, clock: Clock
) -> None:
    labels = {
        "eventsTable": "failure_events",
        "assetColumn": "asset_id",
        "timestampColumn": "failed_at",
        "horizonHours": 48,
        "excludeAfterHours": 12,
    }
    doc = {
        **ORG_DOC,
        "mlModelConfig": {"featureColumns": ["temperature", "pressure"]},
        "schemaConfig": {**ORG_DOC["schemaConfig"], "assetColumn": "asset", "labels": labels},
    }
    svc.register_organization("labelled", doc)
    svc.schedule_training("labelled", {"pattern": "0 2 * * *"})
    sent = Sent()
    clock.now = at(1, 2, 0) + timedelta(seconds=3)
    report = dispatcher(svc, sent).dispatch_due(clock.now)
    assert (report.submitted, report.skipped) == (1, 0)
    config = runs.get_run(svc.rt.engine, sent.runs[0])["config"]
    assert config["targetColumn"] == "failure_within_horizon"
    assert config["purgeGapSeconds"] == 48 * 3600


def test_a_slot_is_skipped_with_the_reason_while_a_run_is_active(
    svc: TrainingService, clock: Clock
) -> None:
    svc.schedule_training("acme", {"pattern": "0 * * * *"})
    sent = Sent()
    for hour in (1, 2):
        clock.now = at(1, hour)
        dispatcher(svc, sent).dispatch_due(clock.now)
    assert ledger(svc) == [(at(1, 1), "submitted"), (at(1, 2), "skipped")]
    (latest, _) = svc.get_schedule_slots("acme")
    assert f"already has run {sent.runs[0]} queued" in latest["reason"]
    assert len(sent.runs) == 1


def test_after_a_long_outage_only_the_latest_missed_slot_runs(
    svc: TrainingService, clock: Clock
) -> None:
    svc.schedule_training("acme", {"pattern": "0 6 * * *"})
    sent = Sent()
    clock.now = at(5, 7)
    dispatcher(svc, sent).dispatch_due(clock.now)
    assert ledger(svc) == [
        (at(1, 6), "skipped"),
        (at(2, 6), "skipped"),
        (at(3, 6), "skipped"),
        (at(4, 6), "skipped"),
        (at(5, 6), "submitted"),
    ]
    assert len(sent.runs) == 1


def test_the_skip_policy_runs_a_slot_within_the_grace_time_only(
    svc: TrainingService, clock: Clock
) -> None:
    svc.schedule_training("acme", {"pattern": "0 6 * * *"})
    sent = Sent()
    clock.now = at(1, 6, 20)
    dispatcher(svc, sent, missed="skip", grace_s=600).dispatch_due(clock.now)
    clock.now = at(2, 6, 5)
    dispatcher(svc, sent, missed="skip", grace_s=600).dispatch_due(clock.now)
    assert ledger(svc) == [(at(1, 6), "skipped"), (at(2, 6), "submitted")]


def test_a_minutely_schedule_missed_for_days_records_a_bounded_number_of_slots(
    svc: TrainingService, clock: Clock
) -> None:
    svc.schedule_training("acme", {"pattern": "* * * * *"})
    clock.now = at(4, 0)
    dispatcher(svc, Sent()).dispatch_due(clock.now)
    recorded = ledger(svc)
    assert len(recorded) == 1001 and recorded[-1] == (at(4, 0), "submitted")
    (latest, *_) = svc.get_schedule_slots("acme")
    assert "more than 1000 slots were missed" in latest["reason"]


def test_an_edit_between_reading_and_settling_wins(svc: TrainingService, clock: Clock) -> None:
    svc.schedule_training("acme", {"pattern": "0 2 * * *"})
    clock.now = at(1, 3)
    (row,) = schedules.due(svc.rt.engine, clock.now, 10)
    svc.schedule_training("acme", {"pattern": "0 4 * * *"})  # a user edits meanwhile
    result = schedules.settle(
        svc.rt.engine,
        row,
        next_run_at=at(2, 2),
        settled_until=at(1, 2),
        skipped=[(at(1, 2), "test")],
        run=None,
        beat="b",
        now=clock.now,
    )
    assert result.outcome == "lost" and ledger(svc) == []
    assert svc.get_schedule("acme")["nextRunAt"] == "2027-01-01T04:00:00Z"


def test_a_second_beat_that_read_the_same_due_slot_records_nothing(
    svc: TrainingService, clock: Clock
) -> None:
    svc.schedule_training("acme", {"pattern": "0 2 * * *"})
    clock.now = at(1, 2, 1)
    (row,) = schedules.due(svc.rt.engine, clock.now, 10)  # both beats read this row
    first = Sent()
    dispatcher(svc, first).dispatch_due(clock.now)
    late = PlannedRun(slot=at(1, 2), run_id="f" * 32, version="v-late", config={}, auto_deploy=True)
    result = schedules.settle(
        svc.rt.engine,
        row,
        next_run_at=at(2, 2),
        settled_until=at(1, 2),
        skipped=[],
        run=late,
        beat="second",
        now=clock.now,
    )
    assert result.outcome == "lost"
    assert ledger(svc) == [(at(1, 2), "submitted")] and len(first.runs) == 1


def test_the_database_refuses_a_second_record_of_the_same_slot(svc: TrainingService) -> None:
    row = dict(
        organization_id="acme",
        scheduled_for=at(1, 2),
        outcome="skipped",
        pattern="0 2 * * *",
        timezone="UTC",
        recorded_at=at(1, 2),
        beat="b",
    )
    with svc.rt.engine.begin() as conn:
        conn.execute(schedule_slots.insert().values(**row))
    with pytest.raises(IntegrityError), svc.rt.engine.begin() as conn:
        conn.execute(schedule_slots.insert().values(**row))


def test_a_schedule_left_without_a_next_run_is_armed_by_beat(
    svc: TrainingService, clock: Clock
) -> None:
    svc.schedule_training("acme", {"pattern": "0 2 * * *"})
    with svc.rt.engine.begin() as conn:  # as migration 0003 leaves existing schedules
        conn.execute(training_schedules.update().values(next_run_at=None))
    assert dispatcher(svc, Sent()).arm(clock.now) == 1
    assert svc.get_schedule("acme")["nextRunAt"] == "2027-01-01T02:00:00Z"


def test_a_run_of_an_org_whose_model_config_is_incomplete_is_recorded_as_skipped(
    svc: TrainingService, clock: Clock
) -> None:
    doc = {**ORG_DOC, "mlModelConfig": {"featureColumns": ["temperature"]}}
    svc.register_organization("globex", doc)
    svc.schedule_training("globex", {"pattern": "0 2 * * *"})
    clock.now = at(1, 2)
    dispatcher(svc, Sent()).dispatch_due(clock.now)
    assert ledger(svc, "globex") == [(at(1, 2), "skipped")]
    (slot,) = svc.get_schedule_slots("globex")
    assert "targetColumn" in slot["reason"]


def test_a_stored_pattern_that_cannot_be_evaluated_is_disabled_and_audited_not_fatal(
    svc: TrainingService, clock: Clock
) -> None:
    svc.register_organization("globex", ORG_DOC)
    for org_id in ("acme", "globex"):
        svc.schedule_training(org_id, {"pattern": "0 2 * * *"})
    with svc.rt.engine.begin() as conn:  # written by an older release that allowed it
        conn.execute(
            training_schedules.update()
            .where(training_schedules.c.organization_id == "acme")
            .values(pattern="5-5 * * * *")
        )
    clock.now = at(1, 2)
    report = dispatcher(svc, Sent()).dispatch_due(clock.now)
    assert (report.parked, report.submitted) == (1, 1)
    assert ledger(svc, "globex") == [(at(1, 2), "submitted")]
    acme = svc.get_schedule("acme")
    assert acme["enabled"] is False and acme["nextRunAt"] is None
    event = svc.get_audit_trail("acme")[0]
    assert event["event"] == "schedule.disabled" and "5-5" in event["details"]["reason"]
