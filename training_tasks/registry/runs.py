"""The training log: one row per run, with a lease so a duplicate delivery does nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from training_tasks.db.tables import training_runs
from training_tasks.errors import ConflictError, LeaseHeld, NotFoundError, RunFinished
from training_tasks.fields import iso, iso_or_none
from training_tasks.registry import audit
from training_tasks.registry.rows import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    FinishedStatus,
    RunRow,
    as_row,
)

STAGES = ("extract", "train", "validate", "deploy")


def create_run(
    engine: Engine,
    *,
    run_id: str,
    org_id: str,
    version: str,
    config: dict[str, Any],
    trigger: str,
    auto_deploy: bool,
    actor: str,
    now: datetime,
) -> RunRow:
    """Insert a queued run; refuse it if the organization already has a queued or running one."""
    try:
        with engine.begin() as conn:
            insert_run(
                conn,
                run_id=run_id,
                org_id=org_id,
                version=version,
                config=config,
                trigger=trigger,
                auto_deploy=auto_deploy,
                actor=actor,
                now=now,
            )
    except IntegrityError:
        active = active_run(engine, org_id)
        if active is None:
            raise
        raise ConflictError(active_run_message(org_id, active)) from None
    return get_run(engine, run_id)


def insert_run(
    conn: Connection,
    *,
    run_id: str,
    org_id: str,
    version: str,
    config: dict[str, Any],
    trigger: str,
    auto_deploy: bool,
    actor: str,
    now: datetime,
    schedule_slot: datetime | None = None,
) -> None:
    """Insert a queued run and its audit event inside the caller's transaction."""
    conn.execute(
        insert(training_runs).values(
            id=run_id,
            organization_id=org_id,
            version=version,
            status="queued",
            config=config,
            trigger=trigger,
            auto_deploy=auto_deploy,
            queued_at=now,
            stages_done=0,
            attempt=1,
            progress={"stage": "queued"},
            stage_timings={},
            schedule_slot=schedule_slot,
            waiting_since=now,
        )
    )
    details: dict[str, Any] = {"runId": run_id, "version": version, "trigger": trigger}
    if schedule_slot is not None:
        details["scheduleSlot"] = iso(schedule_slot)
    audit.record(conn, org_id, "training.requested", actor=actor, now=now, details=details)


def active_run_message(org_id: str, active: Mapping[Any, Any]) -> str:
    """Why a new run of `org_id` cannot start while `active` is queued or running."""
    return (
        f"organization {org_id} already has run {active['id']} {active['status']} "
        f"(version {active['version']}, queued at {iso(active['queued_at'])}); "
        "wait for it to finish or cancel it before starting another"
    )


def get_run(engine: Engine, run_id: str) -> RunRow:
    """One run by id."""
    with engine.connect() as conn:
        row = conn.execute(select(training_runs).where(training_runs.c.id == run_id)).first()
    if row is None:
        raise NotFoundError(
            f"training run {run_id} does not exist; list runs with `trainctl history <org>`"
        )
    return as_row(RunRow, row)


