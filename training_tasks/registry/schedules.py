"""Training schedules and their slots: one row per organization, one record per fired slot.

A schedule row carries `next_run_at`, the next slot to fire, kept current by every edit and every
fire; beat finds what is due through its index instead of evaluating every pattern. Each slot a
beat settles is a `schedule_slots` row with a unique key on (organization, scheduled time), so a
slot runs or is skipped once, whatever beats run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from beat_schedules.cron import CronSchedule
from training_tasks.db.tables import (
    organizations,
    schedule_slots,
    training_runs,
    training_schedules,
)
from training_tasks.errors import OrgNotRegistered
from training_tasks.fields import iso, iso_or_none
from training_tasks.protocol.ids import check_org_id
from training_tasks.registry import audit, runs
from training_tasks.registry.rows import ACTIVE_STATUSES, ScheduleSlotRow, as_row


@dataclass(frozen=True)
class ScheduleRow:
    """A schedule as stored, with the revision a beat must still see when it settles a slot."""

    org_id: str
    pattern: str
    timezone: str
    enabled: bool
    next_run_at: datetime | None
    settled_until: datetime | None
    revision: int
    updated_at: datetime

    @property
    def cron(self) -> CronSchedule:
        return CronSchedule(self.pattern, self.timezone)

    def public(self) -> dict[str, Any]:
        """The `trainingSchedule` document, plus when it fires next."""
        return {
            "organizationId": self.org_id,
            "pattern": self.pattern,
            "timezone": self.timezone,
            "enabled": self.enabled,
            "nextRunAt": iso_or_none(self.next_run_at),
            "updatedAt": iso(self.updated_at),
        }


@dataclass(frozen=True)
class PlannedRun:
    """The run a due slot starts, built by the dispatcher before the slot's transaction."""

    slot: datetime
    run_id: str
    version: str
    config: dict[str, Any]
    auto_deploy: bool
    note: str | None = None  # recorded with the slot, e.g. that it catches up missed slots


@dataclass(frozen=True)
class Settled:
    """What one settle transaction recorded: the run it created and the slots it skipped."""

    outcome: str  # recorded | lost (an edit or another beat got there first) | conflict
    run: PlannedRun | None = None
    skipped: tuple[tuple[datetime, str], ...] = ()


def _row(mapping: Mapping[Any, Any]) -> ScheduleRow:
    return ScheduleRow(
        org_id=mapping["organization_id"],
        pattern=mapping["pattern"],
        timezone=mapping["timezone"],
        enabled=mapping["enabled"],
        next_run_at=mapping["next_run_at"],
        settled_until=mapping["settled_until"],
        revision=mapping["revision"],
        updated_at=mapping["updated_at"],
    )


def spec_of(row: ScheduleRow | None) -> dict[str, Any] | None:
    """The `trainingSchedule` document of a stored schedule."""
    if row is None:
        return None
    return {"pattern": row.pattern, "timezone": row.timezone, "enabled": row.enabled}


def get_schedule(engine: Engine | Connection, org_id: str) -> ScheduleRow | None:
    """The organization's schedule, or None when it has none."""
    query = select(training_schedules).where(training_schedules.c.organization_id == org_id)
    if isinstance(engine, Connection):
        found = engine.execute(query).first()
    else:
        with engine.connect() as conn:
            found = conn.execute(query).first()
    return None if found is None else _row(found._mapping)


def list_schedules(engine: Engine) -> list[ScheduleRow]:
    """Every schedule, by organization id."""
    query = select(training_schedules).order_by(training_schedules.c.organization_id)
    with engine.connect() as conn:
        return [_row(r._mapping) for r in conn.execute(query)]


def write_schedule(
    conn: Connection, org_id: str, spec: Mapping[str, Any] | None, *, now: datetime
) -> tuple[dict[str, Any] | None, dict[str, Any] | None] | None:
    """Store a checked `trainingSchedule` (None removes it); returns (before, after) if it changed.

    A changed pattern, zone or enabled flag re-arms the schedule from `now`: slots that fell due
    before the edit (or while it was disabled) are not caught up.
    """
    existing = get_schedule(conn, org_id)
    before = spec_of(existing)
    after = None if spec is None else dict(spec)
    if before == after:
        return None
    c = training_schedules.c
    if after is None:
        conn.execute(training_schedules.delete().where(c.organization_id == org_id))
        return before, None
    cron = CronSchedule(after["pattern"], after["timezone"])
    values = dict(
        pattern=after["pattern"],
        timezone=after["timezone"],
        enabled=after["enabled"],
        next_run_at=cron.next_after(now) if after["enabled"] else None,
        settled_until=now,
        updated_at=now,
    )
    if existing is None:
        conn.execute(
            insert(training_schedules).values(organization_id=org_id, revision=1, **values)
        )
    else:
        conn.execute(
            update(training_schedules)
            .where(c.organization_id == org_id)
            .values(revision=c.revision + 1, **values)
        )
    return before, after


