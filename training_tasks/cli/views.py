"""How `trainctl` shows things: live progress of runs, the training log, versions, a run's
outcome. On a terminal: tables fitted to its width; piped: plain lines with full values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape

from training_tasks.cli.progress import follow_runs, progress_console
from training_tasks.cli.tables import (
    Column,
    Row,
    clip,
    duration,
    is_plain,
    minute,
    number,
    print_fields,
    short_version,
    show,
    size,
    table,
)

console = Console()
# Piped or redirected, a line is never wrapped: grep and scripts see each record whole.
console.soft_wrap = is_plain(console)
_fmt = number
__all__ = ["console", "follow_runs", "print_deployed", "print_result", "progress_console"]


def print_result(result: dict[str, Any], out: Console | None = None) -> None:
    """One run's outcome, in words: `key: value` lines with full ids and paths."""
    out = out or console
    style = "green" if result["success"] else "red"
    out.print(
        f"[{style}]{escape(result['organizationId'])} run {result['runId']}: {result['status']}[/]",
        soft_wrap=True,
    )
    metrics = result.get("metrics") or {}
    keys = ("accuracy", "precision", "recall", "f1", "rocAuc", "prAuc")
    fields: list[tuple[str, Any]] = [("version", result["version"])]
    if result.get("modelPath"):
        fields.append(("model", result["modelPath"]))
    fields += [(k, number(metrics[k])) for k in keys if k in metrics]
    if metrics.get("eventsTotal") is not None:
        fields.append(("events", _event_line(metrics)))
    if result.get("error"):
        fields.append(("error", result["error"]))
    print_fields(out, fields, indent="  ")


def print_deployed(results: Sequence[dict[str, Any]], store_base: str) -> None:
    """What was deployed: version, decision threshold, accuracy, precision and recall (with their
    95% intervals), AUC, size, latency. A table on a terminal; piped, tab-separated full values."""

    def metric(name: str) -> Any:
        return lambda r: (r.get("metrics") or {}).get(name)

    columns = [
        Column("organization", "organizationId", lambda r: r["organizationId"]),
        Column("status", "status", lambda r: r["status"]),
        Column("version", "version", lambda r: short_version(r["version"]), r_version, True),
        Column("threshold", "decisionThreshold", lambda r: number(metric("decisionThreshold")(r))),
        Column("accuracy", "accuracy", lambda r: number(metric("accuracy")(r))),
        Column("precision (95% CI)", "precision", lambda r: _with_interval(_m(r), "precision")),
        Column("recall (95% CI)", "recall", lambda r: _with_interval(_m(r), "recall")),
        Column("AUC", "rocAuc", lambda r: number(metric("rocAuc")(r))),
        *EVENT_COLUMNS,
        Column("size", "modelSizeBytes", _model_size),
        Column("p50 latency", "singleRowP50Ms", _latency),
    ]
    title = f"Deployed models (files under {store_base})"
    # Narrow terminals lose the model's size and latency first: trainctl versions has both.
    droppable = ("modelSizeBytes", "singleRowP50Ms", "accuracy")
    show_fitted(console, title, columns, results, droppable)


def r_version(row: Row) -> str:
    """The whole version id, for piped output."""
    return str(row["version"])


def _model_size(run: Row) -> str:
    return size((run.get("metrics") or {}).get("modelSizeBytes"))


def _latency(run: Row) -> str:
    latency = ((run.get("metrics") or {}).get("latency") or {}).get("singleRowP50Ms")
    return f"{latency:.2f} ms" if latency else "-"


def _m(run: Row) -> dict[str, Any]:
    return dict(run.get("metrics") or {})


def _with_interval(metrics: dict[str, Any], name: str) -> str:
    """`0.912 (0.87-0.94)`: the value and its 95% interval, when validation recorded one."""
    interval = (metrics.get("intervals") or {}).get(name) or {}
    low, high = interval.get("low"), interval.get("high")
    if low is None or high is None:
        return number(metrics.get(name))
    return f"{number(metrics.get(name))} ({low:.2f}-{high:.2f})"


def print_status(doc: dict[str, Any], out: Console | None = None) -> None:
    """The organization's deployment, its replicas and its latest run, as `key: value` lines."""
    out = out or console
    out.print(f"[bold]{escape(doc['organizationId'])}[/]", soft_wrap=True)
    fields = [
        *_deployment_fields(doc),
        *_replica_fields(doc),
        *_latest_run_fields(doc),
    ]
    print_fields(out, fields, indent="  ")


