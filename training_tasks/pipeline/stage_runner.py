"""What every pipeline task does around its stage: claim the run, heartbeat, record, map errors.

A Celery message only wakes up a run that already exists in the database. The task first claims
the run's lease for its stage; a duplicate or late delivery finds the stage done or the lease
held by a live worker and stops without doing anything (and without continuing the chain).

Nothing here imports Celery: the task hands in a `StageCall` (who runs the stage and how its
progress is shown), and turns `StageSkipped` and `RetryStage` into Celery's Ignore and retry.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from traceback import format_exception
from typing import Any, NoReturn

from training_tasks.db.errors import DATABASE_UNREACHABLE, StatementError
from training_tasks.errors import (
    Cancelled,
    LeaseHeld,
    RunFinished,
    StageOutOfMemory,
    TrainingServiceError,
    ValidationRejected,
)
from training_tasks.pipeline import scratch
from training_tasks.pipeline.alerts import alert_run_end
from training_tasks.pipeline.leases import CANCEL_GRACE_S, keeper
from training_tasks.protocol.ids import check_run_id
from training_tasks.registry import run_control, runs
from training_tasks.registry.rows import FinishedStatus, RunRow
from training_tasks.registry.run_control import MAX_ATTEMPTS
from training_tasks.runtime import Runtime, get_runtime

log = logging.getLogger(__name__)
PROGRESS_INTERVAL_S = 0.5
EVENTS_MUTED_S = 10.0  # after a progress event failed to send, the next ones wait this long
EXIT_STUCK_STAGE = 75  # a pool process ended because its cancelled stage did not stop


@dataclass(frozen=True)
class StageCall:
    """The message that started a stage, as far as the stage runner needs it."""

    worker: str  # the worker's node name, e.g. celery@host
    message_id: str | None = None  # None when no message started the stage (tests, tools)
    # Shows progress beside the message (Flower); may raise, for instance when the broker is away.
    show_progress: Callable[[dict[str, Any]], None] | None = None
    # A worker's pool process, which may end itself to free its slot from a stuck stage.
    in_pool_process: bool = False


class StageSkipped(Exception):
    """Nothing to do for this delivery (a duplicate, a cancelled run): do not continue the chain."""


class RetryStage(Exception):
    """Run the stage again after `countdown_s` seconds: it failed with a transient `error`."""

    def __init__(self, error: Exception, countdown_s: float, max_attempts: int) -> None:
        super().__init__(str(error))
        self.error, self.countdown_s, self.max_attempts = error, countdown_s, max_attempts


@dataclass
class StageOutcome:
    """What a stage hands back: columns to store on the run, and whether the run is finished."""

    updates: dict[str, Any] = field(default_factory=dict)
    final_status: FinishedStatus | None = None


@dataclass
class StageContext:
    """A claimed run and the handles its stage may use."""

    rt: Runtime
    run: RunRow
    progress: Callable[[dict[str, Any]], None]
    cancel: threading.Event


def run_stage(
    call: StageCall, run_id: str, stage: str, body: Callable[[StageContext], StageOutcome]
) -> str:
    """Run `body` for `stage` of `run_id` under the run's lease; returns run_id for the next task.

    No MemoryError leaves this function: Celery's worker re-raises a task's MemoryError in its
    main process, which then exits and stops every other organization's runs with it.
    """
    try:
        return _run_stage(call, run_id, stage, body)
    except MemoryError:
        pass  # leave the except block first, so the frames that held the memory are freed
    # Outside the stage's body, which fails the run itself; the chain's error handler does here.
    raise StageOutOfMemory(
        f"run {run_id}: the worker ran out of memory around {stage}; the run failed and the "
        "worker goes on. Shorten dataRange or give the worker more memory"
    )


def _run_stage(
    call: StageCall, run_id: str, stage: str, body: Callable[[StageContext], StageOutcome]
) -> str:
    rt = get_runtime()
    check_run_id(run_id)
    owner = f"{call.worker}/{os.getpid()}/{call.message_id}"
    started = rt.now()
    try:
        run = runs.claim_stage(
            rt.engine,
            run_id,
            stage,
            owner=owner,
            worker=call.worker,
            now=started,
            ttl_s=rt.settings.lease_ttl_s,
        )
    except (RunFinished, LeaseHeld) as exc:
        log.info("run %s: %s delivered again, nothing to do (%s)", run_id, stage, exc)
        raise StageSkipped(str(exc)) from exc
    if run["cancel_requested_at"] is not None:
        _cancelled(rt, run, stage)
    log.info(
        "run %s of %s: %s started (attempt %s)",
        run_id,
        run["organization_id"],
        stage,
        run["attempt"],
    )
    cancel = threading.Event()
    ctx = StageContext(rt, run, _progress_sink(call, rt, run_id, stage, cancel), cancel)
    stuck = functools.partial(_stop_stuck_stage, call, rt, run, stage, owner)
    with keeper.hold(rt, run_id, owner, cancel, on_stuck=stuck):
        work_started = time.perf_counter()
        outcome, failure = _call(body, ctx, stage)
        if failure is not None:
            _on_error(rt, run, stage, owner, failure, cancel)
            raise failure
        assert outcome is not None
        work_s = time.perf_counter() - work_started
    try:
        runs.complete_stage(
            rt.engine,
            run_id,
            stage,
            owner=owner,
            started_at=started,
            now=rt.now(),
            updates=outcome.updates,
            final_status=outcome.final_status,
            work_s=work_s,
            claimed=run,
        )
    except LeaseHeld as exc:
        # The run was cancelled (or recovered elsewhere) while this stage finished its work.
        log.warning("run %s: %s finished after the run was taken from it (%s)", run_id, stage, exc)
        raise StageSkipped(str(exc)) from exc
    except StatementError as exc:
        # The work is done but cannot be recorded: leave the lease to expire, and the reaper
        # runs the stage again when the database is back (failing the run needs it too).
        log.warning(
            "run %s: could not record the end of %s (%s); the reaper retries it",
            run_id,
            stage,
            str(exc).splitlines()[0],
        )
        raise StageSkipped(str(exc)) from exc
    log.info("run %s of %s: %s done", run_id, run["organization_id"], stage)
    if outcome.final_status is not None:
        scratch.clean_after_success(rt, run)
    return run_id


def _call(
    body: Callable[[StageContext], StageOutcome], ctx: StageContext, stage: str
) -> tuple[StageOutcome | None, Exception | None]:
    """Run the stage body; its error is returned. Running out of memory fails the run only:
    a MemoryError that reached Celery would end the whole worker and every other run on it."""
    try:
        return body(ctx), None
    except MemoryError:
        pass  # leave the except block first, so the frames that held the memory are freed
    except Exception as exc:
        return None, exc
    org = ctx.run["organization_id"]
    return None, StageOutOfMemory(
        f"organization {org} run {ctx.run['id']}: the worker ran out of memory during {stage}; "
        "the run failed and the worker goes on. Shorten dataRange or give the worker more memory"
    )


def _stop_stuck_stage(call: StageCall, rt: Runtime, run: RunRow, stage: str, owner: str) -> None:
    """A cancelled stage that did not stop by itself: finish the run, then end this pool process.

    Called by the lease keeper's thread. The run is marked cancelled first, so the organization
    can train again at once; ending the process frees the worker slot from whatever blocks it
    (Celery starts a new pool process, as after a hard time limit).
    """
    if run_control.finish_cancelled(rt.engine, run["id"], stage=stage, now=rt.now(), owner=owner):
        log.warning("run %s of %s cancelled during %s", run["id"], run["organization_id"], stage)
    if not call.in_pool_process:
        log.error(
            "run %s: %s did not stop after its cancel; it ends when it returns", run["id"], stage
        )
        return
    log.error(
        "run %s of %s: %s did not stop within %g s of its cancel; ending pool process %d so its "
        "slot is free again",
        run["id"],
        run["organization_id"],
        stage,
        CANCEL_GRACE_S,
        os.getpid(),
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(EXIT_STUCK_STAGE)


def _cancelled(rt: Runtime, run: RunRow, stage: str) -> NoReturn:
    """Finish a run whose cancel was requested, and end this task without continuing the chain."""
    run_control.finish_cancelled(rt.engine, run["id"], stage=stage, now=rt.now())
    log.warning("run %s of %s cancelled during %s", run["id"], run["organization_id"], stage)
    raise StageSkipped(f"run {run['id']} was cancelled")


def _on_error(
    rt: Runtime,
    run: RunRow,
    stage: str,
    owner: str,
    exc: Exception,
    cancel: threading.Event,
) -> None:
    run_id, org = run["id"], run["organization_id"]
    if cancel.is_set() or isinstance(exc, Cancelled):
        _cancelled(rt, run, stage)
    message = str(exc) if isinstance(exc, TrainingServiceError) else f"{type(exc).__name__}: {exc}"
    if _transient(exc):
        if run["attempt"] < MAX_ATTEMPTS:
            countdown_s = rt.settings.retry_backoff_s * 4 ** (run["attempt"] - 1)
            now = rt.now()
            attempt = run_control.record_retry(
                rt.engine,
                run_id,
                owner=owner,
                stage=stage,
                error=message,
                now=now,
                resume_at=now + timedelta(seconds=countdown_s),
            )
            if attempt is not None:
                log.warning(
                    "run %s of %s: %s failed transiently (%s); attempt %d of %d in %gs",
                    run_id,
                    org,
                    stage,
                    message,
                    attempt,
                    MAX_ATTEMPTS,
                    countdown_s,
                )
                raise RetryStage(exc, countdown_s, MAX_ATTEMPTS)
        message = f"{message} (gave up after {run['attempt']} attempts)"
    status: FinishedStatus = "rejected" if isinstance(exc, ValidationRejected) else "failed"
    trace = None if isinstance(exc, TrainingServiceError) else "".join(format_exception(exc))
    now = rt.now()
    last = run_control.attempt_entry(run, stage, status, message, owner, now)
    finished = runs.finish_failed(
        rt.engine,
        run_id,
        status=status,
        stage=stage,
        error=message,
        trace=trace,
        actor=owner,
        now=now,
        last_attempt=last if status == "failed" else None,
    )
    log.error("run %s of %s %s at %s: %s", run_id, org, status, stage, message)
    if finished:
        alert_run_end(rt, run_id)


def _transient(exc: Exception) -> bool:
    """Worth another attempt: our transient errors, and lost connections to the service DB."""
    if isinstance(exc, TrainingServiceError):
        return exc.transient
    return isinstance(exc, (*DATABASE_UNREACHABLE, ConnectionError, TimeoutError))


def _progress_sink(
    call: StageCall, rt: Runtime, run_id: str, stage: str, cancel: threading.Event
) -> Callable[[dict[str, Any]], None]:
    """Store progress on the run (and show it beside the message, in Flower), at most twice a second.

    Outside training (whose process the cancel event stops), a cancelled run stops at its next
    progress report: the extract checks between record batches.
    """
    last, muted_until = [0.0], [0.0]

    def report(progress: dict[str, Any]) -> None:
        if cancel.is_set() and stage != "train":
            raise Cancelled(f"run {run_id} was cancelled during {stage}")
        now = time.monotonic()
        final = progress.get("iteration") is not None and progress.get("iteration") == progress.get(
            "total"
        )
        if now - last[0] < PROGRESS_INTERVAL_S and not final:
            return
        last[0] = now
        try:
            runs.set_progress(rt.engine, run_id, progress)
        except StatementError as exc:  # progress is best effort; the stage's own work goes on
            log.warning("run %s: progress not stored (%s)", run_id, str(exc).splitlines()[0])
        shown = {"runId": run_id, **progress}
        if call.message_id and now >= muted_until[0] and not _show(call, shown):
            # The broker is away: each event would wait for its connection timeout.
            muted_until[0] = now + EVENTS_MUTED_S

    return report


def _show(call: StageCall, progress: dict[str, Any]) -> bool:
    """Best effort: whether the progress could be shown beside the message."""
    if call.show_progress is None:
        return True
    try:
        call.show_progress(progress)
    except Exception:
        log.debug("run %s: progress event not sent", progress.get("runId"), exc_info=True)
        return False
    return True
