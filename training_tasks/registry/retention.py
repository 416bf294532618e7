"""Retention: which model versions of an organization are kept, and removing the files of the rest.

Kept are the deployed version, the previous one (the rollback target), the newest `keep`
versions, and every version of a queued or running run. Runs that failed or were cancelled
before recording a model keep their files (logs, extracted data) for inspection; beyond the
newest `keep` of them, their artifacts and data folders are removed too. Each removal is decided again under the
organization row's lock, marked `removed` (with `removed_at`) and audited in one transaction, and
only then are its files deleted: a deploy or rollback that raced it either committed first (and
the version is kept) or finds it removed and changes nothing. Files left behind by a crash after
the commit are deleted by the next collection. With an object store a removed version's objects
are deleted there too, before the local files.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, select

from training_tasks.db.tables import model_versions, training_runs
from training_tasks.errors import ConfigError, PermanentError, TrainingServiceError
from training_tasks.protocol.paths import ModelStore
from training_tasks.registry import audit, orgs, versions
from training_tasks.registry.rows import ACTIVE_STATUSES

DEFAULT_KEEP = 5
# A run that failed or was cancelled before it produced a version: its artifacts and data only.
FAILED_RUN = "failed-run"


@dataclass(frozen=True)
class Removal:
    """One version whose files are (or, in a dry run, would be) deleted."""

    organization_id: str
    version: str
    status: str  # before the removal; `removed` for files a crash left behind
    paths: tuple[Path, ...]

    def as_dict(self) -> dict[str, Any]:
        """The removal as camelCase JSON."""
        return {
            "organizationId": self.organization_id,
            "version": self.version,
            "status": self.status,
            "paths": [str(path) for path in self.paths],
        }


def version_files(store: ModelStore, org_id: str, version: str) -> tuple[Path, ...]:
    """The files and folders of a version: its model, its deployed copy, artifacts and data."""
    return (
        store.version_model(org_id, version),
        store.deployed_dir(org_id, version),
        store.artifacts(org_id, version),
        store.data_dir(org_id, version),
    )


def check_keep(keep: object) -> int:
    """Return `keep` if it is a whole number of versions, 0 or more; else raise ConfigError."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise ConfigError(
            "keep",
            f"{keep!r} is not a number of versions to keep; use 0 or more (the deployed and the "
            "previous version are always kept)",
        )
    return keep


def plan(engine: Engine, store: ModelStore, org_id: str, keep: int) -> list[Removal]:
    """What a collection would remove now, oldest first; changes nothing."""
    keep = check_keep(keep)
    row = orgs.get_org_row(engine, org_id)
    with engine.connect() as conn:
        live = _live_versions(conn, org_id)
        active = _active_versions(conn, org_id)
    protected = {row["current_version"], row["previous_version"], *active}
    protected.update(version for version, _ in live[:keep])
    removals = [
        Removal(org_id, version, status, _existing(version_files(store, org_id, version)))
        for version, status in reversed(live)
        if version not in protected
    ]
    for version in versions.removed_versions(engine, org_id):
        left = _existing(version_files(store, org_id, version))
        if left:
            removals.append(Removal(org_id, version, versions.REMOVED, left))
    with engine.connect() as conn:
        unversioned = _unversioned_failed_runs(conn, org_id)
    for version in reversed(unversioned[keep:]):
        left = _existing((store.artifacts(org_id, version), store.data_dir(org_id, version)))
        if left:
            removals.append(Removal(org_id, version, FAILED_RUN, left))
    return removals


def collect(
    engine: Engine,
    store: ModelStore,
    org_id: str,
    *,
    keep: int = DEFAULT_KEEP,
    now: datetime,
    actor: str,
    dry_run: bool = False,
) -> list[Removal]:
    """Remove the versions the retention rule does not keep; returns what was (or would be) removed."""
    planned = plan(engine, store, org_id, keep)
    if dry_run:
        return planned
    done: list[Removal] = []
    for removal in planned:
        if removal.status == FAILED_RUN:
            _audit_failed_run(engine, removal, keep=keep, now=now, actor=actor)
        elif removal.status != versions.REMOVED and not _mark(
            engine, removal, keep=keep, now=now, actor=actor
        ):
            continue
        _delete(store, removal)
        done.append(removal)
    return done


