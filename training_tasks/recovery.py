"""The reaper: a run whose worker died gets its stage again, or ends after MAX_ATTEMPTS.

A stage renews its run's lease while it works. When the lease has expired (the worker was
killed, the machine lost power, the process hangs), the reaper counts the lost attempt and sends
the stage again; redelivered copies of the old message then find the lease taken and do
nothing. A run that already had MAX_ATTEMPTS attempts is failed instead, so a run that keeps
killing its worker stops. Every worker runs the reaper; the conditional update lets one win.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from training_tasks.failure_alerts import alert_run_end
from training_tasks.registry import run_control, runs
from training_tasks.registry.run_control import MAX_ATTEMPTS
from training_tasks.runtime import Runtime

log = logging.getLogger(__name__)

# enqueue_from(run_id, org_id, auto_deploy, stage) sends the chain from `stage` on.
EnqueueFrom = Callable[[str, str, bool, str], str]


def reap(rt: Runtime, enqueue_from: EnqueueFrom) -> list[dict[str, Any]]:
    """Recover or end every run whose lease expired; returns what was done, one entry a run."""
    done = []
    for run in run_control.dead_runs(rt.engine, rt.now()):
        stage = runs.STAGES[min(run["stages_done"], len(runs.STAGES) - 1)]
        action = _reap_one(rt, run, stage, enqueue_from)
        if action:
            done.append({"runId": run["id"], "stage": stage, "action": action})
    return done


def _reap_one(rt: Runtime, run: dict[str, Any], stage: str, enqueue_from: EnqueueFrom) -> str:
    run_id, org = run["id"], run["organization_id"]
    if run["cancel_requested_at"] is not None:
        run_control.finish_cancelled(rt.engine, run_id, stage=stage, now=rt.now())
        return "cancelled"
    if run["attempt"] >= MAX_ATTEMPTS:
        error = (
            f"the worker running {stage} stopped renewing the run's lease (last {run['lease_owner']}); "
            f"this was attempt {run['attempt']} of {MAX_ATTEMPTS}, so the run is not retried: a run "
            "that keeps killing its worker stops here. Check that worker's log and memory "
            "(the out-of-memory killer) and lower the data window or maxMemoryMb"
        )
        finished = runs.finish_failed(
            rt.engine,
            run_id,
            status="failed",
            stage=stage,
            error=error,
            trace=None,
            actor="reaper",
            now=rt.now(),
            only_if={"lease_owner": run["lease_owner"]},
        )
        if finished:
            log.error("run %s of %s failed: %s", run_id, org, error)
            alert_run_end(rt, run_id)
        return "failed" if finished else ""
    if not run_control.take_dead(rt.engine, run, stage=stage, now=rt.now()):
        return ""
    try:
        task_id = enqueue_from(run_id, org, bool(run["auto_deploy"]), stage)
    except Exception as exc:
        # Give the lease back as expired so that the next pass tries again.
        run_control.expire_lease(rt.engine, run_id, owner="reaper", now=rt.now())
        log.error("run %s of %s: could not send %s again (%s); retrying", run_id, org, stage, exc)
        return ""
    runs.set_task_id(rt.engine, run_id, task_id)
    log.warning(
        "run %s of %s: the lease of %s expired (its worker died or lost the database); sent "
        "the stage again (attempt %d of %d)",
        run_id,
        org,
        stage,
        run["attempt"] + 1,
        MAX_ATTEMPTS,
    )
    return "resent"
