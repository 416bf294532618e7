"""The schedule part of the Python API: set, show, preview and list training schedules."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from beat_schedules.cron import CronSchedule
from training_tasks import fields as f
from training_tasks.config.org import SCHEDULE_KEYS, parse_schedule
from training_tasks.errors import ConfigError, NotFoundError
from training_tasks.fields import iso
from training_tasks.protocol.beat_status import read_status
from training_tasks.protocol.ids import check_org_id
from training_tasks.registry import orgs, schedules
from training_tasks.registry.rows import ScheduleSlotRow
from training_tasks.runtime import Runtime

MAX_PREVIEW = 1000


class ScheduleApi:
    """Mixed into TrainingService; needs `self.rt`."""

    rt: Runtime

    def schedule_training(
        self, org_id: str, schedule: Mapping[str, Any], *, actor: str = "api"
    ) -> dict[str, Any]:
        """Create or change an organization's schedule (`pattern`, `timezone`, `enabled`).

        Keys left out keep their current value (a new schedule defaults to UTC, enabled). A bad
        pattern or zone, or a pattern that never fires, raises ConfigError and changes nothing.
        Takes effect on a running beat within one beat interval.
        """
        check_org_id(org_id)
        given = f.require_mapping(schedule, "trainingSchedule")
        f.reject_unknown(given, SCHEDULE_KEYS, "trainingSchedule")
        current = schedules.spec_of(schedules.get_schedule(self.rt.engine, org_id))
        if current is None and "pattern" not in given:
            orgs.get_org_row(self.rt.engine, org_id)  # an unknown org is the better error
            raise ConfigError(
                "trainingSchedule.pattern",
                f"is required: organization {org_id} has no schedule yet (for example '0 2 * * 0')",
            )
        spec = parse_schedule({**(current or {}), **given})
        row = schedules.set_schedule(self.rt.engine, org_id, spec, actor=actor, now=self.rt.now())
        assert row is not None
        return row.public()

    def delete_schedule(self, org_id: str, *, actor: str = "api") -> None:
        """Remove an organization's schedule; beat stops firing it within one beat interval."""
        if schedules.get_schedule(self.rt.engine, check_org_id(org_id)) is None:
            orgs.get_org_row(self.rt.engine, org_id)
            raise NotFoundError(
                f"organization {org_id} has no training schedule; "
                f'set one with `trainctl schedule {org_id} "0 2 * * 0"`'
            )
        schedules.set_schedule(self.rt.engine, org_id, None, actor=actor, now=self.rt.now())

    def get_schedule(self, org_id: str) -> dict[str, Any] | None:
        """The organization's schedule with its next run, or None if it has none."""
        row = schedules.get_schedule(self.rt.engine, check_org_id(org_id))
        if row is None:
            orgs.get_org_row(self.rt.engine, org_id)
            return None
        return row.public()

    def list_schedules(self) -> list[dict[str, Any]]:
        """Every organization's schedule with its next run (local and UTC) and its last slot."""
        last = {}
        for slot in schedules.latest_slots(self.rt.engine):
            last[slot["organization_id"]] = slot_summary(slot)
        listed = []
        for row in schedules.list_schedules(self.rt.engine):
            doc = row.public()
            doc["nextRunLocal"] = _local(row.next_run_at, row.cron)
            doc["lastSlot"] = last.get(row.org_id)
            listed.append(doc)
        return listed

    def preview_schedule(
        self,
        org_id: str | None = None,
        count: int = 10,
        *,
        pattern: str | None = None,
        timezone: str | None = None,
        after: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """The next `count` runs of a stored schedule, or of `pattern`/`timezone` if given.

        Each item has `scheduledFor` (UTC), `scheduledLocal`, `timezone` and `note`, which explains
        a slot on a DST change (a local time that does not exist or happens twice) and what the
        service does. The keys are those of a recorded slot.
        """
        f.integer(count, "count", 1, MAX_PREVIEW)
        stored = None
        if org_id is not None:
            stored = schedules.get_schedule(self.rt.engine, check_org_id(org_id))
            if stored is None and pattern is None:
                orgs.get_org_row(self.rt.engine, org_id)
                raise NotFoundError(
                    f"organization {org_id} has no training schedule; give a pattern to preview"
                )
        if pattern is None and stored is None:
            raise ConfigError("pattern", "give a pattern or an organization with a schedule")
        cron = CronSchedule.parse(
            pattern if pattern is not None else stored.pattern,  # type: ignore[union-attr]
            timezone or (stored.timezone if stored else "UTC"),
        )
        slots = cron.preview(after or self.rt.now(), count)
        return [
            {
                "scheduledFor": iso(s.at),
                "scheduledLocal": s.local.isoformat(),
                "timezone": cron.timezone,
                "note": s.note,
            }
            for s in slots
        ]

    def get_schedule_slots(self, org_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The organization's recorded slots, newest first: the run each started, or why skipped."""
        orgs.get_org_row(self.rt.engine, check_org_id(org_id))
        return [slot_summary(s) for s in schedules.list_slots(self.rt.engine, org_id, limit=limit)]

    def beat_status(self) -> dict[str, Any] | None:
        """The dispatching beat's last heartbeat, or None if no beat reported lately."""
        return read_status(self.rt.redis)


def slot_summary(slot: ScheduleSlotRow) -> dict[str, Any]:
    """A recorded slot in camelCase."""
    cron = CronSchedule(slot["pattern"], slot["timezone"])
    return {
        "organizationId": slot["organization_id"],
        "scheduledFor": iso(slot["scheduled_for"]),
        "scheduledLocal": _local(slot["scheduled_for"], cron),
        "outcome": slot["outcome"],
        "runId": slot["run_id"],
        "reason": slot["reason"],
        "recordedAt": iso(slot["recorded_at"]),
        "beat": slot["beat"],
    }


def _local(at: datetime | None, cron: CronSchedule) -> str | None:
    return None if at is None else at.astimezone(cron.zone).isoformat()
