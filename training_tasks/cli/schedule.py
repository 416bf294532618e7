"""`trainctl schedule` and `trainctl schedules`: per-organization cron schedules and their slots."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
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
@click.option(
    "--slots",
    default=10,
    show_default=True,
    type=click.IntRange(1, 1000),
    metavar="N",
    help="Recorded slots to show.",
)
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
    from training_tasks.cli.tables import is_plain, show
    from training_tasks.cli.views import console  # rich and the service: 0.5 s, per command

    if is_plain(console):  # records on stdout; the remark on the beat goes to stderr
        show(console, "", _schedule_columns(), rows)
        click.echo(beat_line(beat), err=True)
        return
    if rows:
        show(console, "Training schedules", _schedule_columns(), rows)
    else:
        console.print(
            'no organization has a training schedule; set one with `trainctl schedule ORG "0 2 * * 0"`'
        )
    console.print(beat_line(beat), markup=False)


def _schedule_columns() -> list[Any]:
    """The columns of `trainctl schedules`: compact times on a terminal, ISO 8601 when piped."""
    from training_tasks.cli.tables import Column, minute

    def last_slot(row: Mapping[str, Any], when: Any) -> str:
        last = row["lastSlot"]
        return f"{when(last['scheduledFor'])} {last['outcome']}" if last else "-"

    return [
        Column("organization", "organizationId", lambda r: r["organizationId"]),
        Column("pattern", "pattern", lambda r: r["pattern"]),
        Column("timezone", "timezone", lambda r: r["timezone"]),
        Column("on", "enabled", lambda r: "yes" if r["enabled"] else "no", _true_false),
        Column(
            "next run (local)",
            "nextRunLocal",
            lambda r: minute(r["nextRunLocal"]),
            _iso("nextRunLocal"),
        ),
        Column("next run (UTC)", "nextRunAt", lambda r: minute(r["nextRunAt"]), _iso("nextRunAt")),
        Column(
            "last slot (UTC)",
            "lastSlot",
            lambda r: last_slot(r, minute),
            lambda r: last_slot(r, str),
        ),
    ]


def _true_false(row: Mapping[str, Any]) -> str:
    return "true" if row["enabled"] else "false"


def _iso(key: str) -> Any:
    return lambda row: row[key] or "-"


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
    from training_tasks.cli.tables import Column, minute, print_fields, short_run_id, show
    from training_tasks.cli.views import console  # rich and the service: 0.5 s, per command

    state = "enabled" if doc["enabled"] else "disabled"
    console.print(
        f"{doc['organizationId']}: {doc['pattern']} in {doc['timezone']}, {state}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    print_fields(console, [("next run", doc["nextRunAt"] or "- (disabled)")])
    if not recorded:
        return
    columns = [
        Column(
            "scheduled (local)",
            "scheduledLocal",
            lambda s: minute(s["scheduledLocal"]),
            _iso("scheduledLocal"),
            True,
        ),
        Column(
            "UTC", "scheduledFor", lambda s: minute(s["scheduledFor"]), _iso("scheduledFor"), True
        ),
        Column("outcome", "outcome", lambda s: s["outcome"]),
        Column("run", "runId", lambda s: short_run_id(s["runId"]), _iso("runId"), True),
        Column("reason", "reason", lambda s: s["reason"] or ""),
    ]
    show(console, "Recorded slots", columns, recorded)


def print_preview(org_id: str, items: Sequence[dict[str, Any]], *, saved: bool) -> None:
    """The next runs, with DST notes."""
    from training_tasks.cli.tables import Column, minute, show
    from training_tasks.cli.views import console  # rich and the service: 0.5 s, per command

    zone = items[0]["timezone"] if items else "?"
    title = f"Next runs of {org_id} ({zone})" + ("" if saved else ", not saved")
    columns = [
        Column("#", "n", lambda i: str(i["n"]), justify="right"),
        Column(
            "local time",
            "scheduledLocal",
            lambda i: minute(i["scheduledLocal"]),
            _iso("scheduledLocal"),
            True,
        ),
        Column(
            "UTC", "scheduledFor", lambda i: minute(i["scheduledFor"]), _iso("scheduledFor"), True
        ),
        Column("DST", "note", lambda i: i["note"] or ""),
    ]
    show(console, title, columns, [{**item, "n": n} for n, item in enumerate(items, 1)])
