"""Where a run stands, as the `training.status` task answers any Celery client (Python or Node).

The document is read from the training log (the database is the truth, never a task result) and
is camelCase JSON; its shape is a contract other services depend on (docs/clients.md).
"""

from __future__ import annotations

from typing import Any, TypedDict

from training_tasks.db.engine import Engine
from training_tasks.errors import ConfigError, NotFoundError
from training_tasks.fields import iso, iso_or_none
from training_tasks.protocol.ids import check_run_id
from training_tasks.registry import runs
from training_tasks.registry.rows import ACTIVE_STATUSES, RunRow, RunStatus


class RunStatusDocument(TypedDict):
    """The `training.status` answer: one run of the training log, in camelCase."""

    runId: str
    organizationId: str
    version: str
    status: RunStatus
    finished: bool
    stage: str | None
    stagesDone: int
    progress: dict[str, Any] | None
    trigger: str
    queuedAt: str
    startedAt: str | None
    finishedAt: str | None
    error: str | None


def status_document(run: RunRow) -> RunStatusDocument:
    """A training-log row as the status document (the recorded error only, never a traceback)."""
    return {
        "runId": run["id"],
        "organizationId": run["organization_id"],
        "version": run["version"],
        "status": run["status"],
        "finished": run["status"] not in ACTIVE_STATUSES,
        "stage": run["stage"],
        "stagesDone": run["stages_done"],
        "progress": run["progress"],
        "trigger": run["trigger"],
        "queuedAt": iso(run["queued_at"]),
        "startedAt": iso_or_none(run["started_at"]),
        "finishedAt": iso_or_none(run["finished_at"]),
        "error": run["error"],
    }


def read_run_status(engine: Engine, run_id: object) -> RunStatusDocument:
    """The status document of run `run_id`; ConfigError if malformed, NotFoundError if unknown."""
    try:
        checked = check_run_id(run_id)
    except ConfigError as exc:
        raise ConfigError(
            "runId", f"{exc.problem}; pass the runId that training.submit returned"
        ) from None
    try:
        run = runs.get_run(engine, checked)
    except NotFoundError:
        raise NotFoundError(
            f"training run {checked} does not exist in this service's training log; pass the "
            "runId that training.submit returned, or list an organization's runs with "
            "`trainctl history <organizationId>`"
        ) from None
    return status_document(run)
