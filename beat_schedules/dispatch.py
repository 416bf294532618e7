"""Firing due schedules: which slots run, which are skipped and why, and sending the runs.

One tick reads the schedules whose `next_run_at` has passed (an index range scan, earliest
first, at most `batch` of them), settles each in its own transaction and sends the runs it
created to the workers. Nothing here knows about Celery Beat or the leader lock.

Missed slots: when a schedule is found with more than one slot at or before now (beat was down,
or no beat held the lock), the latest of them runs once and the earlier ones are recorded as
skipped (`SCHEDULE_MISSED_SLOTS=latest`, the default). With `skip`, a slot later than
`SCHEDULE_GRACE_S` is recorded as skipped too, and the schedule waits for its next slot.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from beat_schedules.cron import CronSchedule
from training_tasks.errors import ConfigError, TrainingServiceError
from training_tasks.fields import iso
from training_tasks.pipeline.submit import Enqueue, latest_data_reader, send_run
from training_tasks.protocol.ids import new_run_id, new_version_id
from training_tasks.registry import orgs, schedules
from training_tasks.registry.schedules import PlannedRun, ScheduleRow
from training_tasks.runtime import Runtime

log = logging.getLogger(__name__)

MAX_RECORDED_MISSED = 1000
# Where to look for the latest slot when more than MAX_RECORDED_MISSED were missed.
LATEST_SLOT_WINDOWS = (timedelta(days=1), timedelta(days=31), timedelta(days=400))
SETTLE_ATTEMPTS = 3


@dataclass(frozen=True)
class Policy:
    """How beat treats slots it finds late (see the module docstring)."""

    missed: str = "latest"
    grace_s: float = 300.0
    batch: int = 100


@dataclass
class TickReport:
    """What one dispatch pass did."""

    submitted: int = 0
    skipped: int = 0
    lost: int = 0
    parked: int = 0  # schedules disabled because their stored pattern cannot be evaluated
    failed: int = 0
    more: bool = False


class Dispatcher:
    """Settles due schedule slots against the database and sends the runs they start."""

    def __init__(self, rt: Runtime, enqueue: Enqueue, *, beat_id: str, policy: Policy) -> None:
        self.rt = rt
        self.enqueue = enqueue
        self.beat_id = beat_id
        self.policy = policy

    def arm(self, now: datetime) -> int:
        """Give enabled schedules that have no next slot one (after a migration or a manual edit)."""
        armed = 0
        for row in schedules.unarmed(self.rt.engine):
            try:
                next_run_at = row.cron.next_after(row.settled_until or now)
            except ConfigError as exc:
                self._park(row, exc, now)
                continue
            if schedules.arm(self.rt.engine, row, next_run_at):
                armed += 1
        return armed

    def next_due_at(self) -> datetime | None:
        return schedules.next_due_at(self.rt.engine)

    def dispatch_due(self, now: datetime) -> TickReport:
        """Settle up to `batch` due schedules; `more` says that others are waiting."""
        report = TickReport()
        due = schedules.due(self.rt.engine, now, self.policy.batch)
        for row in due:
            try:
                self._settle(row, now, report)
            except ConfigError as exc:  # a stored pattern that today's checks refuse
                self._park(row, exc, now)
                report.parked += 1
            except Exception:  # one broken schedule must not hold up the others
                report.failed += 1
                log.exception("could not settle the schedule of %s; beat tries again", row.org_id)
        settled = report.submitted + report.skipped + report.lost + report.parked
        report.more = len(due) == self.policy.batch and settled > 0
        return report

    def _park(self, row: ScheduleRow, exc: ConfigError, now: datetime) -> None:
        reason = f"beat cannot evaluate the stored schedule ({exc})"
        if schedules.park(
            self.rt.engine, row, reason=reason, actor=f"beat {self.beat_id}", now=now
        ):
            log.error(
                "%s: %s; the schedule is disabled, fix it with `trainctl schedule %s PATTERN "
                "--enable`",
                row.org_id,
                reason,
                row.org_id,
            )

    def _settle(self, row: ScheduleRow, now: datetime, report: TickReport) -> None:
        for _ in range(SETTLE_ATTEMPTS):
            run_slot, skipped, note = self._plan(row, now)
            planned = self._planned_run(row, run_slot, now, skipped, note) if run_slot else None
            latest = run_slot or skipped[-1][0]
            result = schedules.settle(
                self.rt.engine,
                row,
                next_run_at=row.cron.next_after(max(latest, now)),
                settled_until=latest,
                skipped=skipped,
                run=planned,
                beat=self.beat_id,
                now=now,
            )
            if result.outcome == "conflict":
                continue
            if result.outcome == "lost":
                report.lost += 1
                log.info("schedule of %s changed or was settled elsewhere; leaving it", row.org_id)
                return
            self._report(row, result, note, report)
            return
        log.error(
            "could not settle the schedule of %s after %d attempts; it stays due and beat tries "
            "again next tick",
            row.org_id,
            SETTLE_ATTEMPTS,
        )

    def _plan(
        self, row: ScheduleRow, now: datetime
    ) -> tuple[datetime | None, list[tuple[datetime, str]], str | None]:
        """The slot to run (if any), the slots to record as skipped, and a catch-up note."""
        assert row.next_run_at is not None
        cron = row.cron
        slots = [row.next_run_at, *cron.slots(row.next_run_at, now, limit=MAX_RECORDED_MISSED)]
        note = None
        if len(slots) > MAX_RECORDED_MISSED:
            recent = _latest_slots(cron, now)
            note = (
                f"more than {MAX_RECORDED_MISSED} slots were missed since {iso(row.next_run_at)}; "
                f"only the last {len(recent) - 1} before this one are recorded"
            )
            slots = recent
        latest, missed = slots[-1], slots[:-1]
        why = (
            f"missed: no beat was dispatching at this time (beat caught up at {iso(now)}); "
            f"SCHEDULE_MISSED_SLOTS={self.policy.missed} "
        )
        skipped = [
            (slot, why + f"runs only the latest missed slot, {iso(latest)}")
            if self.policy.missed == "latest"
            else (slot, why + "skips late slots")
            for slot in missed
        ]
        late_s = (now - latest).total_seconds()
        if self.policy.missed == "skip" and late_s > self.policy.grace_s:
            skipped.append((latest, why + f"skips slots later than {self.policy.grace_s:g} s"))
            return None, skipped, note
        if missed and note is None:
            note = f"catch-up: {len(missed)} missed slot(s) since {iso(missed[0])} are skipped"
        return latest, skipped, note

    def _planned_run(
        self,
        row: ScheduleRow,
        slot: datetime,
        now: datetime,
        skipped: list[tuple[datetime, str]],
        note: str | None,
    ) -> PlannedRun | None:
        """The run of `slot`: the org's mlModelConfig, its window ending at the slot or newest row."""
        try:
            org = orgs.get_org(self.rt.engine, row.org_id)
            config = org.training_config(None, slot, latest_data=latest_data_reader(org))
        except TrainingServiceError as exc:
            skipped.append((slot, f"the organization's config cannot start a run ({exc})"))
            return None
        return PlannedRun(
            slot=slot,
            run_id=new_run_id(),
            version=new_version_id(now),
            config=config.to_wire(),
            auto_deploy=org.auto_deploy,
            note=note,
        )

    def _report(
        self, row: ScheduleRow, result: schedules.Settled, note: str | None, report: TickReport
    ) -> None:
        for slot, why in result.skipped:
            report.skipped += 1
            log.info("%s: slot %s skipped (%s)", row.org_id, _when(row.cron, slot), why)
        if result.run is None:
            return
        run = result.run
        report.submitted += 1
        log.info(
            "%s: slot %s starts run %s as version %s%s",
            row.org_id,
            _when(row.cron, run.slot),
            run.run_id,
            run.version,
            f" ({note})" if note else "",
        )
        try:
            send_run(
                self.rt,
                run.run_id,
                row.org_id,
                run.auto_deploy,
                enqueue=self.enqueue,
                actor=f"beat {self.beat_id}",
            )
        except TrainingServiceError as exc:
            log.error("%s: %s", row.org_id, exc)


def _latest_slots(cron: CronSchedule, now: datetime) -> list[datetime]:
    """Up to MAX_RECORDED_MISSED + 1 of the latest slots at or before `now`."""
    for window in LATEST_SLOT_WINDOWS:
        found = cron.slots(now - window, now, limit=10 * MAX_RECORDED_MISSED)
        if found:
            return found[-(MAX_RECORDED_MISSED + 1) :]
    return cron.slots(now - timedelta(days=3660), now, limit=100_000)[-1:]


def _when(cron: CronSchedule, slot: datetime) -> str:
    local = slot.astimezone(cron.zone)
    return f"{local:%Y-%m-%d %H:%M %Z} ({iso(slot)})"