def set_schedule(
    engine: Engine, org_id: str, spec: Mapping[str, Any] | None, *, actor: str, now: datetime
) -> ScheduleRow | None:
    """Change an organization's schedule and the `trainingSchedule` in its config, audited."""
    check_org_id(org_id)
    with engine.begin() as conn:
        query = select(organizations.c.config).where(organizations.c.id == org_id)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        config = conn.execute(query).scalar()
        if config is None:
            raise OrgNotRegistered(org_id)
        change = write_schedule(conn, org_id, spec, now=now)
        if change is not None:
            doc = {k: v for k, v in config.items() if k != "trainingSchedule"}
            if spec is not None:
                doc["trainingSchedule"] = dict(spec)
            conn.execute(
                update(organizations)
                .where(organizations.c.id == org_id)
                .values(config=doc, updated_at=now)
            )
            record_change(conn, org_id, change, actor=actor, now=now)
        return get_schedule(conn, org_id)


def record_change(
    conn: Connection,
    org_id: str,
    change: tuple[dict[str, Any] | None, dict[str, Any] | None],
    *,
    actor: str,
    now: datetime,
) -> None:
    """Audit a schedule change: `schedule.created`, `schedule.changed` or `schedule.deleted`."""
    before, after = change
    event = "schedule.created" if before is None else "schedule.changed"
    if after is None:
        event = "schedule.deleted"
    row = get_schedule(conn, org_id)
    details = {
        "before": before,
        "after": after,
        "nextRunAt": iso_or_none(row.next_run_at) if row else None,
    }
    audit.record(conn, org_id, event, actor=actor, now=now, details=details)


def park(engine: Engine, row: ScheduleRow, *, reason: str, actor: str, now: datetime) -> bool:
    """Disable a stored schedule that cannot be evaluated (audited), unless it was edited since."""
    c = training_schedules.c
    with engine.begin() as conn:
        result = conn.execute(
            update(training_schedules)
            .where(c.organization_id == row.org_id, c.revision == row.revision)
            .values(enabled=False, next_run_at=None, revision=c.revision + 1, updated_at=now)
        )
        if result.rowcount != 1:
            return False
        config = conn.execute(
            select(organizations.c.config).where(organizations.c.id == row.org_id)
        ).scalar()
        if config is not None and config.get("trainingSchedule"):
            doc = dict(config)
            doc["trainingSchedule"] = {**config["trainingSchedule"], "enabled": False}
            conn.execute(
                update(organizations).where(organizations.c.id == row.org_id).values(config=doc)
            )
        details = {"reason": reason, "pattern": row.pattern, "timezone": row.timezone}
        audit.record(conn, row.org_id, "schedule.disabled", actor=actor, now=now, details=details)
    return True


