"""Stopping and recovering runs: cancel requests, counted retries and runs whose worker died.

Every attempt that ends without finishing the run is counted on it (`attempt`) and described in
its `attempts` log. A run gets at most MAX_ATTEMPTS attempts, whether it failed transiently or its
worker died, so a run that keeps killing its worker stops instead of looping.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select, update

from training_tasks.db.tables import ACTIVE_STATUSES, training_runs
from training_tasks.errors import NotFoundError
from training_tasks.fields import iso
from training_tasks.registry import audit
from training_tasks.registry.runs import finish_failed, get_run_in

MAX_ATTEMPTS = 3  # the first try and two retries


def request_cancel(engine: Engine, org_id: str, *, actor: str, now: datetime) -> dict[str, Any]:
    """Cancel the organization's active run: at once if still queued, else ask its worker.

    Returns `{runId, version, status}` with status `cancelled` or `cancelling`. The request is
    stored, so it holds across worker restarts.
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
        run = dict(found._mapping)
        summary = {"runId": run["id"], "version": run["version"]}
        if run["cancel_requested_at"] is not None:
            return {**summary, "status": "cancelling", "requestedBy": run["cancel_requested_by"]}
        conn.execute(
            update(training_runs)
            .where(c.id == run["id"])
            .values(cancel_requested_at=now, cancel_requested_by=actor)
        )
        audit.record(
            conn, org_id, "training.cancel_requested", actor=actor, now=now, details=summary
        )
    # A run nobody has claimed yet is finished here; the message, when it comes, finds it done.
    if run["status"] == "queued" and finish_cancelled(engine, run["id"], stage=None, now=now):
        return {**summary, "status": "cancelled"}
    return {**summary, "status": "cancelling"}


def finish_cancelled(engine: Engine, run_id: str, *, stage: str | None, now: datetime) -> bool:
    """Finish a run whose cancel was requested; True if this call finished it."""
    with engine.connect() as conn:
        run = get_run_in(conn, run_id)
    who = run["cancel_requested_by"] or "an operator"
    when = iso(run["cancel_requested_at"]) if run["cancel_requested_at"] else iso(now)
    where = f"during {stage}" if stage else "before it started"
    guard = None if stage else {"status": "queued"}  # not claimed meanwhile
    return finish_failed(
        engine,
        run_id,
        status="cancelled",
        stage=stage,
        error=f"cancelled by {who} at {when} {where}; nothing was deployed",
        trace=None,
        actor=who,
        now=now,
        only_if=guard,
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
    engine: Engine, run_id: str, *, owner: str, stage: str, error: str, now: datetime
) -> int | None:
    """Count a failed attempt and give up the lease so the retry can claim the stage.

    Returns the new attempt number, or None if this owner no longer holds the run.
    """
    c = training_runs.c
    with engine.begin() as conn:
        run = get_run_in(conn, run_id)
        if run["lease_owner"] != owner:
            return None
        entry = _attempt(run, stage, "retry", error, owner, now)
        conn.execute(
            update(training_runs)
            .where(c.id == run_id, c.lease_owner == owner)
            .values(
                attempt=run["attempt"] + 1,
                attempts=[*(run["attempts"] or []), entry],
                lease_owner=None,
                lease_expires_at=None,
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


def dead_runs(engine: Engine, now: datetime) -> list[dict[str, Any]]:
    """Running runs whose lease holder stopped renewing (its worker died or hangs)."""
    c = training_runs.c
    query = select(training_runs).where(
        c.status == "running", c.lease_owner.is_not(None), c.lease_expires_at < now
    )
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def take_dead(engine: Engine, run: dict[str, Any], *, stage: str, now: datetime) -> bool:
    """Free a dead run's lease and count the lost attempt, unless someone got there first."""
    c = training_runs.c
    entry = _attempt(
        run, stage, "worker_lost", "its worker stopped renewing the lease", run["lease_owner"], now
    )
    with engine.begin() as conn:
        result = conn.execute(
            update(training_runs)
            .where(
                c.id == run["id"],
                c.status == "running",
                c.lease_owner == run["lease_owner"],
                c.lease_expires_at < now,
            )
            .values(
                attempt=run["attempt"] + 1,
                attempts=[*(run["attempts"] or []), entry],
                lease_owner=None,
                lease_expires_at=None,
                progress={"stage": stage, "recovering": True},
            )
        )
        if result.rowcount != 1:
            return False
        audit.record(
            conn,
            run["organization_id"],
            "training.recovered",
            actor="reaper",
            now=now,
            details={"runId": run["id"], "stage": stage, "attempt": run["attempt"] + 1},
        )
    return True


def _attempt(
    run: dict[str, Any], stage: str, kind: str, error: str, worker: str | None, now: datetime
) -> dict[str, Any]:
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
