"""Model versions: trained, validated or rejected, deployed, superseded, and removed by gc."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection, Engine, insert, select, update

from training_tasks.db.tables import model_versions, organizations
from training_tasks.errors import NotFoundError
from training_tasks.registry import audit
from training_tasks.registry.rows import (
    DEPLOYABLE_STATUSES,
    DeploymentState,
    VersionRow,
    VersionStatus,
    as_row,
)

DEPLOYABLE = DEPLOYABLE_STATUSES  # the name the deploy stage uses
# Garbage collection deleted the version's files; the row stays for the record.
REMOVED: Final = "removed"


def record_trained(
    engine: Engine,
    *,
    version: str,
    org_id: str,
    run_id: str,
    model_path: str,
    sha256: str,
    size_bytes: int,
    metrics: dict[str, Any],
    now: datetime,
) -> None:
    """Record a freshly trained model (idempotent for a repeated train stage)."""
    with engine.begin() as conn:
        conn.execute(model_versions.delete().where(model_versions.c.version == version))
        conn.execute(
            insert(model_versions).values(
                version=version,
                organization_id=org_id,
                run_id=run_id,
                status="trained",
                model_path=model_path,
                sha256=sha256,
                size_bytes=size_bytes,
                metrics=metrics,
                created_at=now,
            )
        )


def record_validation(
    engine: Engine, version: str, *, report: dict[str, Any], passed: bool, actor: str, now: datetime
) -> None:
    """Store the service's validation report and the verdict."""
    status: VersionStatus = "validated" if passed else "rejected"
    with engine.begin() as conn:
        row = conn.execute(
            update(model_versions)
            .where(model_versions.c.version == version)
            .values(status=status, validation=report, validated_at=now)
            .returning(model_versions.c.organization_id)
        ).first()
        if row is None:
            raise NotFoundError(f"model version {version} is not recorded")
        audit.record(
            conn,
            row[0],
            f"validation.{'passed' if passed else 'rejected'}",
            actor=actor,
            now=now,
            details={"version": version, "failures": report.get("failures", [])},
        )


def get_version(engine: Engine, version: str) -> VersionRow:
    """One model version by id."""
    with engine.connect() as conn:
        return get_version_in(conn, version)


def get_version_in(conn: Connection, version: str) -> VersionRow:
    """One model version by id, inside the caller's transaction."""
    row = conn.execute(select(model_versions).where(model_versions.c.version == version)).first()
    if row is None:
        raise NotFoundError(
            f"model version {version} does not exist; list versions with `trainctl versions <org>`"
        )
    return as_row(VersionRow, row)


def list_versions(engine: Engine, org_id: str, limit: int = 50) -> list[VersionRow]:
    """The organization's versions, newest first."""
    query = (
        select(model_versions)
        .where(model_versions.c.organization_id == org_id)
        .order_by(model_versions.c.created_at.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        return [as_row(VersionRow, row) for row in conn.execute(query)]


def mark_removed(conn: Connection, version: str, *, now: datetime) -> bool:
    """Mark a version removed in the caller's transaction; False if it is deployed or removed."""
    result = conn.execute(
        update(model_versions)
        .where(
            model_versions.c.version == version,
            model_versions.c.status.not_in(("deployed", REMOVED)),
        )
        .values(status=REMOVED, removed_at=now)
    )
    return result.rowcount == 1


def removed_versions(engine: Engine, org_id: str) -> list[str]:
    """The organization's versions already marked removed (their files may still need deleting)."""
    query = select(model_versions.c.version).where(
        model_versions.c.organization_id == org_id, model_versions.c.status == REMOVED
    )
    with engine.connect() as conn:
        return list(conn.execute(query).scalars())


def lock_deployment(conn: Connection, org_id: str) -> DeploymentState | None:
    """Lock the org's deployment state until the transaction ends; its current and previous version."""
    # A no-op UPDATE locks the row on PostgreSQL and takes the write lock on SQLite, which a
    # SELECT ... FOR UPDATE would not.
    row = conn.execute(
        update(organizations)
        .where(organizations.c.id == org_id)
        .values(deploy_sequence=organizations.c.deploy_sequence)
        .returning(
            organizations.c.current_version,
            organizations.c.previous_version,
            organizations.c.deploy_sequence,
        )
    ).first()
    return None if row is None else as_row(DeploymentState, row)