def due(engine: Engine, now: datetime, limit: int) -> list[ScheduleRow]:
    """Schedules whose next slot is at or before `now`, earliest first (an index range scan)."""
    c = training_schedules.c
    query = (
        select(training_schedules)
        .where(c.next_run_at <= now)
        .order_by(c.next_run_at, c.organization_id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [_row(r._mapping) for r in conn.execute(query)]


def next_due_at(engine: Engine) -> datetime | None:
    """The earliest `next_run_at` of all schedules (one index lookup)."""
    with engine.connect() as conn:
        return conn.execute(select(func.min(training_schedules.c.next_run_at))).scalar()


def unarmed(engine: Engine) -> list[ScheduleRow]:
    """Enabled schedules without a next slot (written by a migration or by hand): beat arms them."""
    c = training_schedules.c
    query = select(training_schedules).where(c.enabled.is_(True), c.next_run_at.is_(None))
    with engine.connect() as conn:
        return [_row(r._mapping) for r in conn.execute(query)]


def arm(engine: Engine, row: ScheduleRow, next_run_at: datetime) -> bool:
    """Set the next slot of an unarmed schedule, unless it was edited meanwhile."""
    c = training_schedules.c
    with engine.begin() as conn:
        result = conn.execute(
            update(training_schedules)
            .where(c.organization_id == row.org_id, c.revision == row.revision)
            .values(next_run_at=next_run_at)
        )
    return result.rowcount == 1


def settle(
    engine: Engine,
    row: ScheduleRow,
    *,
    next_run_at: datetime | None,
    settled_until: datetime,
    skipped: Sequence[tuple[datetime, str]],
    run: PlannedRun | None,
    beat: str,
    now: datetime,
) -> Settled:
    """Record a schedule's due slots and move it to its next slot, all in one transaction.

    The schedule row moves only if it still has the revision and next slot `row` was read with,
    so an edit or another beat that got there first wins and this call records nothing. A slot
    that is already recorded is left as it is; a run is skipped if the organization has one
    queued or running.
    """
    c = training_schedules.c
    try:
        with engine.begin() as conn:
            moved = conn.execute(
                update(training_schedules)
                .where(
                    c.organization_id == row.org_id,
                    c.revision == row.revision,
                    c.next_run_at == row.next_run_at,
                )
                .values(next_run_at=next_run_at, settled_until=settled_until)
            )
            if moved.rowcount != 1:
                return Settled("lost")
            skips, planned = _unrecorded(conn, row.org_id, skipped, run)
            if planned is not None:
                active = conn.execute(
                    select(training_runs).where(
                        training_runs.c.organization_id == row.org_id,
                        training_runs.c.status.in_(ACTIVE_STATUSES),
                    )
                ).first()
                if active is not None:
                    reason = runs.active_run_message(row.org_id, active._mapping)
                    skips.append((planned.slot, reason))
                    planned = None
            _insert_slots(conn, row, skips, planned, beat=beat, now=now)
            return Settled("recorded", planned, tuple(skips))
    except IntegrityError:
        # A concurrent manual run or a second beat inserted first; the caller looks again.
        return Settled("conflict")


def _unrecorded(
    conn: Connection,
    org_id: str,
    skipped: Sequence[tuple[datetime, str]],
    run: PlannedRun | None,
) -> tuple[list[tuple[datetime, str]], PlannedRun | None]:
    """Drop the slots that some beat already recorded."""
    times = [slot for slot, _ in skipped] + ([run.slot] if run else [])
    if not times:
        return [], run
    s = schedule_slots.c
    recorded = set(
        conn.execute(
            select(s.scheduled_for).where(s.organization_id == org_id, s.scheduled_for.in_(times))
        ).scalars()
    )
    skips = [(slot, why) for slot, why in skipped if slot not in recorded]
    return skips, None if run is None or run.slot in recorded else run


def _insert_slots(
    conn: Connection,
    row: ScheduleRow,
    skips: Sequence[tuple[datetime, str]],
    planned: PlannedRun | None,
    *,
    beat: str,
    now: datetime,
) -> None:
    common = dict(
        organization_id=row.org_id,
        pattern=row.pattern,
        timezone=row.timezone,
        recorded_at=now,
        beat=beat,
    )
    if skips:
        conn.execute(
            insert(schedule_slots),
            [
                dict(common, scheduled_for=slot, outcome="skipped", run_id=None, reason=why)
                for slot, why in skips
            ],
        )
    if planned is not None:
        runs.insert_run(
            conn,
            run_id=planned.run_id,
            org_id=row.org_id,
            version=planned.version,
            config=planned.config,
            trigger="schedule",
            auto_deploy=planned.auto_deploy,
            actor=f"beat {beat}",
            now=now,
            schedule_slot=planned.slot,
        )
        conn.execute(
            insert(schedule_slots).values(
                **common,
                scheduled_for=planned.slot,
                outcome="submitted",
                run_id=planned.run_id,
                reason=planned.note,
            )
        )


def list_slots(
    engine: Engine, org_id: str | None = None, *, limit: int = 50
) -> list[ScheduleSlotRow]:
    """Recorded slots, newest first: when, what happened (run or skip) and why."""
    s = schedule_slots.c
    query = select(schedule_slots).order_by(s.scheduled_for.desc(), s.id.desc()).limit(limit)
    if org_id is not None:
        query = query.where(s.organization_id == org_id)
    with engine.connect() as conn:
        return [as_row(ScheduleSlotRow, r) for r in conn.execute(query)]


def latest_slots(engine: Engine) -> list[ScheduleSlotRow]:
    """Each organization's most recent recorded slot."""
    s = schedule_slots.c
    newest = (
        select(s.organization_id, func.max(s.scheduled_for).label("at"))
        .group_by(s.organization_id)
        .subquery()
    )
    query = select(schedule_slots).join(
        newest, (s.organization_id == newest.c.organization_id) & (s.scheduled_for == newest.c.at)
    )
    with engine.connect() as conn:
        return [as_row(ScheduleSlotRow, r) for r in conn.execute(query)]
