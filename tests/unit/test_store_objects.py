"""The object store of versions and deployed models: write-once keys, verified fetches, key checks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from obstore.store import LocalStore, MemoryStore

from training_tasks.config.settings import Settings
from training_tasks.errors import ConfigError, SettingsError
from training_tasks.protocol import hotswap
from training_tasks.protocol.keys import check_key
from training_tasks.protocol.object_store import (
    ObjectConflict,
    ObjectCorrupt,
    ObjectMissing,
    ObjectStore,
    check_store_url,
)
from training_tasks.protocol.paths import ModelStore

ORG = "acme-corp"
VERSION = "v2026-01-01T00-00-00-000Z_0000abcd"
KEY = f"models/{ORG}/model_{VERSION}.onnx"


@pytest.fixture(params=["memory", "local"])
def objects(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "memory":
        return ObjectStore(MemoryStore(), "memory://test")
    root = tmp_path / "bucket"
    root.mkdir()
    return ObjectStore(LocalStore(prefix=root), f"file://{root}")


def test_an_object_is_written_once_and_the_same_bytes_again_are_accepted(
    objects: ObjectStore,
) -> None:
    first = objects.put_bytes(ORG, KEY, b"model bytes")
    again = objects.put_bytes(ORG, KEY, b"model bytes")
    assert first == again
    assert first.sha256 == hashlib.sha256(b"model bytes").hexdigest()
    assert objects.read_bytes(ORG, KEY) == b"model bytes"


def test_other_bytes_under_a_written_key_are_refused_naming_the_key_and_what_to_do(
    objects: ObjectStore,
) -> None:
    objects.put_bytes(ORG, KEY, b"model bytes")
    with pytest.raises(ObjectConflict) as refused:
        objects.put_bytes(ORG, KEY, b"other bytes")
    assert KEY in str(refused.value)
    assert "Train again" in str(refused.value)
    assert objects.read_bytes(ORG, KEY) == b"model bytes"  # never overwritten


def test_a_file_is_published_under_its_key_and_a_second_publish_of_it_is_accepted(
    objects: ObjectStore, tmp_path: Path
) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"x" * 1000)
    assert objects.put_file(ORG, KEY, path).size_bytes == 1000
    assert objects.put_file(ORG, KEY, path).size_bytes == 1000


def test_a_fetch_lands_the_verified_bytes_and_leaves_no_temporary_file(
    objects: ObjectStore, tmp_path: Path
) -> None:
    stored = objects.put_bytes(ORG, KEY, b"model bytes")
    dest = tmp_path / "cache" / "model.onnx"
    objects.fetch(ORG, KEY, dest, stored.sha256, stored.size_bytes)
    assert dest.read_bytes() == b"model bytes"
    assert [p.name for p in dest.parent.iterdir()] == ["model.onnx"]


def test_a_fetch_whose_bytes_do_not_match_the_record_leaves_nothing_behind(
    objects: ObjectStore, tmp_path: Path
) -> None:
    objects.put_bytes(ORG, KEY, b"changed in the store")
    dest = tmp_path / "cache" / "model.onnx"
    with pytest.raises(ObjectCorrupt) as refused:
        objects.fetch(ORG, KEY, dest, hashlib.sha256(b"recorded").hexdigest())
    assert KEY in str(refused.value)
    assert list(dest.parent.iterdir()) == []


def test_a_fetch_of_a_key_that_is_not_there_says_it_is_missing(
    objects: ObjectStore, tmp_path: Path
) -> None:
    with pytest.raises(ObjectMissing, match="not in the object store"):
        objects.fetch(ORG, KEY, tmp_path / "m.onnx", "0" * 64)


def test_a_verified_local_copy_is_not_fetched_again(objects: ObjectStore, tmp_path: Path) -> None:
    dest = tmp_path / "model.onnx"
    dest.write_bytes(b"model bytes")
    sha256 = hashlib.sha256(b"model bytes").hexdigest()
    assert objects.fetch(ORG, KEY, dest, sha256) == dest  # the store holds nothing: no request


def test_deleting_a_version_folder_removes_its_keys_only(objects: ObjectStore) -> None:
    folder = f"artifacts/{ORG}/{VERSION}"
    objects.put_bytes(ORG, f"{folder}/metrics.json", b"{}")
    objects.put_bytes(ORG, f"{folder}/sub/train.log", b"log")
    objects.put_bytes(ORG, f"{folder}x/metrics.json", b"{}")  # a neighbour with the same start
    assert sorted(objects.delete_prefix(ORG, folder)) == [
        f"{folder}/metrics.json",
        f"{folder}/sub/train.log",
    ]
    assert objects.list_keys(ORG, f"artifacts/{ORG}") == [f"{folder}x/metrics.json"]


@pytest.mark.parametrize(
    "key",
    [
        f"models/{ORG}/../other/model.onnx",
        f"models/{ORG}/./model.onnx",
        f"models/{ORG}//model.onnx",
        f"models/{ORG}/.hidden",
        f"models/{ORG}/a\\b",
        f"/models/{ORG}/model.onnx",
        f"models/globex/model_{VERSION}.onnx",
        f"scripts/{ORG}/train.py",
        f"models/{ORG}",
    ],
)
def test_keys_outside_the_organizations_folders_are_refused(key: str) -> None:
    with pytest.raises(ConfigError):
        check_key(ORG, key)


def test_the_store_refuses_another_organizations_key_before_any_request(
    objects: ObjectStore,
) -> None:
    with pytest.raises(ConfigError):
        objects.put_bytes(ORG, f"models/globex/model_{VERSION}.onnx", b"x")


def test_a_file_of_the_layout_has_its_path_under_ml_base_path_as_key(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "ml")
    deployed = store.deployed_model(ORG, VERSION)
    key = store.key_of(ORG, deployed)
    assert key == f"models/{ORG}/deployed_{VERSION}/model.onnx"
    assert store.path_of(ORG, key) == deployed
    with pytest.raises(ConfigError):
        store.key_of(ORG, tmp_path / "elsewhere" / "model.onnx")


def test_model_store_url_takes_s3_urls_and_keeps_the_local_layout_otherwise(
    tmp_path: Path,
) -> None:
    base = tmp_path / "ml"
    assert check_store_url("s3://bucket/models", base) == "s3://bucket/models"
    assert check_store_url(None, base) is None
    assert check_store_url(str(base), base) is None
    assert check_store_url(f"file://{base}", base) is None
    assert Settings.from_env({"ML_BASE_PATH": str(base)}).model_store_url is None


@pytest.mark.parametrize(
    "url", ["gs://bucket/x", "s3://", "s3://user:secret@bucket/x", "/some/other/folder"]
)
def test_a_model_store_url_that_is_not_usable_is_refused_at_start_up(
    url: str, tmp_path: Path
) -> None:
    with pytest.raises(SettingsError, match="MODEL_STORE_URL") as refused:
        Settings.from_env({"ML_BASE_PATH": str(tmp_path), "MODEL_STORE_URL": url})
    assert "secret" not in str(refused.value)


def test_a_hot_swap_message_names_the_model_key_only_when_there_is_a_store() -> None:
    plain = hotswap.Deployment(ORG, VERSION, "/ml/m.onnx", "ab" * 32, "2026-01-01T00:00:00Z", 3)
    assert "modelKey" not in plain.to_json("deployed")
    keyed = hotswap.Deployment(**{**plain.__dict__, "modelKey": KEY})
    event, parsed = hotswap.parse(keyed.to_json("deployed"))
    assert (event, parsed.modelKey, parsed.modelPath) == ("deployed", KEY, "/ml/m.onnx")
    assert hotswap.parse(plain.to_json())[1].modelKey is None
