"""The deploy stage: copy, record, move the pointer, then tell prediction services.

The SQL is in `registry/deployments.py`. Order matters for crash safety. The deployed copy is written first (temp name, fsync, rename);
then one database transaction makes the version current (compare-and-swap on the org's deploy
sequence read before any check, so two deploys or rollbacks at once have one winner); then the
`current` symlink is pointed at what the database holds, under the organization row's lock; then
the Redis key is set and the hot-swap message published (newer sequence only). The database is
the truth: `reconcile` repairs the pointer and the Redis key from it after a crash between steps.
With an object store (`store.objects`) the deployed copy is also put there (write-once) before the
commit, the hot-swap message names its key (`modelKey`), and there is no `current` link: a host's
ML_BASE_PATH is only its working folder. A version trained or deployed on another host is fetched
from the store first, checked against the sha256 recorded at training.
A rollback is the same deployment of an earlier version, announced as `rolled_back`.

Deploying the version that is already deployed changes nothing: no sequence, audit row, key or
message. It only repairs what a crash may have left behind for that version (its deployed copy,
the `current` link, a Redis key that is missing or older than the database), as `reconcile`
would. A rollback to the deployed version stays a refusal: a rollback asks for another version.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import redis as redis_lib

from training_tasks.db.engine import Engine
from training_tasks.errors import ConflictError, DeployError, NotFoundError, VersionNotFound
from training_tasks.fields import iso
from training_tasks.files import (
    UnsafeFile,
    atomic_copy,
    read_script_output,
    replace_symlink,
    sha256_file,
    write_json_atomic,
)
from training_tasks.protocol import hotswap
from training_tasks.protocol.paths import ModelStore
from training_tasks.registry import deployments, orgs, versions
from training_tasks.registry.rows import DeploymentState, OrgRow, VersionRow
from training_tasks.stages.deployed_objects import fetch_copy, model_key, publish_copy

log = logging.getLogger(__name__)
MAX_RECORD_BYTES = 64 * 1024  # deployment.json is a few hundred bytes
DEPLOYABLE = versions.DEPLOYABLE


@dataclass(frozen=True)
class DeployOutcome:
    """What a deploy did: the deployment serving now, whether this call made it, what it repaired."""

    deployment: hotswap.Deployment
    changed: bool
    repaired: tuple[str, ...] = ()


def deploy(
    engine: Engine,
    redis: Any,
    store: ModelStore,
    org_id: str,
    version: str,
    *,
    now: datetime,
    actor: str,
    model_path: Path | None = None,
) -> hotswap.Deployment:
    """Make `version` the organization's serving model and announce it; returns the deployment.

    With `model_path`, the file must be this version's own model or deployed copy. The version
    already deployed is left as it is (see `deploy_version`).
    """
    outcome = deploy_version(
        engine, redis, store, org_id, version, now=now, actor=actor, model_path=model_path
    )
    return outcome.deployment


def deploy_version(
    engine: Engine,
    redis: Any,
    store: ModelStore,
    org_id: str,
    version: str,
    *,
    now: datetime,
    actor: str,
    model_path: Path | None = None,
    once: bool = False,
) -> DeployOutcome:
    """Deploy `version` unless it is already deployed; says whether anything changed.

    With `once` (a pipeline's deploy stage delivered again), a version that was deployed before
    and has since been replaced is not deployed again: somebody chose the newer one after it.
    """
    if model_path is not None:
        store.check_inside_org(org_id, Path(model_path))
    row = orgs.get_org_row(engine, org_id)
    record = _deployable(engine, org_id, version)
    if model_path is not None:
        check_model_path(store, record, Path(model_path))
    if row["current_version"] == version:
        return _unchanged(engine, redis, store, row, record)
    if once and record["deployed_at"] is not None and row["current_version"]:
        current = versions.get_version(engine, row["current_version"])
        serving = registered(store, org_id, current, int(row["deploy_sequence"]), row["updated_at"])
        return DeployOutcome(serving, changed=False)
    try:
        deployment = _deploy_record(
            engine, redis, store, row, record, now=now, actor=actor, event="deployed"
        )
    except ConflictError:
        latest = orgs.get_org_row(engine, org_id)
        if latest["current_version"] != version:
            raise
        return _unchanged(engine, redis, store, latest, record)  # a deploy of it won the race
    return DeployOutcome(deployment, changed=True)


def already_deployed(org_id: str, version: str, sequence: int) -> str:
    """How deploy and rollback both say that `version` is the deployed one."""
    return (
        f"version {version} is already the deployed version of organization {org_id} "
        f"(sequence {sequence})"
    )


def _unchanged(
    engine: Engine, redis: Any, store: ModelStore, row: OrgRow, record: VersionRow
) -> DeployOutcome:
    """The deployed version asked for again: repair what a crash left, change nothing else."""
    org_id, version, sha256 = row["id"], record["version"], record["sha256"]
    repaired: list[str] = []
    copy = store.deployed_model(org_id, version)
    if store.objects is not None:
        key = store.key_of(org_id, copy)
        if not store.objects.exists(org_id, key):
            _write_deployed_copy(store, org_id, version, sha256)
            repaired.append(f"wrote {store.objects.describe(key)}")
    elif not (copy.is_file() and sha256_file(copy) == sha256):
        _write_deployed_copy(store, org_id, version, sha256)
        repaired.append(f"rewrote {copy}")
    moved = point_current(engine, store, org_id)
    if moved:
        repaired.append(f"pointed current at {moved}")
    deployment = registered(store, org_id, record, int(row["deploy_sequence"]), row["updated_at"])
    try:
        if restore_key(redis, deployment):
            repaired.append(f"set the Redis key (sequence {deployment.sequence})")
    except redis_lib.RedisError as exc:
        log.warning(
            "organization %s: could not check the Redis key of deployed version %s (%s); run "
            "`trainctl reconcile` once Redis answers",
            org_id,
            version,
            exc,
        )
    return DeployOutcome(deployment, changed=False, repaired=tuple(repaired))


def rollback(
    engine: Engine,
    redis: Any,
    store: ModelStore,
    org_id: str,
    version: str | None = None,
    *,
    now: datetime,
    actor: str,
) -> hotswap.Deployment:
    """Deploy an earlier version again (default: the previous one), announced as `rolled_back`."""
    row = orgs.get_org_row(engine, org_id)
    target = version or row["previous_version"]
    if not target:
        raise DeployError(
            f"organization {org_id} has no previous version to roll back to (deployed: "
            f"{row['current_version'] or 'none'}); name a version: `trainctl rollback {org_id} "
            f"VERSION` (see `trainctl versions {org_id}`)"
        )
    record = _own_version(engine, org_id, target, "rolled back")
    if target == row["current_version"]:
        raise DeployError(
            f"{already_deployed(org_id, target, row['deploy_sequence'])}; nothing was rolled "
            f"back. Name another version from `trainctl versions {org_id}`"
        )
    _check_status(record, org_id, "rolled back to")
    return _deploy_record(
        engine, redis, store, row, record, now=now, actor=actor, event="rolled_back"
    )


def check_model_path(store: ModelStore, record: VersionRow, path: Path) -> Path:
    """Refuse `path` unless it is inside the org's folders and is this version's model file."""
    org_id, version = record["organization_id"], record["version"]
    resolved = store.check_inside_org(org_id, path)
    own = [Path(record["model_path"]), store.deployed_model(org_id, version)]
    if record["deployed_path"]:
        own.append(Path(record["deployed_path"]))
    if resolved not in {candidate.resolve() for candidate in own}:
        raise DeployError(
            f"{path} is not the model file of version {version} of organization {org_id}; "
            f"give {own[0]} or {own[1]}, or leave the model path out. Nothing was deployed"
        )
    return resolved


def _deployable(engine: Engine, org_id: str, version: str) -> VersionRow:
    record = _own_version(engine, org_id, version, "deployed")
    _check_status(record, org_id, "deployed")
    return record


def _own_version(engine: Engine, org_id: str, version: str, action: str) -> VersionRow:
    """The version's record if it is one of the organization's own; else VersionNotFound.

    Another organization's version is refused exactly like one that does not exist: a refusal
    never tells one organization what another one has.
    """
    try:
        record = versions.get_version(engine, version)
    except NotFoundError:
        record = None
    if record is None or record["organization_id"] != org_id:
        raise VersionNotFound(
            f"version {version} is not a version of organization {org_id}; nothing was {action}. "
            f"List its versions with `trainctl versions {org_id}`"
        )
    return record


def _check_status(record: VersionRow, org_id: str, action: str) -> None:
    version, status = record["version"], record["status"]
    if status == versions.REMOVED:
        removed_at = iso(record["removed_at"]) if record["removed_at"] else "an earlier run"
        raise DeployError(
            f"version {version} of organization {org_id} cannot be {action}: garbage collection "
            f"removed its files at {removed_at}. Pick a version that is still kept "
            f"(`trainctl versions {org_id}`) or train again; the current model keeps serving"
        )
    if status == "rejected":
        failures = "; ".join((record["validation"] or {}).get("failures") or [])
        raise DeployError(
            f"version {version} of organization {org_id} is rejected (it failed validation"
            f"{': ' + failures[:300] if failures else ''}) and cannot be {action}; the current "
            f"model keeps serving. Pick a validated version from `trainctl versions {org_id}`"
        )
    if status not in DEPLOYABLE:
        raise DeployError(
            f"version {version} of organization {org_id} is {status}; only a validated version "
            f"can be {action}, the current model keeps serving"
        )


def _deploy_record(
    engine: Engine,
    redis: Any,
    store: ModelStore,
    row: OrgRow,
    record: VersionRow,
    *,
    now: datetime,
    actor: str,
    event: str,
) -> hotswap.Deployment:
    org_id, version = row["id"], record["version"]
    deployed_path = _write_deployed_copy(store, org_id, version, record["sha256"])
    sequence = deployments.commit_deployment(
        engine, row, version, str(deployed_path), now=now, actor=actor, event=event
    )
    point_current(engine, store, org_id)
    deployment = hotswap.Deployment(
        organizationId=org_id,
        version=version,
        modelPath=str(deployed_path),
        sha256=record["sha256"],
        deployedAt=iso(now),
        sequence=sequence,
        modelKey=model_key(store, org_id, version),
    )
    _announce(redis, deployment, event)
    return deployment


def _write_deployed_copy(store: ModelStore, org_id: str, version: str, sha256: str) -> Path:
    """The deployed copy, written (and, with an object store, published) if it is not yet."""
    src = store.version_model(org_id, version)
    dst = store.deployed_model(org_id, version)
    if dst.exists() and sha256_file(dst) == sha256:
        publish_copy(store, org_id, dst)
        return dst
    if store.objects is not None:
        if fetch_copy(store, org_id, dst, sha256):  # deployed before, perhaps on another host
            return dst
        fetch_copy(store, org_id, src, sha256)  # trained on another host
    if not src.is_file():
        where = " here or in the object store" if store.objects is not None else ""
        raise DeployError(
            f"model file {src} of organization {org_id} version {version} is missing{where}; "
            "train the organization again"
        )
    if sha256_file(src) != sha256:
        raise DeployError(
            f"model file {src} of organization {org_id} version {version} does not match the "
            "sha256 recorded at training; it was changed on disk, train again"
        )
    atomic_copy(src, dst)
    publish_copy(store, org_id, dst)
    return dst


def point_current(engine: Engine, store: ModelStore, org_id: str) -> str | None:
    """Point `current` at the database's deployed version under the org row's lock; new target or None.

    Every deployer does this after its commit, and the lock keeps one from reading the database
    and then overwriting a newer deployer's link: the last to run sets what the database says.
    With an object store there is no link: each host's folder is only a cache.
    """
    if store.objects is not None:
        # The database and the Redis key are the pointer; no host's link is. No store request
        # here either: reconcile runs in a worker's main process, which must not make one before
        # it forks its pool (see protocol.object_store).
        return None
    with deployments.locked_deployment(engine, org_id) as locked:
        if locked is None:
            return None
        state, record = locked
        version = record["version"]
        _record_deployment(store, org_id, record, state)
        link, target = store.current_link(org_id), f"deployed_{version}"
        if link.is_symlink() and os.readlink(link) == target:
            return None
        replace_symlink(link, target)
        return target


def _record_deployment(
    store: ModelStore, org_id: str, record: VersionRow, state: DeploymentState
) -> None:
    """Write `deployed_<version>/deployment.json`: what the Redis key says, for a cache that
    finds no key (Redis lost it) and falls back on the `current` link."""
    deployment = registered(store, org_id, record, int(state["deploy_sequence"]))
    path = store.deployed_dir(org_id, record["version"]) / hotswap.DEPLOYMENT_FILE
    doc = json.loads(deployment.to_json())
    # What lies on disk is read like any file not written here: never a link, FIFO or huge file.
    with contextlib.suppress(OSError, ValueError, UnsafeFile):
        if json.loads(read_script_output(path, MAX_RECORD_BYTES, "the deployment record")) == doc:
            return  # already says this (a reconcile with nothing to repair)
    write_json_atomic(path, doc)  # replaces whatever was there, link or FIFO, by a new file


def registered(
    store: ModelStore,
    org_id: str,
    record: VersionRow,
    sequence: int,
    changed_at: datetime | None = None,
) -> hotswap.Deployment:
    """The deployment of a version as the registry holds it (what the Redis key should say)."""
    version = record["version"]
    deployed_at = record["deployed_at"] or changed_at
    return hotswap.Deployment(
        organizationId=org_id,
        version=version,
        modelPath=record["deployed_path"] or str(store.deployed_model(org_id, version)),
        sha256=record["sha256"],
        deployedAt=iso(deployed_at) if deployed_at else "",
        sequence=sequence,
        modelKey=model_key(store, org_id, version),
    )


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
        moved = point_current(engine, store, org_id)
        if moved:
            fixes.append(f"{org_id}: pointed current at {moved}")
        row = orgs.get_org_row(engine, org_id)
        version = row["current_version"]
        if not version:
            continue
        record = versions.get_version(engine, version)
        sequence = int(row["deploy_sequence"])
        deployment = registered(store, org_id, record, sequence, row["updated_at"])
        if restore_key(redis, deployment):
            fixes.append(f"{org_id}: set Redis key to {version} (sequence {deployment.sequence})")
    return fixes


def restore_key(redis: Any, deployment: hotswap.Deployment) -> bool:
    """Set the org's Redis key (and announce it) if it is missing or older than `deployment`."""
    stored = hotswap.read_current(redis, deployment.organizationId)
    if stored is not None and stored.sequence >= deployment.sequence:
        return False
    return hotswap.publish(redis, deployment, "deployed")
