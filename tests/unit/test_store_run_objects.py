"""A run's files published to the object store by one host and fetched by another."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from obstore.store import MemoryStore

from training_tasks.files import UnsafeFile
from training_tasks.pipeline import run_objects
from training_tasks.protocol.keyring import Keyring, is_sealed
from training_tasks.protocol.object_store import ObjectCorrupt, ObjectStore
from training_tasks.protocol.paths import ModelStore

ORG = "acme-corp"
VERSION = "v2026-01-01T00-00-00-000Z_0000abcd"
KEYRING = Keyring.parse("k1:" + base64.b64encode(b"\x41" * 32).decode())


@pytest.fixture
def objects() -> ObjectStore:
    return ObjectStore(MemoryStore(), "memory://test")


def _host(tmp_path: Path, name: str, objects: ObjectStore) -> ModelStore:
    return ModelStore(tmp_path / name, objects)


def test_a_later_stage_on_another_host_gets_the_files_the_first_published(
    tmp_path: Path, objects: ObjectStore
) -> None:
    host_a, host_b = _host(tmp_path, "a", objects), _host(tmp_path, "b", objects)
    data = host_a.data_dir(ORG, VERSION)
    data.mkdir(parents=True)
    (data / "train.parquet").write_bytes(b"train rows")
    (data / "holdout.parquet").write_bytes(b"holdout rows")
    (data / ".holdout.parquet.tmp-1").write_bytes(b"half written")  # a temp name: not published
    published = run_objects.publish_folder(host_a, ORG, data)
    assert sorted(published) == [
        f"data/{ORG}/{VERSION}/holdout.parquet",
        f"data/{ORG}/{VERSION}/train.parquet",
    ]
    stats = run_objects.with_objects({"rows_train": 1}, published)
    run = {"data_stats": stats}
    fetched = run_objects.fetch_recorded(
        host_b, ORG, run_objects.recorded(run), lambda key: key.endswith("holdout.parquet")
    )
    assert fetched == [host_b.data_dir(ORG, VERSION) / "holdout.parquet"]
    assert fetched[0].read_bytes() == b"holdout rows"
    assert not (host_b.data_dir(ORG, VERSION) / "train.parquet").exists()


def test_a_fetch_checks_the_sha256_recorded_in_the_database(
    tmp_path: Path, objects: ObjectStore
) -> None:
    host_a, host_b = _host(tmp_path, "a", objects), _host(tmp_path, "b", objects)
    data = host_a.data_dir(ORG, VERSION)
    data.mkdir(parents=True)
    (data / "holdout.parquet").write_bytes(b"holdout rows")
    published = run_objects.publish_folder(host_a, ORG, data)
    key = f"data/{ORG}/{VERSION}/holdout.parquet"
    tampered = {key: {**published[key], "sha256": "0" * 64}}
    with pytest.raises(ObjectCorrupt):
        run_objects.fetch_recorded(host_b, ORG, tampered, lambda _key: True)
    assert not (host_b.data_dir(ORG, VERSION) / "holdout.parquet").exists()


def test_the_script_folder_is_published_without_links_and_the_native_model_sealed(
    tmp_path: Path, objects: ObjectStore
) -> None:
    host_a, host_b = _host(tmp_path, "a", objects), _host(tmp_path, "b", objects)
    folder = host_a.artifacts(ORG, VERSION)
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    (folder / "model.txt").write_text("tree\n")
    os.symlink("/etc/passwd", folder / "stolen.txt")  # a link the script planted: not followed
    published = run_objects.publish_script_folder(host_a, ORG, VERSION, KEYRING)
    assert sorted(published) == [
        f"artifacts/{ORG}/{VERSION}/metrics.json",
        f"artifacts/{ORG}/{VERSION}/model.txt",
    ]
    assert is_sealed(objects.read_bytes(ORG, f"artifacts/{ORG}/{VERSION}/model.txt"))
    run_objects.fetch_recorded(host_b, ORG, published, lambda _key: True, KEYRING)
    assert (host_b.artifacts(ORG, VERSION) / "model.txt").read_text() == "tree\n"  # opened


def test_a_hard_link_in_the_script_folder_is_refused(tmp_path: Path, objects: ObjectStore) -> None:
    host = _host(tmp_path, "a", objects)
    folder = host.artifacts(ORG, VERSION)
    folder.mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.write_text("not the script's")
    os.link(outside, folder / "metrics.json")
    with pytest.raises(UnsafeFile):
        run_objects.publish_script_folder(host, ORG, VERSION, Keyring())


def test_without_a_store_nothing_is_published_or_fetched(tmp_path: Path) -> None:
    host = ModelStore(tmp_path / "a")
    folder = host.data_dir(ORG, VERSION)
    folder.mkdir(parents=True)
    (folder / "holdout.parquet").write_bytes(b"rows")
    assert run_objects.publish_folder(host, ORG, folder) == {}
    assert run_objects.fetch_recorded(host, ORG, {"x": {}}, lambda _key: True) == []
