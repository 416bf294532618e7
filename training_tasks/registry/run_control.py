"""Stopping and recovering runs: cancel requests, counted retries and runs whose worker died.

Every attempt that ends without finishing the run is counted on it (`attempt`) and described in
its `attempts` log. A run gets at most MAX_ATTEMPTS attempts, whether it failed transiently or its
worker died, so a run that keeps killing its worker stops instead of looping.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, or_, select, update

from training_tasks.db.tables import training_runs
from training_tasks.errors import NotFoundError
from training_tasks.fields import iso
from training_tasks.registry import audit
from training_tasks.registry.rows import ACTIVE_STATUSES, RunRow, as_row
from training_tasks.registry.runs import STAGES, finish_failed, get_run_in

MAX_ATTEMPTS = 3  # the first try and two retries


def request_cancel(engine: Engine, org_id: str, *, actor: str, now: datetime) -> dict[str, Any]:
    """Cancel the organization's active run: at once unless a live worker holds it, else ask it.

    Returns `{runId, version, status}` with status `cancelled` or `cancelling`. The request is
    stored, so it holds across worker restarts; a run that no live lease holds (queued, between
    two stages, or whose worker died) is finished here and then.
    """
    c = training_runs.c
    with engine.begin() as conn:
        found = conn.execute(
            select(training_runs).where(c.organization_id == org_id, c.status.in_(ACTIVE_STATUSES))
        ).first()
        if found is None:
            raise NotFoundError(
                f"organization {org_id} has no queued or running run to cancel; "
                f"see `trainctl history {org_id}`"
            )
        run = as_row(RunRow, found)
        summary = {"runId": run["id"], "version": run["version"]}
        if run["cancel_requested_at"] is None:
            conn.execute(
                update(training_runs)
                .where(c.id == run["id"])
                .values(cancel_requested_at=now, cancel_requested_by=actor)
            )
            audit.record(
                conn, org_id, "training.cancel_requested", actor=actor, now=now, details=summary
            )
    # A run no live worker holds is finished here; its message, if it ever comes, finds it done.
    if run["status"] == "queued":
        if finish_cancelled(engine, run["id"], stage=None, now=now):
            return {**summary, "status": "cancelled"}
    elif finish_cancelled(engine, run["id"], stage=next_stage(run), now=now, unheld=True):
        return {**summary, "status": "cancelled"}
    return {**summary, "status": "cancelling", "requestedBy": run["cancel_requested_by"] or actor}


def next_stage(run: RunRow) -> str:
    """The stage a run does next: the one after the last it completed."""
    return STAGES[min(int(run["stages_done"]), len(STAGES) - 1)]


def finish_cancelled(
    engine: Engine,
    run_id: str,
    *,
    stage: str | None,
    now: datetime,
    unheld: bool = False,
    owner: str | None = None,
) -> bool:
    """Finish a run whose cancel was requested; True if this call finished it.

    Without a stage the run must still be queued; with `unheld` no live lease may hold it (it
    waits between stages or its worker died); with `owner` that owner must still hold it.
    """
    c = training_runs.c
    with engine.connect() as conn:
        run = get_run_in(conn, run_id)
    who = run["cancel_requested_by"] or "an operator"
    when = iso(run["cancel_requested_at"]) if run["cancel_requested_at"] else iso(now)
    where = f"during {stage}" if stage else "before it started"
    if unheld:
        where = f"at {stage} (no live worker held it)"
    conditions = [] if stage else [c.status == "queued"]  # not claimed meanwhile
    if unheld:
        conditions.append(or_(c.lease_owner.is_(None), c.lease_expires_at < now))
    if owner is not None:
        conditions.append(c.lease_owner == owner)
    return finish_failed(
        engine,
        run_id,
        status="cancelled",
        stage=stage,
        error=f"cancelled by {who} at {when} {where}; nothing was deployed",
        trace=None,
        actor=who,
        now=now,
        conditions=conditions,
    )


def cancel_requested(engine: Engine, run_ids: list[str]) -> set[str]:
    """Which of these runs have a cancel request (one query, for the lease keeper)."""
    if not run_ids:
        return set()
    c = training_runs.c
    query = select(c.id).where(c.id.in_(run_ids), c.cancel_requested_at.is_not(None))
    with engine.connect() as conn:
        return set(conn.execute(query).scalars())


def record_retry(
    engine: Engine,
    run_id: str,
    *,
    owner: str,
    stage: str,
    error: str,
    now: datetime,
    resume_at: datetime | None = None,
) -> int | None:
    """Count a failed attempt and give up the lease so the retry can claim the stage.

    `resume_at` is when the retry's message is due (the backoff); the run waits from then.
    Returns the new attempt number, or None if this owner no longer holds the run.
    """
    c = training_runs.c
    with engine.begin() as conn:
        run = get_run_in(conn, run_id)
        if run["lease_owner"] != owner:
            return None
        entry = attempt_entry(run, stage, "retry", error, owner, now)
        conn.execute(
            update(training_runs)
            .where(c.id == run_id, c.lease_owner == owner)
            .values(
                attempt=run["attempt"] + 1,
                attempts=[*(run["attempts"] or []), entry],
                lease_owner=None,
                lease_expires_at=None,
                waiting_since=resume_at or now,
                progress={"stage": stage, "retrying": True, "error": error[:500]},
            )
        )
        audit.record(
            conn,
            run["organization_id"],
            "training.retried",
            actor=owner,
            now=now,
            details={"runId": run_id, "stage": stage, "attempt": run["attempt"] + 1},
        )
    return int(run["attempt"]) + 1


def dead_runs(engine: Engine, now: datetime) -> list[RunRow]:
    """Running runs whose lease holder stopped renewing (its worker died or hangs)."""
    c = training_runs.c
    query = select(training_runs).where(
        c.status == "running", c.lease_owner.is_not(None), c.lease_expires_at < now
    )
    with engine.connect() as conn:
        return [as_row(RunRow, r) for r in conn.execute(query)]


def take_dead(engine: Engine, run: RunRow, *, stage: str, now: datetime) -> bool:
    """Free a dead run's lease and count the lost attempt, unless someone got there first."""
    c = training_runs.c
    why = "its worker stopped renewing the lease"
    entry = attempt_entry(run, stage, "worker_lost", why, run["lease_owner"], now)
    held_by_the_dead = [
        c.status == "running",
        c.lease_owner == run["lease_owner"],
        c.lease_expires_at < now,
    ]
    return _count_lost_attempt(engine, run, entry, held_by_the_dead, now=now)


