"""`trainctl schedule` and `trainctl schedules`: per-organization cron schedules and their slots."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import click

from training_tasks.cli.common import _echo_json, _service

DST_POLICY = (
    "On a DST change: a local time that does not exist (clocks go forward) runs once at the "
    "first valid time after the gap; a local time that happens twice (clocks go back) runs "
    "once, at its first occurrence."
)


@click.command(epilog=DST_POLICY)
@click.argument("org_id")
@click.argument("pattern", required=False)
@click.option(
    "--timezone",
    "-z",
    metavar="ZONE",
    help="IANA time zone PATTERN is read in, such as America/New_York "
    "(default: the schedule's current zone; UTC for a new schedule).",
)
@click.option("--enable/--disable", default=None, help="Turn the schedule on or off; keep it.")
@click.option("--delete", is_flag=True, help="Remove the schedule.")
@click.option(
    "--preview",
    type=click.IntRange(1, 1000),
    metavar="N",
    help="List the next N runs in local time and UTC. With PATTERN or --timezone, preview "
    "that schedule without saving it.",
)
@click.option("--slots", default=10, show_default=True, metavar="N", help="Recorded slots to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def schedule(
    org_id: str,
    pattern: str | None,
    timezone: str | None,
    enable: bool | None,
    delete: bool,
    preview: int | None,
    slots: int,
    as_json: bool,
) -> None:
    """Set, change, disable, remove or preview the training schedule of ORG_ID.

    PATTERN is a five-field cron pattern (minute hour day-of-month month day-of-week, or
    @daily, @weekly, ...) read in the schedule's time zone. A running beat picks up a change
    within seconds. Without PATTERN or options, show the schedule and its recorded slots.

    \b
      trainctl schedule acme-corp "0 2 * * 0" --timezone America/New_York
      trainctl schedule acme-corp --disable
      trainctl schedule acme-corp --preview 10
      trainctl schedule acme-corp "30 2 * * *" --preview 5    (nothing saved)
    """
    svc = _service()
    changes: dict[str, Any] = {}
    if pattern is not None:
        changes["pattern"] = pattern
    if timezone is not None:
        changes["timezone"] = timezone
    if enable is not None:
        changes["enabled"] = enable
    if delete:
        if changes or preview:
            raise click.UsageError("--delete takes no PATTERN, --timezone, --enable or --preview")
        svc.delete_schedule(org_id, actor="trainctl")
        click.echo(f"removed the training schedule of {org_id}")
        return
    if preview is not None:
        if "enabled" in changes:
            raise click.UsageError(
                "--preview does not change the schedule; drop --enable/--disable"
            )
        items = svc.preview_schedule(org_id, preview, pattern=pattern, timezone=timezone)
        if as_json:
            _echo_json(items)
        else:
            print_preview(org_id, items, saved=not changes)
        return
    if changes:
        doc = svc.schedule_training(org_id, changes, actor="trainctl")
        _echo_json(doc) if as_json else print_schedule(doc, [])
        return
    doc = svc.get_schedule(org_id)
    recorded = svc.get_schedule_slots(org_id, slots)
    if as_json:
        _echo_json({"schedule": doc, "slots": recorded})
    elif doc is None:
        click.echo(
            f'{org_id} has no training schedule; set one with `trainctl schedule {org_id} "0 2 * * 0"`'
        )
    else:
        print_schedule(doc, recorded)


@click.command("schedules", epilog=DST_POLICY)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def schedules_command(as_json: bool) -> None:
    """List every organization's schedule, its next run and its last slot, and the beat."""
    svc = _service()
    rows = svc.list_schedules()
    try:
        beat = svc.beat_status()
    except Exception as exc:  # Redis down must not hide the schedules
        beat = {"error": str(exc)}
    if as_json:
        _echo_json({"schedules": rows, "beat": beat})
        return
    from rich.markup import escape
    from rich.table import Table

    from training_tasks.cli.views import console  # rich and the service: 0.5 s, per command

    if not rows:
        console.print(
            'no organization has a training schedule; set one with `trainctl schedule ORG "0 2 * * 0"`'
        )
        console.print(beat_line(beat))
        return
    table = Table(title="Training schedules")
    for name in (
        "organization",
        "pattern",
        "zone",
        "enabled",
        "next run (local)",
        "next run (UTC)",
        "last slot",
    ):
        table.add_column(name, overflow="fold")
    for row in rows:
        last = row["lastSlot"]
        table.add_row(
            row["organizationId"],
            escape(row["pattern"]),
            row["timezone"],
            "yes" if row["enabled"] else "no",
            row["nextRunLocal"] or "-",
            row["nextRunAt"] or "-",
            f"{last['scheduledFor']} {last['outcome']}" if last else "-",
        )
    console.print(table)
    console.print(beat_line(beat))


def beat_line(beat: dict[str, Any] | None) -> str:
    """One line on the dispatching beat, or what to do when there is none."""
    if beat is None:
        return "beat: none has reported lately; start one with `make beat` (schedules do not fire)"
    if "error" in beat:
        return f"beat: unknown, Redis did not answer ({beat['error']})"
    age_s = time.time() - float(beat.get("reportedAt", 0))
    return (
        f"beat: {beat['leader']} is dispatching; last tick {age_s:.0f} s ago "
        f"(its clock {beat['tickAt']}), next slot due {beat.get('nextDueAt') or '-'}"
    )


def print_schedule(doc: dict[str, Any], recorded: Sequence[dict[str, Any]]) -> None:
    """A schedule and its most recent slots."""
    from rich.markup import escape
    from rich.table import Table

    from training_tasks.cli.views import console  # rich and the service: 0.5 s, per command

    state = "enabled" if doc["enabled"] else "disabled"
    console.print(
        f"[bold]{doc['organizationId']}[/]: {escape(doc['pattern'])} in {doc['timezone']}, {state}"
    )
    console.print(f"next run: {doc['nextRunAt'] or '- (disabled)'}")
    if not recorded:
        return
    table = Table(title="Recorded slots")
    for name in ("scheduled (local)", "UTC", "outcome", "run", "reason"):
        table.add_column(name, overflow="fold")
    for slot in recorded:
        table.add_row(
            slot["scheduledLocal"],
            slot["scheduledFor"],
            slot["outcome"],
            slot["runId"] or "-",
            escape(slot["reason"] or ""),
        )
    console.print(table)


def print_preview(org_id: str, items: Sequence[dict[str, Any]], *, saved: bool) -> None:
    """The next runs, with DST notes."""
    from rich.markup import escape
    from rich.table import Table

    from training_tasks.cli.views import console  # rich and the service: 0.5 s, per command

    zone = items[0]["zone"] if items else "?"
    title = f"Next runs of {org_id} ({zone})" + ("" if saved else ", not saved")
    table = Table(title=title)
    for name in ("#", "local time", "UTC", "DST"):
        table.add_column(name, overflow="fold")
    for i, item in enumerate(items, 1):
        table.add_row(str(i), item["local"], item["at"], escape(item["note"] or ""))
    console.print(table)