def active_run(engine: Engine, org_id: str) -> RunRow | None:
    """The organization's queued or running run, if any."""
    query = select(training_runs).where(
        training_runs.c.organization_id == org_id, training_runs.c.status.in_(ACTIVE_STATUSES)
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return None if row is None else as_row(RunRow, row)


def list_runs(engine: Engine, org_id: str, limit: int = 20) -> list[RunRow]:
    """The organization's newest runs, newest first."""
    query = (
        select(training_runs)
        .where(training_runs.c.organization_id == org_id)
        .order_by(training_runs.c.queued_at.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        return [as_row(RunRow, row) for row in conn.execute(query)]


def claim_stage(
    engine: Engine, run_id: str, stage: str, *, owner: str, worker: str, now: datetime, ttl_s: float
) -> RunRow:
    """Take the run's lease for `stage`, or raise RunFinished / LeaseHeld if this message is stale.

    One conditional UPDATE does it, so two deliveries of one message cannot both win.
    """
    index = STAGES.index(stage)
    c = training_runs.c
    claimed = (
        update(training_runs)
        .where(
            c.id == run_id,
            c.status.in_(ACTIVE_STATUSES),
            c.stages_done == index,
            or_(c.lease_owner.is_(None), c.lease_expires_at < now, c.lease_owner == owner),
        )
        .values(
            status="running",
            stage=stage,
            lease_owner=owner,
            worker=worker,
            lease_expires_at=now + timedelta(seconds=ttl_s),
            waiting_since=None,
            progress={"stage": stage},
            started_at=func.coalesce(c.started_at, now),
        )
        .returning(*training_runs.c)
    )
    with engine.begin() as conn:
        row = conn.execute(claimed).first()
        if row is not None and index == 0:
            audit.record(
                conn,
                row.organization_id,
                "training.started",
                actor=owner,
                now=now,
                details={"runId": run_id, "worker": worker, "attempt": row.attempt},
            )
    if row is not None:
        return as_row(RunRow, row)
    run = get_run(engine, run_id)
    if run["status"] in FINISHED_STATUSES or run["stages_done"] > index:
        raise RunFinished(f"run {run_id} is {run['status']} past {stage}; nothing to do")
    if run["stages_done"] < index:
        raise RunFinished(f"run {run_id} has not finished the stage before {stage}; nothing to do")
    raise LeaseHeld(
        f"run {run_id} stage {stage} is held by {run['lease_owner']} until "
        f"{iso_or_none(run['lease_expires_at'])}"
    )


def get_run_in(conn: Connection, run_id: str) -> RunRow:
    """One run by id, inside the caller's transaction."""
    row = conn.execute(select(training_runs).where(training_runs.c.id == run_id)).one()
    return as_row(RunRow, row)


def renew_lease(engine: Engine, run_id: str, *, owner: str, now: datetime, ttl_s: float) -> bool:
    """Extend the lease this owner holds; False if it was lost."""
    query = (
        update(training_runs)
        .where(training_runs.c.id == run_id, training_runs.c.lease_owner == owner)
        .values(lease_expires_at=now + timedelta(seconds=ttl_s))
    )
    with engine.begin() as conn:
        return bool(conn.execute(query).rowcount)


def set_progress(engine: Engine, run_id: str, progress: dict[str, Any]) -> None:
    """Store the latest progress of a running run (stage, iteration, rows...)."""
    query = (
        update(training_runs)
        .where(training_runs.c.id == run_id, training_runs.c.status == "running")
        .values(progress=progress)
    )
    with engine.begin() as conn:
        conn.execute(query)


def complete_stage(
    engine: Engine,
    run_id: str,
    stage: str,
    *,
    owner: str,
    started_at: datetime,
    now: datetime,
    updates: dict[str, Any] | None = None,
    final_status: FinishedStatus | None = None,
    work_s: float | None = None,
    claimed: RunRow | None = None,
) -> None:
    """Mark `stage` done and release the lease; with `final_status`, finish the run too.

    `claimed` is the run as this owner claimed it; its stage timings are still current, because
    nobody else writes them while the lease is held, so they need not be read again.
    """
    index = STAGES.index(stage)
    c = training_runs.c
    with engine.begin() as conn:
        run = claimed if claimed is not None else get_run_in(conn, run_id)
        timings = dict(run["stage_timings"] or {})
        timings[stage] = {
            "startedAt": iso(started_at),
            "seconds": round((now - started_at).total_seconds(), 4),
            "workSeconds": None if work_s is None else round(work_s, 4),
        }
        values: dict[str, Any] = dict(
            stages_done=index + 1,
            lease_owner=None,
            lease_expires_at=None,
            stage_timings=timings,
            waiting_since=now,  # for the next stage's message
            **(updates or {}),
        )
        if final_status:
            values.update(
                status=final_status, finished_at=now, progress={"stage": "done"}, waiting_since=None
            )
        result = conn.execute(
            update(training_runs)
            .where(and_(c.id == run_id, c.lease_owner == owner, c.stages_done == index))
            .values(**values)
        )
        if result.rowcount != 1:
            raise LeaseHeld(f"run {run_id} lost its lease during {stage}; another delivery owns it")
        if final_status:
            audit.record(
                conn,
                run["organization_id"],
                f"training.{final_status}",
                actor=owner,
                now=now,
                details={"runId": run_id, "version": run["version"]},
            )


def finish_failed(
    engine: Engine,
    run_id: str,
    *,
    status: FinishedStatus,
    stage: str | None,
    error: str,
    trace: str | None,
    actor: str,
    now: datetime,
    updates: dict[str, Any] | None = None,
    only_if: dict[str, Any] | None = None,
    conditions: Sequence[ColumnElement[bool]] = (),
    last_attempt: dict[str, Any] | None = None,
) -> bool:
    """Finish a run as failed, rejected or cancelled, unless it already finished; True if it did.

    `only_if` adds column equalities (for example that the run is still queued), `conditions`
    any other SQL conditions;
    `last_attempt` is appended to the run's attempts log (the attempt that ended it).
    """
    c = training_runs.c
    guards = [*(c[name] == value for name, value in (only_if or {}).items()), *conditions]
    values = dict(updates or {})
    with engine.begin() as conn:
        if last_attempt is not None:
            logged = conn.execute(select(c.attempts).where(c.id == run_id)).scalar()
            values["attempts"] = [*(logged or []), last_attempt]
        result = conn.execute(
            update(training_runs)
            .where(c.id == run_id, c.status.in_(ACTIVE_STATUSES), *guards)
            .values(
                status=status,
                error=error,
                error_trace=trace,
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
                waiting_since=None,
                progress={"stage": stage or "queued", "failed": True},
                **values,
            )
        )
        if result.rowcount != 1:
            return False
        run = get_run_in(conn, run_id)
        audit.record(
            conn,
            run["organization_id"],
            f"training.{status}",
            actor=actor,
            now=now,
            details={"runId": run_id, "version": run["version"], "stage": stage, "error": error},
        )
    return True


def set_task_id(engine: Engine, run_id: str, task_id: str) -> None:
    """Remember the Celery id of the chain's first task (for Flower and cancel)."""
    with engine.begin() as conn:
        conn.execute(
            update(training_runs).where(training_runs.c.id == run_id).values(task_id=task_id)
        )


def set_metrics(engine: Engine, run_id: str, metrics: dict[str, Any]) -> None:
    """Store the run's metrics (also for a run that is about to be rejected)."""
    with engine.begin() as conn:
        conn.execute(
            update(training_runs).where(training_runs.c.id == run_id).values(metrics=metrics)
        )


def last_extract(engine: Engine, org_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The data stats and wire config of the organization's newest run that extracted data."""
    c = training_runs.c
    query = (
        select(c.data_stats, c.config)
        .where(c.organization_id == org_id, c.data_stats.is_not(None))
        .order_by(c.queued_at.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        last = conn.execute(query).first()
    return None if last is None else (last.data_stats, last.config)
