"""The deployed copy in the object store: its key, putting it there, fetching a model from there.

Only with an object store (`ModelStore.objects`); without one `model_key` is None and
`publish_copy` does nothing.
"""

from __future__ import annotations

from pathlib import Path

from training_tasks.protocol.object_store import ObjectMissing
from training_tasks.protocol.paths import ModelStore


def model_key(store: ModelStore, org_id: str, version: str) -> str | None:
    """The deployed model's object key, for caches on other hosts; None without a store."""
    if store.objects is None:
        return None
    return store.key_of(org_id, store.deployed_model(org_id, version))


def publish_copy(store: ModelStore, org_id: str, path: Path) -> None:
    """Put a deployed copy in the object store (once; the same bytes again are fine)."""
    if store.objects is not None:
        store.objects.put_file(org_id, store.key_of(org_id, path), path)


def fetch_copy(store: ModelStore, org_id: str, path: Path, sha256: str) -> bool:
    """Fetch a model file from the object store into `path`, verified; False if it is not there."""
    assert store.objects is not None
    try:
        store.objects.fetch(org_id, store.key_of(org_id, path), path, sha256)
    except ObjectMissing:
        return False
    return True
