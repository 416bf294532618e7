"""Pruning a prediction service's folder of downloaded models: only `deployed_<version>/model.onnx`
files of versions not kept, and nothing while a load holds the organization's folder; and the
keys a hot-swap message may make it download."""

from __future__ import annotations

from pathlib import Path

import pytest
from obstore.store import MemoryStore

from training_tasks.protocol.hotswap import Deployment
from training_tasks.protocol.object_store import ObjectStore
from workers.model_cache.errors import ModelRejected
from workers.model_cache.remote import Pruner, in_use, localize, prune

ORG = "acme-corp"
V1, V2, V3 = (f"v2026-06-01T12-00-0{n}-000Z_0000000{n}" for n in (1, 2, 3))


def _download(base: Path, version: str) -> Path:
    path = base / "models" / ORG / f"deployed_{version}" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"onnx " + version.encode())
    return path


def test_prune_deletes_downloaded_models_of_versions_not_kept_and_nothing_else(
    tmp_path: Path,
) -> None:
    old, kept = _download(tmp_path, V1), _download(tmp_path, V2)
    other = tmp_path / "models" / ORG / "deployed_not-a-version" / "model.onnx"
    other.parent.mkdir()
    other.write_bytes(b"not ours")

    assert prune(tmp_path, ORG, {V2}) == [old]

    assert not old.parent.exists() and kept.is_file() and other.is_file()


def test_prune_deletes_nothing_while_a_load_holds_the_organizations_folder(tmp_path: Path) -> None:
    old = _download(tmp_path, V1)
    with in_use(tmp_path, ORG):  # another cache on this folder is fetching or loading
        assert prune(tmp_path, ORG, {V2}) == []
        assert old.is_file()
    assert prune(tmp_path, ORG, {V2}) == [old]


def test_the_pruner_keeps_the_served_and_previous_model_and_prunes_only_after_a_swap(
    tmp_path: Path,
) -> None:
    pruner = Pruner(tmp_path, [ORG])
    paths = [_download(tmp_path, version) for version in (V1, V2, V3)]

    assert pruner.served(ORG, V2) == []  # the first model served: not a swap
    assert pruner.served(ORG, None) == []  # a failed load
    assert pruner.served(ORG, V3) == [paths[0]]
    assert pruner.served(ORG, V3) == []  # the same model again
    assert [path.is_file() for path in paths] == [False, True, True]


@pytest.mark.parametrize(
    "key",
    [
        "models/globex/deployed_{v}/model.onnx",  # another organization's model
        "models/acme-corp/../globex/deployed_{v}/model.onnx",
        "data/acme-corp/{v}/holdout.parquet",  # not a model
        "/models/acme-corp/deployed_{v}/model.onnx",
    ],
)
def test_a_hot_swap_message_naming_a_key_outside_the_organizations_models_is_refused_unfetched(
    tmp_path: Path, key: str
) -> None:
    backend = MemoryStore()
    objects = ObjectStore(backend, "memory://test")
    key = key.format(v=V1)
    deployment = Deployment(ORG, V1, "/elsewhere/model.onnx", "0" * 64, "2026-06-01", 1, key)

    with pytest.raises(ModelRejected):
        localize(objects, tmp_path, deployment)

    assert not any(tmp_path.rglob("*"))  # nothing written into the cache's folder