def _deployment_fields(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    deployed = doc["deployedVersion"] or "(none)"
    return [
        ("deployed version", f"{deployed} (sequence {doc['deploySequence']})"),
        ("previous version", doc["previousVersion"] or "(none)"),
    ]


def _replica_fields(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    replicas = doc.get("replicas")
    if replicas is None:
        return [("replicas", "unknown: Redis did not answer")]
    if not replicas:
        return [("replicas", "none reporting")]
    deployed, fields = doc["deployedVersion"], []
    for replica_id, entry in sorted(replicas.items()):
        mark = "confirmed" if entry.get("version") == deployed else "still on"
        where = f"{entry.get('host', '?')} pid {entry.get('pid', '?')}"
        fields.append((f"replica {replica_id}", f"{mark} {entry.get('version')} ({where})"))
    return fields


def _latest_run_fields(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    run = doc.get("latestRun")
    if run is None:
        return [("latest run", "none yet")]
    stage = (run.get("progress") or {}).get("stage") or run.get("stage")
    fields: list[tuple[str, Any]] = [
        ("latest run", f"{run['runId']} {run['status']} (stage {stage})"),
        ("version", run["version"]),
        ("queued at", run["queuedAt"]),
        ("finished at", run["finishedAt"]),
    ]
    if run.get("error"):
        fields.append(("error", run["error"]))
    return fields


def print_validation(report: dict[str, Any], out: Console | None = None) -> None:
    """A validation verdict: the model, the holdout, the metrics and every failed check."""
    out = out or console
    passed = report["passed"]
    verdict = "[green]passed[/]" if passed else "[red]rejected[/]"
    out.print(
        f"[bold]{escape(report['organizationId'])}[/] version {report['version']}: {verdict}",
        soft_wrap=True,
    )
    # Paths stay on one line, so they can be copied and grepped.
    out.print(f"  model    {escape(report['modelPath'])}", soft_wrap=True)
    out.print(
        f"  holdout  {escape(report['holdoutPath'])} ({report['rows']:,} rows, run "
        f"{report['holdoutRunId']} version {report['holdoutVersion']})",
        soft_wrap=True,
    )
    metrics = {"intervals": report.get("intervals"), **(report.get("metrics") or {})}
    out.print(f"  decides at threshold {number(report.get('decisionThreshold'))}")
    keys = ("accuracy", "precision", "recall", "f1")
    out.print("  " + "  ".join(f"{k} {_with_interval(metrics, k)}" for k in keys))
    out.print("  " + "  ".join(f"{k} {number(metrics.get(k))}" for k in ("rocAuc", "prAuc")))
    if metrics.get("eventsTotal") is not None:
        out.print(f"  {_event_line(metrics)}")
    for warning in report.get("warnings") or []:  # a gate inside its metric's 95% interval
        out.print(f"  [yellow]! {escape(warning)}[/]")
    if passed:
        out.print(f"  all {len(report['checks'])} checks passed")
        return
    out.print("  failed checks:")
    for failure in report["failures"]:
        out.print(f"  [red]- {escape(failure)}[/]")


def print_removals(
    removed: Sequence[dict[str, Any]], *, dry_run: bool, out: Console | None = None
) -> None:
    """What garbage collection removed (or, in a dry run, would remove), one version per block."""
    out = out or console
    if not removed:
        out.print("nothing to remove: every version is kept by the retention rule")
        return
    verb = "would remove" if dry_run else "removed"
    for item in removed:
        was = " (files left from an earlier removal)" if item["status"] == "removed" else ""
        out.print(
            f"{verb} {escape(item['organizationId'])} {item['version']} ({item['status']}){was}",
            soft_wrap=True,
        )
        for path in item["paths"]:
            out.print(f"  {escape(path)}", soft_wrap=True)
    if dry_run:
        out.print(f"dry run: {len(removed)} version(s), nothing changed")


def print_history(org_id: str, runs: Sequence[dict[str, Any]], out: Console | None = None) -> None:
    """The training log: a table of runs and their errors, or one full line per run when piped."""
    out = out or console
    if is_plain(out):
        show(out, "", HISTORY_FIELDS, runs)
        return
    if not runs:
        out.print(f"{org_id} has no training run yet; start one with `trainctl train {org_id}`")
        return
    title = f"Training log of {org_id}, newest first (times in UTC)"
    show_fitted(out, title, HISTORY_COLUMNS, runs, ("trigger", "accuracy", "took", "rocAuc"))
    _notes(out, "Errors", [(r["version"], r.get("error")) for r in runs if r.get("error")])
    out.print(SHORT_IDS_NOTE, style="dim")


def print_versions(org_id: str, rows: Sequence[dict[str, Any]], out: Console | None = None) -> None:
    """Model versions with their validation verdict; the deployed one is marked."""
    out = out or console
    if is_plain(out):
        show(out, "", VERSION_FIELDS, rows)
        return
    if not rows:
        out.print(f"{org_id} has no model version yet; train one with `trainctl train {org_id}`")
        return
    title = f"Model versions of {org_id}, newest first (* deployed)"
    droppable = ("sizeBytes", "accuracy", "status", "precision", "rocAuc")  # "*" marks deployed
    show_fitted(out, title, VERSION_COLUMNS, rows, droppable)
    notes = [(v["version"], "; ".join(v["validationFailures"])) for v in rows]
    _notes(out, "Why rejected", [(version, text) for version, text in notes if text])
    out.print(SHORT_IDS_NOTE, style="dim")


def show_fitted(
    out: Console,
    title: str,
    columns: Sequence[Column],
    rows: Sequence[Row],
    droppable: Sequence[str] = (),
) -> None:
    """`show`, where on a terminal the event columns appear only when a row has event metrics,
    and the `droppable` columns (keys, least wanted first) go until the table fits its width;
    piped, every column is printed, so the fields stay the same for scripts."""
    if is_plain(out):
        show(out, title, columns, rows)
        return
    shown = [
        column
        for column in columns
        if column.key not in EVENT_KEYS or any(column.cell(row) != "-" for row in rows)
    ]
    unbounded = out.options.update(max_width=UNBOUNDED_WIDTH)
    for key in droppable:
        if out.measure(table(title, shown, rows), options=unbounded).maximum <= out.width:
            break
        shown = [column for column in shown if column.key != key]
    show(out, title, shown, rows)
    notes = [EVENT_NOTES[column.key] for column in shown if column.key in EVENT_NOTES]
    if notes:
        out.print("; ".join(notes), style="dim")


def _caught(metrics: Row) -> str:
    """`11/12`: holdout failures with an alarm in their horizon, of all holdout failures."""
    caught, total = metrics.get("eventsCaught"), metrics.get("eventsTotal")
    return "-" if caught is None or total is None else f"{caught}/{total}"


def _event_line(metrics: Row) -> str:
    """`events caught 11 of 12, median lead 5.5 h, 0.042 false alarms per asset-day`."""
    lead = metrics.get("medianLeadTimeH")
    return (
        f"events caught {metrics.get('eventsCaught')} of {metrics.get('eventsTotal')}, median "
        f"lead {'-' if lead is None else f'{lead:.1f} h'}, "
        f"{number(metrics.get('falseAlarmsPerAssetDay'))} false alarms per asset-day"
    )


def _lead_h(metrics: Row) -> str:
    hours = metrics.get("medianLeadTimeH")
    return "-" if hours is None else f"{hours:.1f}"


EVENT_COLUMNS = [
    Column("caught", "eventsCaught", lambda r: _caught(_m(r)), justify="right"),
    Column("lead h", "medianLeadTimeH", lambda r: _lead_h(_m(r)), justify="right"),
    Column(
        "FA/day",
        "falseAlarmsPerAssetDay",
        lambda r: number(_m(r).get("falseAlarmsPerAssetDay")),
        justify="right",
    ),
]
UNBOUNDED_WIDTH = 10_000  # measures a table's natural width, before it would wrap
EVENT_KEYS = frozenset(column.key for column in EVENT_COLUMNS)
EVENT_NOTES = {
    "eventsCaught": "caught: holdout failures with an alarm in their horizon, of all",
    "medianLeadTimeH": "lead h: median hours from the first alarm to the failure",
    "falseAlarmsPerAssetDay": "FA/day: alarms no failure followed (one per horizon), per asset-day",
}
EVENT_FIELDS = (
    "eventRecall",
    "eventsCaught",
    "eventsTotal",
    "medianLeadTimeH",
    "falseAlarmsPerAssetDay",
)


def _field(key: str) -> Column:
    """A piped column: the JSON key and its full value."""
    return Column(key, key, lambda row: "-" if row.get(key) is None else str(row[key]))


def _metric_field(key: str) -> Column:
    return Column(key, key, lambda row: number((row.get("metrics") or {}).get(key), 4))


HISTORY_COLUMNS = [
    Column("version", "version", lambda r: short_version(r["version"]), no_wrap=True),
    Column("started", "startedAt", lambda r: minute(r["startedAt"] or r["queuedAt"]), no_wrap=True),
    Column(
        "took",
        "took",
        lambda r: duration(r["startedAt"], r["finishedAt"]),
        justify="right",
        no_wrap=True,
    ),
    Column("trigger", "trigger", lambda r: r["trigger"]),
    Column("status", "status", lambda r: _status_and_stage(r)),
    Column("acc.", "accuracy", lambda r: number(_m(r).get("accuracy")), justify="right"),
    Column("recall", "recall", lambda r: number(_m(r).get("recall")), justify="right"),
    Column("AUC", "rocAuc", lambda r: number(_m(r).get("rocAuc")), justify="right"),
    EVENT_COLUMNS[0],  # lead time and false alarms: trainctl versions has the room for them
]
HISTORY_FIELDS = [
    *map(_field, ("version", "runId", "status", "stage", "trigger", "scheduleSlot")),
    *map(_field, ("queuedAt", "startedAt", "finishedAt")),
    *map(_metric_field, ("accuracy", "precision", "recall", "rocAuc", *EVENT_FIELDS)),
    _field("error"),
]
VERSION_COLUMNS = [
    Column("", "deployed", lambda v: "*" if v["deployed"] else ""),
    Column("version", "version", lambda v: short_version(v["version"]), no_wrap=True),
    Column("status", "status", lambda v: v["status"]),
    Column("verdict", "validationPassed", lambda v: _verdict(v)),
    Column("acc.", "accuracy", lambda v: number(v["metrics"].get("accuracy")), justify="right"),
    Column("prec.", "precision", lambda v: number(v["metrics"].get("precision")), justify="right"),
    Column("recall", "recall", lambda v: number(v["metrics"].get("recall")), justify="right"),
    Column("AUC", "rocAuc", lambda v: number(v["metrics"].get("rocAuc")), justify="right"),
    *EVENT_COLUMNS,
    Column("size", "sizeBytes", lambda v: _size(v), justify="right"),
]
VERSION_FIELDS = [
    _field("version"),
    Column("deployed", "deployed", lambda v: "true" if v["deployed"] else "false"),
    *map(_field, ("status", "createdAt", "deployedAt", "removedAt", "runId")),
    Column("validationPassed", "validationPassed", lambda v: _verdict(v)),
    *map(_metric_field, ("accuracy", "precision", "recall", "rocAuc", *EVENT_FIELDS)),
    *map(_field, ("sizeBytes", "sha256", "modelPath")),
    Column(
        "validationFailures", "validationFailures", lambda v: "; ".join(v["validationFailures"])
    ),
]
SHORT_IDS_NOTE = "version ids are shortened here; --json or a pipe shows them in full"
NOTE_CHARS = 300  # a note longer than this (a stack of failed checks) is cut: --json has it all


def _notes(out: Console, title: str, notes: Sequence[tuple[str, str | None]]) -> None:
    """Long texts (errors, failed checks) under the table, each wrapped beside its version."""
    if not notes:
        return
    columns = [
        Column("version", "version", lambda n: short_version(n["version"]), no_wrap=True),
        Column(title.lower(), "text", lambda n: clip(n["text"], NOTE_CHARS)),
    ]
    show(out, title, columns, [{"version": v, "text": t} for v, t in notes])


def _status_and_stage(run: Row) -> str:
    """`failed (train)`: the stage matters for a run that did not succeed."""
    status, stage = run["status"], run["stage"]
    if status in ("succeeded", "validated") or not stage:
        return str(status)
    return f"{status} ({stage})"


def _verdict(version: Row) -> str:
    return {True: "passed", False: "rejected", None: "-"}[version["validationPassed"]]


def _size(version: Row) -> str:
    return size(version["sizeBytes"])
