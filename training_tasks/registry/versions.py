"""Model versions: trained, validated or rejected, deployed, superseded."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update

from training_tasks.db.tables import model_versions
from training_tasks.errors import NotFoundError
from training_tasks.registry import audit


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
    status = "validated" if passed else "rejected"
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


def get_version(engine: Engine, version: str) -> dict[str, Any]:
    """One model version by id."""
    with engine.connect() as conn:
        row = conn.execute(
            select(model_versions).where(model_versions.c.version == version)
        ).first()
    if row is None:
        raise NotFoundError(
            f"model version {version} does not exist; list versions with `trainctl versions <org>`"
        )
    return dict(row._mapping)


def list_versions(engine: Engine, org_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """The organization's versions, newest first."""
    query = (
        select(model_versions)
        .where(model_versions.c.organization_id == org_id)
        .order_by(model_versions.c.created_at.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]
