"""Deployed models fetched by key from the object store into the cache's own folder.

A cache on another host than the training service is given the store (MODEL_STORE_URL,
s3://bucket/prefix, with the AWS_* variables for endpoint and credentials) and a local folder.
A deployment that names a `modelKey` is downloaded to `<folder>/<modelKey>` under a temporary
name, checked against the deployment's sha256 and only then renamed into place; `load_model`
reads and checks it again before it serves. A file already there with that sha256 is not fetched
again. A deployment without a key (an older publisher), or a cache without a store, uses
`modelPath` as before.

The folder is a cache: after a swap, downloaded models (`models/<org>/deployed_<version>/`) other
than the served and the previous one are deleted (`prune`). A load holds a shared lock on the
organization's folder while it fetches and reads, and pruning takes it exclusively without
waiting, so caches sharing a folder never delete a file another one is fetching or loading (the
prune is skipped then; the next swap does it). Without a store nothing is ever deleted: the
folder is then the training service's own.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Collection, Iterator
from dataclasses import replace
from pathlib import Path

from training_tasks.errors import TrainingServiceError
from training_tasks.protocol.hotswap import Deployment
from training_tasks.protocol.ids import check_org_id, check_version_id
from training_tasks.protocol.keys import check_key
from training_tasks.protocol.object_store import ObjectStore, check_store_url, open_store
from workers.model_cache.errors import ModelRejected

log = logging.getLogger("workers.model_cache")

STORE_URL_VARIABLE = "MODEL_STORE_URL"
DEPLOYED_PREFIX = "deployed_"
MODEL_NAME = "model.onnx"


class FromEnvironment:
    """Marks a setting read from this process's environment."""

    def __repr__(self) -> str:
        return "FROM_ENV"


FROM_ENV = FromEnvironment()


def store_for(
    model_store_url: str | FromEnvironment | None, ml_base_path: Path
) -> ObjectStore | None:
    """The object store a cache fetches from: the URL given, or MODEL_STORE_URL; None if unset."""
    if isinstance(model_store_url, FromEnvironment):
        model_store_url = os.environ.get(STORE_URL_VARIABLE) or None
    return open_store(check_store_url(model_store_url, ml_base_path))


def localize(objects: ObjectStore | None, ml_base_path: Path, deployment: Deployment) -> Deployment:
    """The deployment with `modelPath` at a verified local copy of its `modelKey` (fetched if
    needed); unchanged without a store or a key."""
    key = deployment.modelKey
    if objects is None or key is None:
        return deployment
    org_id = deployment.organizationId
    try:
        if not check_key(org_id, key).startswith(f"models/{org_id}/"):
            raise ModelRejected(f"model key {key!r} is not in models/{org_id}/")
        local = ml_base_path.joinpath(*key.split("/"))
        objects.fetch(org_id, key, local, deployment.sha256)
    except TrainingServiceError as exc:  # missing, corrupt, store unreachable, bad key
        raise ModelRejected(
            f"cannot fetch the model of version {deployment.version} from the object store "
            f"({exc}); the served model stays"
        ) from None
    return replace(deployment, modelPath=str(local))


class Pruner:
    """After each swap, deletes an organization's downloaded models other than the one served
    and the previous one (kept for a quick rollback)."""

    def __init__(self, ml_base_path: Path, organizations: Collection[str]) -> None:
        self.ml_base_path = ml_base_path
        # Per organization the versions served last, the previous one first; each organization's
        # loads run one at a time, so only one thread touches its list.
        self._served: dict[str, list[str]] = {org: [] for org in organizations}

    def served(self, org_id: str, version: str | None) -> list[Path]:
        """Note what `org_id` serves after a load; prune after a swap. Returns the files deleted."""
        served = self._served[org_id]
        if version is None or (served and served[-1] == version):
            return []  # a failed load, or the same model: nothing was swapped
        served[:] = [*served[-1:], version]
        if len(served) < 2:
            return []  # the first model served: no swap yet
        try:
            removed = prune(self.ml_base_path, org_id, set(served))
        except OSError as exc:  # a prune that fails must not stop serving
            log.warning("could not prune the downloaded models of %s: %s", org_id, exc)
            return []
        if removed:
            log.info("pruned %d downloaded models of %s", len(removed), org_id)
        return removed


@contextlib.contextmanager
def in_use(ml_base_path: Path, org_id: str) -> Iterator[None]:
    """Hold the organization's folder shared while a model is fetched into it and read."""
    with _folder_lock(ml_base_path, org_id, fcntl.LOCK_SH) as held:
        assert held  # a blocking shared lock is always granted
        yield


def prune(ml_base_path: Path, org_id: str, keep: Collection[str]) -> list[Path]:
    """Delete the downloaded models of `org_id` except those of the versions in `keep`; returns
    the files deleted (none while another cache on this folder fetches or loads one)."""
    removed: list[Path] = []
    with _folder_lock(ml_base_path, org_id, fcntl.LOCK_EX | fcntl.LOCK_NB) as held:
        if not held:
            return removed
        for folder in sorted(_org_folder(ml_base_path, org_id).glob(f"{DEPLOYED_PREFIX}*")):
            version = folder.name.removeprefix(DEPLOYED_PREFIX)
            if version in keep or not _is_version(version) or folder.is_symlink():
                continue
            model = folder / MODEL_NAME
            if model.is_file() and not model.is_symlink():
                model.unlink()
                removed.append(model)
            with contextlib.suppress(OSError):  # other files in it: the folder stays
                folder.rmdir()
    return removed


@contextlib.contextmanager
def _folder_lock(ml_base_path: Path, org_id: str, mode: int) -> Iterator[bool]:
    """An flock on `models/<org>/` itself (no lock file); yields whether it was granted."""
    folder = _org_folder(ml_base_path, org_id)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _org_folder(ml_base_path: Path, org_id: str) -> Path:
    return ml_base_path / "models" / check_org_id(org_id)


def _is_version(text: str) -> bool:
    try:
        check_version_id(text)
    except TrainingServiceError:
        return False
    return True
