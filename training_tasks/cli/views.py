"""How `trainctl` shows things: live progress of runs, and tables of runs and versions."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from training_tasks.registry.rows import FINISHED_STATUSES
from training_tasks.service.api import TrainingHandle

# Piped output gets a wide fixed width, so tables never fold version ids for grep and scripts.
console = Console(width=None if sys.stdout.isatty() else 200)
# Progress goes to stderr, so `--json` output on stdout stays parseable.
progress_console = Console(stderr=True)
STAGE_ORDER = ("queued", "extract", "train", "validate", "deploy", "done")


def follow_runs(
    handles: Sequence[TrainingHandle],
    *,
    timeout_s: float | None = None,
    poll_interval_s: float = 0.25,
) -> list[dict[str, Any]]:
    """Show a live progress line per run until all finish; returns their final summaries."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    results: dict[str, dict[str, Any]] = {}
    latest: dict[str, dict[str, Any]] = {}
    columns = (
        TextColumn("[bold]{task.fields[org]}[/]", justify="left"),
        TextColumn("{task.fields[stage]:<9}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=progress_console, transient=False) as bar:
        ids: dict[str, TaskID] = {
            h.run_id: bar.add_task("", total=100, org=h.run_id[:8], stage="queued", detail="")
            for h in handles
        }
        while len(results) < len(handles):
            for handle in handles:
                if handle.run_id in results:
                    continue
                summary = latest[handle.run_id] = handle.status()
                _update(bar, ids[handle.run_id], summary)
                if summary["status"] in FINISHED_STATUSES:
                    results[handle.run_id] = summary
            pending = len(results) < len(handles)
            if pending and deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(_still_going(latest, results, timeout_s or 0.0))
            time.sleep(poll_interval_s)
    return [results[h.run_id] for h in handles]


def _still_going(
    latest: dict[str, dict[str, Any]], results: dict[str, dict[str, Any]], timeout_s: float
) -> str:
    """Why `--wait --timeout` gave up, and how to go on following the runs."""
    going = [s for run_id, s in latest.items() if run_id not in results]
    runs = ", ".join(f"{s['runId']} of {s['organizationId']} ({s['status']})" for s in going)
    return (
        f"gave up waiting after {timeout_s:g} s; still going: {runs}. Runs go on without "
        f"waiting: follow them with `trainctl status {going[0]['organizationId']}`"
    )


def _update(bar: Progress, task: TaskID, summary: dict[str, Any]) -> None:
    progress = summary.get("progress") or {}
    status, stage = summary["status"], progress.get("stage") or summary.get("stage") or "queued"
    base = {"extract": 0, "train": 10, "validate": 90, "deploy": 95, "done": 100}.get(stage, 0)
    detail, completed = "", float(base)
    if stage == "extract" and progress.get("rows"):
        detail = f"{progress['rows']:,} rows"
    if stage == "train" and progress.get("total"):
        it, total = int(progress.get("iteration") or 0), int(progress["total"])
        detail, completed = f"iteration {it}/{total}", 10 + 80 * it / max(total, 1)
    if status in FINISHED_STATUSES:
        completed, stage = 100.0, status
        detail = summary.get("version") or ""
        if not summary["success"]:
            detail = (summary.get("error") or "")[:80]
    bar.update(task, completed=completed, stage=stage, detail=detail, org=summary["organizationId"])


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_result(result: dict[str, Any]) -> None:
    """One run's outcome, in words."""
    style = "green" if result["success"] else "red"
    console.print(
        f"[{style}]{result['organizationId']} run {result['runId']}: {result['status']}[/]"
    )
    console.print(f"  version {result['version']}")
    if result.get("modelPath"):
        console.print(f"  model   {result['modelPath']}")
    metrics = result.get("metrics") or {}
    if metrics:
        keys = ("accuracy", "precision", "recall", "f1", "rocAuc", "prAuc")
        console.print("  " + "  ".join(f"{k} {_fmt(metrics.get(k))}" for k in keys if k in metrics))
    if result.get("error"):
        console.print(f"  [red]{result['error']}[/]")


def deployed_table(results: Sequence[dict[str, Any]], store_base: str) -> Table:
    """What was deployed: version, decision threshold, accuracy, precision and recall (with their
    95% intervals), AUC, size, latency."""
    table = Table(title=f"Deployed models (files under {store_base})")
    for name in (
        "organization",
        "status",
        "version",
        "threshold",
        "accuracy",
        "precision (95% CI)",
        "recall (95% CI)",
        "AUC",
        "size",
        "p50 latency",
    ):
        table.add_column(name)
    for r in results:
        m = r.get("metrics") or {}
        latency = (m.get("latency") or {}).get("singleRowP50Ms")
        size = m.get("modelSizeBytes")
        table.add_row(
            r["organizationId"],
            r["status"],
            r["version"],
            _fmt(m.get("decisionThreshold")),
            _fmt(m.get("accuracy")),
            _with_interval(m, "precision"),
            _with_interval(m, "recall"),
            _fmt(m.get("rocAuc")),
            f"{size / 1024:.0f} KiB" if size else "-",
            f"{latency:.2f} ms" if latency else "-",
        )
    return table


def _with_interval(metrics: dict[str, Any], name: str) -> str:
    """`0.912 (0.87-0.94)`: the value and its 95% interval, when validation recorded one."""
    interval = (metrics.get("intervals") or {}).get(name) or {}
    low, high = interval.get("low"), interval.get("high")
    if low is None or high is None:
        return _fmt(metrics.get(name))
    return f"{_fmt(metrics.get(name))} ({low:.2f}-{high:.2f})"


def print_status(doc: dict[str, Any]) -> None:
    """The organization's deployment, then its latest run, one section after the other."""
    console.print(f"[bold]{doc['organizationId']}[/]")
    # Sections in the order shown; each returns its own lines.
    for section in (_deployment_lines, _replica_lines, _latest_run_lines):
        for line in section(doc):
            console.print(f"  {line}")


def _deployment_lines(doc: dict[str, Any]) -> list[str]:
    return [
        f"deployed version  {doc['deployedVersion'] or '(none)'} (sequence {doc['deploySequence']})",
        f"previous version  {doc['previousVersion'] or '(none)'}",
    ]


def _replica_lines(doc: dict[str, Any]) -> list[str]:
    replicas = doc.get("replicas")
    if replicas is None:
        return ["replicas          (Redis did not answer; confirmations unknown)"]
    if not replicas:
        return ["replicas          none reporting"]
    deployed = doc["deployedVersion"]
    lines = []
    for replica_id, entry in sorted(replicas.items()):
        mark = "confirmed" if entry.get("version") == deployed else "[yellow]still on[/]"
        where = f"{entry.get('host', '?')} pid {entry.get('pid', '?')}"
        lines.append(f"replica           {replica_id} ({where}): {mark} {entry.get('version')}")
    return lines


def _latest_run_lines(doc: dict[str, Any]) -> list[str]:
    run = doc.get("latestRun")
    if run is None:
        return ["no training run yet"]
    stage = (run.get("progress") or {}).get("stage") or run.get("stage")
    lines = [
        f"latest run        {run['runId']} {run['status']} (stage {stage}), version {run['version']}",
        f"queued at         {run['queuedAt']}  finished at {run['finishedAt'] or '-'}",
    ]
    if run.get("error"):
        lines.append(f"[red]error: {escape(run['error'])}[/]")
    return lines


def print_validation(report: dict[str, Any]) -> None:
    """A validation verdict: the model, the holdout, the metrics and every failed check."""
    passed = report["passed"]
    verdict = "[green]passed[/]" if passed else "[red]rejected[/]"
    console.print(f"[bold]{report['organizationId']}[/] version {report['version']}: {verdict}")
    # Paths stay on one line, so they can be copied and grepped.
    console.print(f"  model    {escape(report['modelPath'])}", soft_wrap=True)
    console.print(
        f"  holdout  {escape(report['holdoutPath'])} ({report['rows']:,} rows, run "
        f"{report['holdoutRunId']} version {report['holdoutVersion']})",
        soft_wrap=True,
    )
    metrics = {"intervals": report.get("intervals"), **(report.get("metrics") or {})}
    console.print(f"  decides at threshold {_fmt(report.get('decisionThreshold'))}")
    keys = ("accuracy", "precision", "recall", "f1")
    console.print("  " + "  ".join(f"{k} {_with_interval(metrics, k)}" for k in keys))
    console.print("  " + "  ".join(f"{k} {_fmt(metrics.get(k))}" for k in ("rocAuc", "prAuc")))
    for warning in report.get("warnings") or []:  # a gate inside its metric's 95% interval
        console.print(f"  [yellow]! {escape(warning)}[/]", soft_wrap=True)
    if passed:
        console.print(f"  all {len(report['checks'])} checks passed")
        return
    console.print("  failed checks:")
    for failure in report["failures"]:
        console.print(f"  [red]- {escape(failure)}[/]", soft_wrap=True)


def print_removals(removed: Sequence[dict[str, Any]], *, dry_run: bool) -> None:
    """What garbage collection removed (or, in a dry run, would remove), one version per block."""
    if not removed:
        console.print("nothing to remove: every version is kept by the retention rule")
        return
    verb = "would remove" if dry_run else "removed"
    for item in removed:
        was = " (files left from an earlier removal)" if item["status"] == "removed" else ""
        console.print(f"{verb} {item['organizationId']} {item['version']} ({item['status']}){was}")
        for path in item["paths"]:
            console.print(f"  {escape(path)}", soft_wrap=True)
    if dry_run:
        console.print(f"dry run: {len(removed)} version(s), nothing changed")


def print_history(org_id: str, runs: Sequence[dict[str, Any]]) -> None:
    """The training log as a table."""
    table = Table(title=f"Training log of {org_id}")
    for name in (
        "started",
        "finished",
        "trigger",
        "status",
        "stage",
        "version",
        "accuracy",
        "recall",
        "AUC",
        "error",
    ):
        table.add_column(name, overflow="fold")
    for run in runs:
        m = run.get("metrics") or {}
        table.add_row(
            run["startedAt"] or run["queuedAt"],
            run["finishedAt"] or "-",
            f"schedule {run['scheduleSlot']}" if run.get("scheduleSlot") else run["trigger"],
            run["status"],
            run["stage"] or "-",
            run["version"],
            _fmt(m.get("accuracy")),
            _fmt(m.get("recall")),
            _fmt(m.get("rocAuc")),
            (run.get("error") or "")[:120],
        )
    console.print(table)


def print_versions(org_id: str, rows: Sequence[dict[str, Any]]) -> None:
    """Model versions with their validation verdict; the deployed one is marked."""
    table = Table(title=f"Model versions of {org_id}")
    for name in (
        "",
        "version",
        "status",
        "validation",
        "accuracy",
        "precision",
        "recall",
        "AUC",
        "size",
    ):
        table.add_column(name, overflow="fold")
    for v in rows:
        m = v["metrics"]
        verdict = {True: "passed", False: "rejected", None: "-"}[v["validationPassed"]]
        if v["validationFailures"]:
            verdict += ": " + "; ".join(v["validationFailures"])[:100]
        table.add_row(
            "*" if v["deployed"] else "",
            v["version"],
            v["status"],
            verdict,
            _fmt(m.get("accuracy")),
            _fmt(m.get("precision")),
            _fmt(m.get("recall")),
            _fmt(m.get("rocAuc")),
            f"{v['sizeBytes'] / 1024:.0f} KiB",
        )
    console.print(table)
    console.print("* = deployed")
