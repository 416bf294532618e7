"""The reaper: no run stays stuck. A dead worker's stage is sent again, and so is a lost message.

Two ways a run stops moving without finishing:

- Its worker died. A stage renews its run's lease while it works; when the lease has expired
  (the worker was killed, the machine lost power, the process hangs), the reaper counts the lost
  attempt and sends the stage again. Redelivered copies of the old message then find the lease
  taken and do nothing.
- Its next message was lost: Redis lost data, or a worker died after taking the message and
  before claiming the run. No lease then holds the run; it has waited since its last stage ended
  (`waiting_since`). Once it has waited RUN_STALL_S with no message in its organization's queue
  (a message still queued only waits for a free worker), the reaper sends the stage after the
  last completed one again, as a counted attempt.

A run that already had MAX_ATTEMPTS attempts is failed instead, so a run that keeps killing its
worker stops. A cancelled run is finished as cancelled. Every worker runs the reaper; conditional
updates let one win.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from training_tasks.pipeline.alerts import alert_run_end
from training_tasks.registry import run_control, runs
from training_tasks.registry.rows import RunRow
from training_tasks.registry.run_control import MAX_ATTEMPTS, next_stage
from training_tasks.runtime import Runtime

log = logging.getLogger(__name__)

# enqueue_from(run_id, org_id, auto_deploy, stage) sends the chain from `stage` on.
EnqueueFrom = Callable[[str, str, bool, str], str]
# queue_waiting(org_id) says whether a message waits in the organization's queue.
QueueWaiting = Callable[[str], bool]


def reap(
    rt: Runtime, enqueue_from: EnqueueFrom, queue_waiting: QueueWaiting | None = None
) -> list[dict[str, Any]]:
    """Recover or end every run whose lease expired or whose message was lost; one entry a run."""
    done = []
    for run in run_control.dead_runs(rt.engine, rt.now()):
        stage = next_stage(run)
        action = _reap_dead(rt, run, stage, enqueue_from)
        if action:
            done.append({"runId": run["id"], "stage": stage, "action": action})
    if queue_waiting is not None:
        waited_before = rt.now() - timedelta(seconds=rt.settings.run_stall_s)
        for run in run_control.stalled_runs(rt.engine, waited_before):
            stage = next_stage(run)
            action = _reap_stalled(rt, run, stage, enqueue_from, queue_waiting)
            if action:
                done.append({"runId": run["id"], "stage": stage, "action": action})
    return done


def _reap_dead(rt: Runtime, run: RunRow, stage: str, enqueue_from: EnqueueFrom) -> str:
    if run["cancel_requested_at"] is not None:
        return _cancel(rt, run, stage)
    if run["attempt"] >= MAX_ATTEMPTS:
        error = (
            f"the worker running {stage} stopped renewing the run's lease (last {run['lease_owner']}); "
            f"this was attempt {run['attempt']} of {MAX_ATTEMPTS}, so the run is not retried: a run "
            "that keeps killing its worker stops here. Check that worker's log and memory "
            "(the out-of-memory killer) and lower the data window or maxMemoryMb"
        )
        lost = "its worker stopped renewing the lease"
        return _give_up(rt, run, stage, "worker_lost", lost, error, run["lease_owner"])
    if not run_control.take_dead(rt.engine, run, stage=stage, now=rt.now()):
        return ""
    task_id = _send(run, stage, enqueue_from)
    if task_id is None:
        # Give the lease back as expired so that the next pass tries again.
        run_control.expire_lease(rt.engine, run["id"], owner="reaper", now=rt.now())
        return ""
    why = f"the lease of {stage} expired (its worker died or lost the database)"
    return _resent(rt, run, task_id, why)


def _reap_stalled(
    rt: Runtime,
    run: RunRow,
    stage: str,
    enqueue_from: EnqueueFrom,
    queue_waiting: QueueWaiting,
) -> str:
    """Send the stage of a run whose message was lost again, unless a message still waits."""
    run_id, org = run["id"], run["organization_id"]
    if run["cancel_requested_at"] is not None:
        return _cancel(rt, run, stage)
    try:
        if queue_waiting(org):
            return ""  # its message waits for a free worker; nothing is lost
    except Exception as exc:  # the broker may be away; the next pass looks again
        log.warning("run %s of %s: could not look into its queue (%s)", run_id, org, exc)
        return ""
    waiting_since = run["waiting_since"]
    assert waiting_since is not None  # stalled_runs selects runs by it
    waited_s = (rt.now() - waiting_since).total_seconds()
    if run["attempt"] >= MAX_ATTEMPTS:
        why = f"no worker took its {stage} message within {waited_s:.0f} s"
        error = (
            f"{why}, and this was attempt {run['attempt']} of {MAX_ATTEMPTS}, so the run is not "
            "retried; check that a worker consumes the organization's queue and that the broker "
            "keeps its data, then train again"
        )
        return _give_up(rt, run, stage, "stalled", why, error, None)
    # Send first: if that fails, nothing was counted. A duplicate message does nothing.
    task_id = _send(run, stage, enqueue_from)
    if task_id is None:
        return ""
    if not run_control.take_stalled(rt.engine, run, stage=stage, waited_s=waited_s, now=rt.now()):
        return ""  # it moved on meanwhile; the message sent is a duplicate and does nothing
    why = f"waited {waited_s:.0f} s for its {stage} message with none in its queue"
    return _resent(rt, run, task_id, why)


def _cancel(rt: Runtime, run: RunRow, stage: str) -> str:
    """Finish a run no live worker holds whose cancel was requested."""
    done = run_control.finish_cancelled(
        rt.engine, run["id"], stage=stage, now=rt.now(), unheld=True
    )
    return "cancelled" if done else ""


def _send(run: RunRow, stage: str, enqueue_from: EnqueueFrom) -> str | None:
    """Send the chain from `stage` on; its task id, or None (logged) when the broker refused."""
    try:
        return enqueue_from(run["id"], run["organization_id"], bool(run["auto_deploy"]), stage)
    except Exception as exc:
        log.error(
            "run %s of %s: could not send %s again (%s); retrying",
            run["id"],
            run["organization_id"],
            stage,
            exc,
        )
        return None


def _resent(rt: Runtime, run: RunRow, task_id: str, why: str) -> str:
    """Record the resent chain's task id and say why the stage went again."""
    runs.set_task_id(rt.engine, run["id"], task_id)
    log.warning(
        "run %s of %s: %s; sent the stage again (attempt %d of %d)",
        run["id"],
        run["organization_id"],
        why,
        run["attempt"] + 1,
        MAX_ATTEMPTS,
    )
    return "resent"


def _give_up(
    rt: Runtime,
    run: RunRow,
    stage: str,
    kind: str,
    why: str,
    error: str,
    worker: str | None,
) -> str:
    """Fail a run that used up its attempts; the last attempt goes into its log too."""
    now = rt.now()
    finished = runs.finish_failed(
        rt.engine,
        run["id"],
        status="failed",
        stage=stage,
        error=error,
        trace=None,
        actor="reaper",
        now=now,
        only_if={"lease_owner": run["lease_owner"], "attempt": run["attempt"]},
        last_attempt=run_control.attempt_entry(run, stage, kind, why, worker, now),
    )
    if finished:
        log.error("run %s of %s failed: %s", run["id"], run["organization_id"], error)
        alert_run_end(rt, run["id"])
    return "failed" if finished else ""
