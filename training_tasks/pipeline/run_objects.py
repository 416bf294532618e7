"""A run's files in the object store: what a stage publishes, and what a later stage fetches.

With an object store (MODEL_STORE_URL=s3://...) the stages of one run may run on different hosts
with no shared folder. Each stage publishes what it wrote under the version's keys before it
counts as done, and records each object's sha256 and size on the run (`data_stats.storeObjects`,
in the database). A later stage on another host fetches what it needs into its own ML_BASE_PATH
when it is missing there, verified against that record. Objects are written once (see
`protocol.object_store`). Without a store every function here does nothing.

Files of the training script's folder (`artifacts/<org>/<version>/`) are read like any file a
script wrote: regular files only, no links, with a size cap. With ML_MASTER_KEYS set the native
model (`model.txt`) is sealed for the store, as the ONNX model is, so no plain model leaves the host.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from training_tasks.files import read_script_output, sha256_file, write_bytes_atomic
from training_tasks.protocol.keyring import Keyring, is_sealed
from training_tasks.protocol.object_store import SINGLE_PUT_MAX_BYTES, ObjectMissing
from training_tasks.protocol.paths import ModelStore
from training_tasks.registry.rows import RunRow

log = logging.getLogger(__name__)

OBJECTS_FIELD = "storeObjects"  # in data_stats: {key: {"sha256", "sizeBytes"}}
SEALED_ARTIFACTS = ("model.txt",)  # a model in another form: sealed when models are
Recorded = dict[str, dict[str, Any]]


def recorded(run: RunRow | Mapping[str, Any]) -> Recorded:
    """The objects the run's stages published so far, as recorded in the database."""
    return dict((run.get("data_stats") or {}).get(OBJECTS_FIELD) or {})


def with_objects(stats: Mapping[str, Any] | None, published: Recorded) -> dict[str, Any]:
    """`data_stats` with `published` added to its record of objects."""
    stats = dict(stats or {})
    stats[OBJECTS_FIELD] = {**(stats.get(OBJECTS_FIELD) or {}), **published}
    return stats


def publish_files(store: ModelStore, org_id: str, paths: list[Path]) -> Recorded:
    """Publish files the service wrote (extracted data, the stored model, reports)."""
    if store.objects is None:
        return {}
    published: Recorded = {}
    for path in paths:
        stored = store.objects.put_file(org_id, store.key_of(org_id, path), path)
        published[stored.key] = stored.as_dict()
    return published


def publish_folder(store: ModelStore, org_id: str, folder: Path) -> Recorded:
    """Publish every regular file the service wrote under `folder` (hidden temp files left out)."""
    if store.objects is None or not folder.is_dir():
        return {}
    return publish_files(store, org_id, _plain_files(folder))


def publish_script_folder(
    store: ModelStore, org_id: str, version: str, keyring: Keyring
) -> Recorded:
    """Publish the training script's folder: regular files only, capped, the native model sealed."""
    if store.objects is None:
        return {}
    folder = store.artifacts(org_id, version)
    published: Recorded = {}
    for path in _plain_files(folder) if folder.is_dir() else []:
        data = read_script_output(path, SINGLE_PUT_MAX_BYTES, path.name)
        if keyring.enabled and path.name in SEALED_ARTIFACTS:
            data = keyring.seal_model(data, org_id, version)
        stored = store.objects.put_bytes(org_id, store.key_of(org_id, path), data)
        published[stored.key] = stored.as_dict()
    return published


def fetch_recorded(
    store: ModelStore,
    org_id: str,
    objects: Recorded,
    wanted: Callable[[str], bool],
    keyring: Keyring | None = None,
) -> list[Path]:
    """Fetch the recorded objects `wanted` accepts into this host's folder where missing."""
    if store.objects is None:
        return []
    fetched = []
    for key, meta in sorted(objects.items()):
        if not wanted(key):
            continue
        path = store.path_of(org_id, key)
        sealed = keyring is not None and keyring.enabled and path.name in SEALED_ARTIFACTS
        if sealed and path.is_file():
            continue  # opened after an earlier fetch: its sha256 is no longer the sealed one
        store.objects.fetch(org_id, key, path, str(meta["sha256"]), int(meta["sizeBytes"]))
        if sealed and keyring is not None:
            _open_sealed(path, keyring, org_id, key)
        fetched.append(path)
    return fetched


def fetch_model(store: ModelStore, org_id: str, path: Path, sha256: str) -> Path | None:
    """A model file of the org (trained or deployed copy), fetched if missing; None if nowhere."""
    if store.objects is None:
        return path if path.is_file() else None
    try:
        return store.objects.fetch(org_id, store.key_of(org_id, path), path, sha256)
    except ObjectMissing:
        return path if path.is_file() and sha256_file(path) == sha256 else None


def drop_objects(store: ModelStore, org_id: str, paths: list[Path]) -> None:
    """Delete the objects of local files removed as scratch (best effort: gc removes the rest)."""
    if store.objects is None:
        return
    try:
        store.objects.delete_keys(org_id, [store.key_of(org_id, path) for path in paths])
    except Exception as exc:
        log.warning(
            "organization %s: scratch objects not deleted (%s); gc removes them", org_id, exc
        )


def _plain_files(folder: Path) -> list[Path]:
    """Regular files under `folder`, never through a link, without hidden temporary names."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if not name.startswith(".") and path.is_file() and not path.is_symlink():
                found.append(path)
    return found


def _open_sealed(path: Path, keyring: Keyring, org_id: str, key: str) -> None:
    data = path.read_bytes()
    if is_sealed(data):
        version = key.split("/")[2]
        write_bytes_atomic(path, keyring.open_model(data, org_id, version))
