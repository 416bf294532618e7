"""Deployments in the database: making a version the organization's serving model in one
transaction, reading the deployed version under the organization row's lock, and finding the
deployed model file. The deploy stage (`stages/deploy.py`) does the files and the announcement."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, update

from training_tasks.db.tables import model_versions, organizations
from training_tasks.errors import ConflictError
from training_tasks.protocol.paths import ModelStore
from training_tasks.registry import audit, orgs, versions
from training_tasks.registry.rows import DeploymentState, OrgRow, VersionRow


def commit_deployment(
    engine: Engine,
    row: OrgRow,
    version: str,
    path: str,
    *,
    now: datetime,
    actor: str,
    event: str,
) -> int:
    """Make `version` (its deployed copy at `path`) current for the organization `row` was read
    for, mark the previous one superseded and audit it, in one transaction; the new sequence.

    Valid only if nobody deployed since `row` was read and garbage collection has not removed the
    version meanwhile; either refusal (ConflictError) rolls the whole transaction back.
    """
    org_id, sequence, previous = row["id"], int(row["deploy_sequence"]), row["current_version"]
    with engine.begin() as conn:
        swapped = conn.execute(
            update(organizations)
            .where(organizations.c.id == org_id, organizations.c.deploy_sequence == sequence)
            .values(
                current_version=version,
                previous_version=previous if previous != version else row["previous_version"],
                deploy_sequence=sequence + 1,
                updated_at=now,
            )
        )
        if swapped.rowcount != 1:
            raise ConflictError(
                f"another deployment of organization {org_id} committed first; version {version} "
                f"was not {event.replace('_', ' ')}. Check `trainctl status {org_id}` and try "
                "again if needed"
            )
        marked = conn.execute(
            update(model_versions)
            .where(
                model_versions.c.version == version,
                model_versions.c.status.in_(versions.DEPLOYABLE),
            )
            .values(status="deployed", deployed_at=now, deployed_path=path)
        )
        if marked.rowcount != 1:
            raise ConflictError(
                f"version {version} of organization {org_id} was removed or changed while it was "
                f"being deployed; nothing changed. See `trainctl versions {org_id}`"
            )
        if previous and previous != version:
            conn.execute(
                update(model_versions)
                .where(model_versions.c.version == previous)
                .values(status="superseded")
            )
        audit.record(
            conn,
            org_id,
            f"model.{event}",
            actor=actor,
            now=now,
            details={"version": version, "previous": previous, "sequence": sequence + 1},
        )
    return sequence + 1


@contextmanager
def locked_deployment(
    engine: Engine, org_id: str
) -> Iterator[tuple[DeploymentState, VersionRow] | None]:
    """The organization's deployment state and deployed version's record, with the organization
    row locked until the block ends; None when nothing is deployed."""
    with engine.begin() as conn:
        state = versions.lock_deployment(conn, org_id)
        if state is None or not state["current_version"]:
            yield None
            return
        yield state, versions.get_version_in(conn, state["current_version"])


def deployed_model_file(engine: Engine, store: ModelStore, org_id: str) -> Path | None:
    """The deployed copy of the organization's current version, if it has one on disk."""
    version = orgs.get_org_row(engine, org_id)["current_version"]
    if not version:
        return None
    path = store.deployed_model(org_id, version)
    return path if path.is_file() else None
