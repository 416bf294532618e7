"""What the model cache falls back on while Redis announces nothing: the `current` link, checked."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import lightgbm as lgb
import pytest

from tests.support.onnx_fixtures import make_data, to_onnx, train_booster
from training_tasks.protocol import hotswap
from training_tasks.protocol.hotswap import Deployment
from workers.model_cache import LinkFallback, ModelCache, ModelRejected, ModelUnavailable, fallback
from workers.model_cache.fallback import UNKNOWN_SEQUENCE
from workers.model_cache.model import load_model

ORG = "acme"
V1 = "v2026-06-01T12-00-01-000Z_00000001"
V2 = "v2026-06-01T12-00-02-000Z_00000002"


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    return train_booster(*make_data(300), rounds=8)


def deployed(base: Path, version: str, data: bytes, *, org: str = ORG) -> Path:
    """Write a deployed model as deploy lays it out: `models/<org>/deployed_<version>/model.onnx`."""
    path = base / "models" / org / f"deployed_{version}" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def point_current(base: Path, target: str, *, org: str = ORG) -> None:
    link = base / "models" / org / "current"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    os.symlink(target, link)


def record(path: Path, **changes: object) -> None:
    """Write deployment.json beside a deployed model, as the current key would hold it."""
    data = path.read_bytes()
    doc = {
        "organizationId": ORG,
        "version": path.parent.name.removeprefix("deployed_"),
        "modelPath": str(path),
        "sha256": hashlib.sha256(data).hexdigest(),
        "deployedAt": "2026-06-01T12:00:00.000Z",
        "sequence": 7,
        **changes,
    }
    (path.parent / hotswap.DEPLOYMENT_FILE).write_text(Deployment(**doc).to_json())


def test_without_a_current_link_there_is_nothing_to_fall_back_on(tmp_path: Path) -> None:
    assert LinkFallback(tmp_path)(ORG) is None


def test_the_link_gives_the_linked_version_with_its_own_digest_and_the_lowest_sequence(
    tmp_path: Path, booster: lgb.Booster
) -> None:
    data = to_onnx(booster, org_id=ORG, version=V1).SerializeToString()
    path = deployed(tmp_path, V1, data)
    point_current(tmp_path, f"deployed_{V1}")
    found = LinkFallback(tmp_path)(ORG)
    assert found is not None
    assert (found.version, found.sequence, found.modelPath) == (V1, UNKNOWN_SEQUENCE, str(path))
    assert found.sha256 == hashlib.sha256(data).hexdigest()
    model = load_model(tmp_path, ORG, found)  # every check of an announced model passes
    assert model.version == V1


def test_a_changed_model_file_is_hashed_again(tmp_path: Path) -> None:
    path = deployed(tmp_path, V1, b"first")
    point_current(tmp_path, f"deployed_{V1}")
    fallback = LinkFallback(tmp_path)
    first = fallback(ORG)
    path.write_bytes(b"second, longer")
    second = fallback(ORG)
    assert first is not None and second is not None
    assert second.sha256 == hashlib.sha256(b"second, longer").hexdigest() != first.sha256


def test_deploys_record_beside_the_model_gives_its_sequence_and_digest(tmp_path: Path) -> None:
    path = deployed(tmp_path, V2, b"model")
    record(path, sequence=12, sha256="ab" * 32)
    point_current(tmp_path, f"deployed_{V2}")
    found = LinkFallback(tmp_path)(ORG)
    assert found is not None
    assert (found.version, found.sequence, found.sha256) == (V2, 12, "ab" * 32)


def test_a_model_file_of_another_version_under_the_linked_folder_is_refused(
    tmp_path: Path, booster: lgb.Booster
) -> None:
    data = to_onnx(booster, org_id=ORG, version=V1).SerializeToString()
    deployed(tmp_path, V2, data)  # V1's model copied into V2's folder
    point_current(tmp_path, f"deployed_{V2}")
    found = LinkFallback(tmp_path)(ORG)
    assert found is not None
    with pytest.raises(ModelRejected, match=f"metadata version='{V1}'"):
        load_model(tmp_path, ORG, found)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("elsewhere", "not at a deployed_<version> folder"),
        ("../globex/deployed_" + V1, "not at a deployed_<version> folder"),
        ("deployed_latest", "not at a deployed_<version> folder"),
    ],
)
def test_a_link_to_anything_but_a_deployed_version_folder_is_refused(
    tmp_path: Path, target: str, reason: str
) -> None:
    point_current(tmp_path, target)
    with pytest.raises(ModelRejected, match=f"{reason}.*trainctl reconcile"):
        LinkFallback(tmp_path)(ORG)


def test_a_current_that_is_not_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "models" / ORG / "current").mkdir(parents=True)
    with pytest.raises(ModelRejected, match="not a symbolic link"):
        LinkFallback(tmp_path)(ORG)


def test_a_link_to_a_folder_without_a_model_is_refused(tmp_path: Path) -> None:
    point_current(tmp_path, f"deployed_{V1}")
    with pytest.raises(ModelRejected, match=f"deployed_{V1}, which holds no model.onnx"):
        LinkFallback(tmp_path)(ORG)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"version": V1}, f"records organization acme version {V1}, not acme version {V2}"),
        ({"organizationId": "globex"}, "records organization globex"),
    ],
)
def test_a_record_of_another_deployment_is_refused(
    tmp_path: Path, change: dict[str, str], reason: str
) -> None:
    path = deployed(tmp_path, V2, b"model")
    record(path, **change)
    point_current(tmp_path, f"deployed_{V2}")
    with pytest.raises(ModelRejected, match=reason):
        LinkFallback(tmp_path)(ORG)


def test_a_record_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    path = deployed(tmp_path, V2, b"model")
    elsewhere = tmp_path / "record.json"
    elsewhere.write_text("{}")
    (path.parent / hotswap.DEPLOYMENT_FILE).symlink_to(elsewhere)
    point_current(tmp_path, f"deployed_{V2}")
    with pytest.raises(ModelRejected, match="symbolic link"):
        LinkFallback(tmp_path)(ORG)


@pytest.mark.parametrize("kind", ["fifo", "oversized"])
def test_a_record_that_blocks_or_is_oversized_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    path = deployed(tmp_path, V2, b"model")
    record = path.parent / hotswap.DEPLOYMENT_FILE
    if kind == "fifo":
        os.mkfifo(record)  # no writer: a blocking read would never return
    else:
        record.write_text(" " * (fallback.MAX_RECORD_BYTES + 1))
    point_current(tmp_path, f"deployed_{V2}")
    with pytest.raises(ModelRejected, match=r"FIFO|at most"):
        LinkFallback(tmp_path)(ORG)


def test_a_broken_fallback_makes_the_503_say_why(tmp_path: Path) -> None:
    point_current(tmp_path, "elsewhere")
    cache = ModelCache("redis://127.0.0.1:1/0", tmp_path, [ORG])  # never connects here
    try:
        cache._fall_back(ORG)
        with pytest.raises(ModelUnavailable, match=r"no announcement in Redis, and .*elsewhere"):
            cache.predict(ORG, [[0.0]])
    finally:
        cache._slots.close()


def test_a_fallback_whose_storage_fails_leaves_the_cache_running(tmp_path: Path) -> None:
    def failing(org_id: str) -> Deployment | None:
        raise ConnectionError("the database is down")

    cache = ModelCache("redis://127.0.0.1:1/0", tmp_path, [ORG], fallback=failing)
    try:
        cache._fall_back(ORG)
        with pytest.raises(ModelUnavailable, match="no deployment has been announced"):
            cache.predict(ORG, [[0.0]])
    finally:
        cache._slots.close()