def attempt_entry(
    run: RunRow, stage: str, kind: str, error: str, worker: str | None, now: datetime
) -> dict[str, Any]:
    """One line of a run's attempts log: which attempt, where, how it ended, on which worker."""
    return {
        "attempt": run["attempt"],
        "stage": stage,
        "kind": kind,
        "error": error[:2000],
        "worker": worker,
        "at": iso(now),
    }


def expire_lease(engine: Engine, run_id: str, *, owner: str, now: datetime) -> None:
    """Mark a run's lease as held by `owner` and already expired, so the reaper sees it again."""
    with engine.begin() as conn:
        conn.execute(
            update(training_runs)
            .where(training_runs.c.id == run_id, training_runs.c.lease_owner.is_(None))
            .values(lease_owner=owner, lease_expires_at=now)
        )


def stalled_runs(engine: Engine, waiting_before: datetime) -> list[RunRow]:
    """Active runs that no worker holds and that have waited for a message since before then."""
    c = training_runs.c
    query = select(training_runs).where(
        c.waiting_since < waiting_before,
        c.status.in_(ACTIVE_STATUSES),
        c.lease_owner.is_(None),
    )
    with engine.connect() as conn:
        return [as_row(RunRow, r) for r in conn.execute(query)]


def take_stalled(
    engine: Engine, run: RunRow, *, stage: str, waited_s: float, now: datetime
) -> bool:
    """Count the stalled attempt of a run whose stage was sent again, unless it moved meanwhile."""
    c = training_runs.c
    why = f"no worker took its {stage} message within {waited_s:.0f} s (the message was lost)"
    entry = attempt_entry(run, stage, "stalled", why, None, now)
    still_waiting = [
        c.status.in_(ACTIVE_STATUSES),
        c.lease_owner.is_(None),
        c.stages_done == run["stages_done"],
        c.attempt == run["attempt"],
    ]
    return _count_lost_attempt(engine, run, entry, still_waiting, now=now)


def _count_lost_attempt(
    engine: Engine,
    run: RunRow,
    entry: dict[str, Any],
    conditions: list[Any],
    *,
    now: datetime,
) -> bool:
    """Log a lost attempt, start the next one waiting for its message, audit it; one winner."""
    c = training_runs.c
    with engine.begin() as conn:
        result = conn.execute(
            update(training_runs)
            .where(c.id == run["id"], *conditions)
            .values(
                attempt=run["attempt"] + 1,
                attempts=[*(run["attempts"] or []), entry],
                lease_owner=None,
                lease_expires_at=None,
                waiting_since=now,
                progress={"stage": entry["stage"], "recovering": True},
            )
        )
        if result.rowcount != 1:
            return False
        details = {"runId": run["id"], "stage": entry["stage"], "attempt": run["attempt"] + 1}
        audit.record(
            conn,
            run["organization_id"],
            "training.recovered",
            actor="reaper",
            now=now,
            details={**details, "why": entry["error"]},
        )
    return True
