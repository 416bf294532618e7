"""The deploy stage: copy, record, move the pointer, then tell prediction services.

Order matters for crash safety. The deployed copy is written first (temp name, fsync, rename);
then one database transaction makes the version current (compare-and-swap on the org's deploy
sequence, so two deploys at once have one winner); then the `current` symlink is replaced; then
the Redis key is set and the hot-swap message published. The database is the truth: `reconcile`
repairs the pointer and the Redis key from it after a crash between those steps.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import redis as redis_lib
from sqlalchemy import Engine, update

from training_tasks import hotswap
from training_tasks.db.tables import model_versions, organizations
from training_tasks.errors import ConflictError, DeployError
from training_tasks.fields import iso
from training_tasks.files import atomic_copy, replace_symlink, sha256_file
from training_tasks.paths import ModelStore
from training_tasks.registry import audit, orgs, versions

log = logging.getLogger(__name__)
DEPLOYABLE = ("validated", "superseded", "deployed")


def deploy(
    engine: Engine,
    redis: Any,
    store: ModelStore,
    org_id: str,
    version: str,
    *,
    now: datetime,
    actor: str,
    event: str = "deployed",
) -> hotswap.Deployment:
    """Make `version` the organization's serving model and announce it; returns the deployment."""
    record = _deployable(engine, org_id, version)
    deployed_path = _write_deployed_copy(store, org_id, version, record["sha256"])
    sequence = _commit(
        engine, org_id, version, str(deployed_path), now=now, actor=actor, event=event
    )
    replace_symlink(store.current_link(org_id), deployed_path.parent.name)
    deployment = hotswap.Deployment(
        organizationId=org_id,
        version=version,
        modelPath=str(deployed_path),
        sha256=record["sha256"],
        deployedAt=iso(now),
        sequence=sequence,
    )
    _announce(redis, deployment, event)
    return deployment


def _deployable(engine: Engine, org_id: str, version: str) -> dict[str, Any]:
    record = versions.get_version(engine, version)
    if record["organization_id"] != org_id:
        raise DeployError(
            f"version {version} belongs to organization {record['organization_id']}, not {org_id}; "
            "deploy one of this organization's versions (`trainctl versions " + org_id + "`)"
        )
    if record["status"] not in DEPLOYABLE:
        raise DeployError(
            f"version {version} of organization {org_id} is {record['status']}; only a validated "
            "version can be deployed, the current model keeps serving"
        )
    return record


def _write_deployed_copy(store: ModelStore, org_id: str, version: str, sha256: str) -> Any:
    src = store.version_model(org_id, version)
    dst = store.deployed_model(org_id, version)
    if dst.exists() and sha256_file(dst) == sha256:
        return dst
    if not src.is_file():
        raise DeployError(
            f"model file {src} of organization {org_id} version {version} is missing; "
            "train the organization again"
        )
    if sha256_file(src) != sha256:
        raise DeployError(
            f"model file {src} of organization {org_id} version {version} does not match the "
            "sha256 recorded at training; it was changed on disk, train again"
        )
    atomic_copy(src, dst)
    return dst


def _commit(
    engine: Engine, org_id: str, version: str, path: str, *, now: datetime, actor: str, event: str
) -> int:
    row = orgs.get_org_row(engine, org_id)
    sequence, previous = int(row["deploy_sequence"]), row["current_version"]
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
                "was not deployed. Check `trainctl status "
                + org_id
                + "` and deploy again if needed"
            )
        if previous and previous != version:
            conn.execute(
                update(model_versions)
                .where(model_versions.c.version == previous)
                .values(status="superseded")
            )
        conn.execute(
            update(model_versions)
            .where(model_versions.c.version == version)
            .values(status="deployed", deployed_at=now, deployed_path=path)
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


def _announce(redis: Any, deployment: hotswap.Deployment, event: str) -> None:
    try:
        hotswap.publish(redis, deployment, event)
    except redis_lib.RedisError as exc:
        # The database already holds the deployment; reconcile sets the key when Redis is back.
        log.warning(
            "organization %s version %s is deployed but the hot-swap message was not sent (%s); "
            "run `trainctl reconcile` once Redis answers",
            deployment.organizationId,
            deployment.version,
            exc,
        )


def reconcile(engine: Engine, redis: Any, store: ModelStore) -> list[str]:
    """Bring every org's `current` pointer and Redis key in line with the database; returns fixes."""
    fixes: list[str] = []
    for org_id in orgs.list_org_ids(engine):
        row = orgs.get_org_row(engine, org_id)
        version = row["current_version"]
        if not version:
            continue
        record = versions.get_version(engine, version)
        link, target = store.current_link(org_id), f"deployed_{version}"
        if not link.is_symlink() or link.readlink().name != target:
            replace_symlink(link, target)
            fixes.append(f"{org_id}: pointed current at {target}")
        stored = hotswap.read_current(redis, org_id)
        if stored is None or stored.sequence < row["deploy_sequence"]:
            deployment = hotswap.Deployment(
                organizationId=org_id,
                version=version,
                modelPath=record["deployed_path"] or str(store.deployed_model(org_id, version)),
                sha256=record["sha256"],
                deployedAt=iso(record["deployed_at"] or row["updated_at"]),
                sequence=int(row["deploy_sequence"]),
            )
            hotswap.publish(redis, deployment, "deployed")
            fixes.append(f"{org_id}: set Redis key to {version} (sequence {deployment.sequence})")
    return fixes