def _mark(engine: Engine, removal: Removal, *, keep: int, now: datetime, actor: str) -> bool:
    """Mark one version removed and audit it, if it is still not deployed, previous or active."""
    org_id, version = removal.organization_id, removal.version
    with engine.begin() as conn:
        state = versions.lock_deployment(conn, org_id)
        if state is None or version in (state["current_version"], state["previous_version"]):
            return False
        if version in _active_versions(conn, org_id):
            return False
        if not versions.mark_removed(conn, version, now=now):
            return False
        audit.record(
            conn,
            org_id,
            "model.removed",
            actor=actor,
            now=now,
            details={
                "version": version,
                "status": removal.status,
                "keep": keep,
                "paths": [str(path) for path in removal.paths],
            },
        )
    return True


def _delete_objects(store: ModelStore, removal: Removal) -> None:
    """Delete the version's objects from the object store first: local leftovers of a crash
    in between bring the next collection back to them."""
    if store.objects is None:
        return
    org_id, version = removal.organization_id, removal.version
    paths = version_files(store, org_id, version)
    if removal.status == FAILED_RUN:
        paths = (store.artifacts(org_id, version), store.data_dir(org_id, version))
    try:
        for path in paths:
            store.objects.delete_prefix(org_id, store.key_of(org_id, path))
    except TrainingServiceError as exc:
        raise PermanentError(
            f"could not delete the objects of organization {org_id} version {version} from "
            f"{store.objects.where} ({exc}); the version is already marked removed. Run "
            f"`trainctl gc {org_id}` again once the store answers"
        ) from None


def _delete(store: ModelStore, removal: Removal) -> None:
    org_id = removal.organization_id
    _delete_objects(store, removal)
    for path in removal.paths:
        try:
            if path.is_symlink():
                path.unlink(missing_ok=True)  # the link only, never what it points at
                continue
            # The paths come from the store; checked again so nothing outside the org is deleted.
            store.check_inside_org(org_id, path)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise PermanentError(
                f"could not delete {path} of organization {org_id} version {removal.version} "
                f"({exc.strerror}); the version is already marked removed. Fix the permissions "
                f"and run `trainctl gc {org_id}` again to delete what is left"
            ) from None


def _existing(paths: tuple[Path, ...]) -> tuple[Path, ...]:
    return tuple(path for path in paths if path.exists() or path.is_symlink())


def _live_versions(conn: Connection, org_id: str) -> list[tuple[str, str]]:
    """The org's versions not yet removed, newest first, as (version, status)."""
    query = (
        select(model_versions.c.version, model_versions.c.status)
        .where(
            model_versions.c.organization_id == org_id,
            model_versions.c.status != versions.REMOVED,
        )
        .order_by(model_versions.c.created_at.desc(), model_versions.c.version.desc())
    )
    return [(row.version, row.status) for row in conn.execute(query)]


def _unversioned_failed_runs(conn: Connection, org_id: str) -> list[str]:
    """Versions of the org's failed or cancelled runs that never recorded a model, newest first."""
    r = training_runs.c
    query = (
        select(r.version)
        .where(
            r.organization_id == org_id,
            r.status.in_(("failed", "cancelled")),
            r.version.not_in(select(model_versions.c.version)),
        )
        .order_by(r.queued_at.desc())
    )
    return list(conn.execute(query).scalars())


def _audit_failed_run(
    engine: Engine, removal: Removal, *, keep: int, now: datetime, actor: str
) -> None:
    with engine.begin() as conn:
        audit.record(
            conn,
            removal.organization_id,
            "run.files_removed",
            actor=actor,
            now=now,
            details={
                "version": removal.version,
                "keep": keep,
                "paths": [str(path) for path in removal.paths],
            },
        )


def _active_versions(conn: Connection, org_id: str) -> set[str]:
    query = select(training_runs.c.version).where(
        training_runs.c.organization_id == org_id, training_runs.c.status.in_(ACTIVE_STATUSES)
    )
    return set(conn.execute(query).scalars())
