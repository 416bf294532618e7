"""Following runs as they go: a live bar per run on a terminal, a line per change elsewhere.

Progress goes to stderr, so `--json` output on stdout stays parseable.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from training_tasks.cli.tables import clip, is_plain, short_version
from training_tasks.registry.rows import FINISHED_STATUSES
from training_tasks.service.api import TrainingHandle

progress_console = Console(stderr=True)
progress_console.soft_wrap = is_plain(progress_console)
STAGE_ORDER = ("queued", "extract", "train", "validate", "deploy", "done")


def follow_runs(
    handles: Sequence[TrainingHandle],
    *,
    timeout_s: float | None = None,
    poll_interval_s: float = 0.25,
) -> list[dict[str, Any]]:
    """Show each run's progress until all finish; returns their final summaries.

    On a terminal: a live bar per run. Otherwise: a line each time a run's stage or status changes.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    results: dict[str, dict[str, Any]] = {}
    latest: dict[str, dict[str, Any]] = {}
    with _progress(handles) as report:
        while len(results) < len(handles):
            for handle in handles:
                if handle.run_id in results:
                    continue
                summary = latest[handle.run_id] = handle.status()
                report(handle.run_id, summary)
                if summary["status"] in FINISHED_STATUSES:
                    results[handle.run_id] = summary
            pending = len(results) < len(handles)
            if pending and deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(_still_going(latest, results, timeout_s or 0.0))
            if pending:
                time.sleep(poll_interval_s)
    return [results[h.run_id] for h in handles]


class _progress:
    """A live bar per run on a terminal; a plain line per change of stage or status elsewhere."""

    def __init__(self, handles: Sequence[TrainingHandle]) -> None:
        self.handles = handles
        self.bar: Progress | None = None
        self.ids: dict[str, TaskID] = {}
        self.said: dict[str, str] = {}

    def __enter__(self) -> _progress:
        if not is_plain(progress_console):
            columns = (
                TextColumn("[bold]{task.fields[org]}[/]", justify="left"),
                TextColumn("{task.fields[stage]:<9}"),
                BarColumn(bar_width=24),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
            )
            self.bar = Progress(*columns, console=progress_console, transient=False)
            self.bar.__enter__()
            for h in self.handles:
                self.ids[h.run_id] = self.bar.add_task(
                    "", total=100, org=h.run_id[:8], stage="queued", detail=""
                )
        return self

    def __call__(self, run_id: str, summary: dict[str, Any]) -> None:
        if self.bar is not None:
            _update(self.bar, self.ids[run_id], summary)
            return
        stage, detail, _ = _stage_detail(summary)
        line = f"{summary['organizationId']} {summary['version']}: {stage} {detail}".rstrip()
        if self.said.get(run_id) != line:
            self.said[run_id] = line
            progress_console.print(line, markup=False, highlight=False)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


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


def _stage_detail(summary: dict[str, Any]) -> tuple[str, str, float]:
    """The stage (or final status) of a run, a few words on it, and its share done (0-100)."""
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
        detail = "" if summary["success"] else " ".join((summary.get("error") or "").split())
    return stage, detail, completed


def _update(bar: Progress, task: TaskID, summary: dict[str, Any]) -> None:
    stage, detail, completed = _stage_detail(summary)
    if summary["status"] in FINISHED_STATUSES and summary["success"]:
        detail = short_version(summary.get("version"))
    width = max(progress_console.width - 60, 20)  # the bar, the name and the clock take the rest
    bar.update(
        task,
        completed=completed,
        stage=stage,
        detail=escape(clip(detail, width)),
        org=escape(summary["organizationId"]),
    )
