"""What the dashboard shows, computed from registry rows: health, runs, versions, the schedule.

Plain functions of rows and the clock, so a test checks the wording without a server.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from beat_schedules.cron import CronSchedule
from training_tasks.registry.dashboard import OrgOverview
from training_tasks.registry.rows import RunRow, ScheduleSlotRow, VersionRow
from training_tasks.registry.runs import STAGES
from training_tasks.registry.schedules import ScheduleRow

# The validation metrics the trend chart draws, in legend order (all are shares in [0, 1]).
TREND_METRICS = ("accuracy", "precision", "recall", "f1", "rocAuc")
NEXT_RUNS = 5


@dataclass(frozen=True)
class Health:
    """A one-word state with its colour class and a sentence that explains it."""

    label: str
    css: str
    detail: str


@dataclass(frozen=True)
class RunView:
    """One run as a table row."""

    run_id: str
    version: str
    status: str
    stage_reached: str
    duration: str
    trigger: str
    queued_at: str
    error: str | None


@dataclass(frozen=True)
class VersionView:
    """One model version as a table row."""

    version: str
    status: str
    deployed: bool
    created_at: str
    metrics: dict[str, float]
    failures: list[str]
    has_report: bool


@dataclass(frozen=True)
class ScheduleView:
    """The organization's schedule, its next slots and the slots a beat recorded lately."""

    pattern: str
    timezone: str
    enabled: bool
    next_runs: list[str]
    recent: list[tuple[str, str, str]]  # (scheduled for, outcome, run id or reason)


def health(deployed_version: str | None, run_status: str | None) -> Health:
    """The organization's state from its deployed version and its latest run's status."""
    serving = f"{deployed_version} keeps serving" if deployed_version else "no model serves"
    if run_status in ("queued", "running"):
        return Health("training", "busy", f"a run is {run_status}; {serving}")
    if run_status == "failed":
        return Health("failing", "bad", f"the latest run failed; {serving}")
    if run_status == "rejected":
        return Health("rejected", "warn", f"validation rejected the latest model; {serving}")
    if deployed_version is None:
        return Health("no model", "idle", "nothing is deployed yet")
    return Health("healthy", "good", f"{deployed_version} is deployed")


def overview_health(org: OrgOverview) -> Health:
    """The health of an overview row."""
    return health(org.deployed_version, org.run_status)


def when(at: datetime | None) -> str:
    """A UTC time to the second, as people read it; a dash when there is none."""
    return "—" if at is None else at.strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    """`1 h 02 min`, `3 min 05 s`, `12.4 s`; a dash for None."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def run_view(run: RunRow, now: datetime) -> RunView:
    """A run row for the table: how far it got and how long it took (so far)."""
    started = run["started_at"] or run["queued_at"]
    end = run["finished_at"] or (now if run["status"] == "running" else None)
    seconds = None if end is None else max(0.0, (end - started).total_seconds())
    shown = duration(seconds)
    if run["finished_at"] is None and seconds is not None:
        shown += " so far"
    return RunView(
        run_id=run["id"],
        version=run["version"],
        status=run["status"],
        stage_reached=stage_reached(run),
        duration=shown,
        trigger=run["trigger"],
        queued_at=when(run["queued_at"]),
        error=run["error"],
    )


def stage_reached(run: RunRow) -> str:
    """`validate (2/4 done)`: the stage the run was last in and how many stages finished."""
    done = min(run["stages_done"], len(STAGES))
    stage = run["stage"] or ("—" if run["status"] == "queued" else STAGES[max(done - 1, 0)])
    return f"{stage} ({done}/{len(STAGES)} done)"


def version_view(v: VersionRow, current: str | None, has_report: bool) -> VersionView:
    """A version row: its verdict's metrics and every reason it was rejected."""
    validation = v["validation"] or {}
    metrics = {
        name: float(value)
        for name, value in (validation.get("metrics") or {}).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    return VersionView(
        version=v["version"],
        status=v["status"],
        deployed=v["version"] == current,
        created_at=when(v["created_at"]),
        metrics=metrics,
        failures=[str(reason) for reason in validation.get("failures") or []],
        has_report=has_report,
    )


def schedule_view(
    row: ScheduleRow | None, slots: Iterable[ScheduleSlotRow], now: datetime
) -> ScheduleView | None:
    """The schedule with its next slots in its own time zone; None when there is none."""
    if row is None:
        return None
    cron = CronSchedule(row.pattern, row.timezone)
    upcoming = cron.preview(now, NEXT_RUNS) if row.enabled else []
    next_runs = [
        f"{slot.local:%Y-%m-%d %H:%M %Z} ({when(slot.at)})"
        + (f" — {slot.note}" if slot.note else "")
        for slot in upcoming
    ]
    recent = [
        (when(s["scheduled_for"]), str(s["outcome"]), s["run_id"] or s["reason"] or "")
        for s in slots
    ]
    return ScheduleView(row.pattern, row.timezone, row.enabled, next_runs, recent)


def age(at: datetime | None, now: datetime) -> str:
    """`3 min ago`; a dash when there is no time."""
    if at is None:
        return "—"
    seconds = max(0.0, (now - at).total_seconds())
    if seconds >= timedelta(days=2).total_seconds():
        return f"{int(seconds // 86400)} days ago"
    return f"{duration(seconds)} ago"
