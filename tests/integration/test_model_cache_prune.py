"""A prediction service's folder is a cache: after four deploys fetched from the object store
(moto in server mode, a bucket per test) it holds the served and the previous model only, it
still serves, and a rollback to a pruned version downloads it again."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis as redis_lib

from tests.integration.conftest import version_id
from tests.support.onnx_fixtures import make_data, to_onnx
from tests.support.processes import wait_for
from tests.support.s3_server import S3Server, running_s3_server
from training_tasks.protocol import hotswap
from training_tasks.protocol.object_store import ObjectStore
from workers.model_cache import ModelCache, no_fallback

pytestmark = pytest.mark.integration

SWAP_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


def _downloaded(folder: Path, org: str) -> list[str]:
    """The versions whose deployed model is in the cache's folder."""
    found = (folder / "models" / org).glob("deployed_*/model.onnx")
    return sorted(path.parent.name.removeprefix("deployed_") for path in found)


def test_after_four_deploys_the_cache_folder_holds_the_served_and_previous_model_and_serves(
    s3: S3Server, redis_url: str, booster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_env = s3.store_env(s3.new_bucket())
    for name, value in store_env.items():
        monkeypatch.setenv(name, value)
    objects = ObjectStore.from_url(store_env["MODEL_STORE_URL"])
    client = redis_lib.Redis.from_url(redis_url)
    org = f"pr-{uuid.uuid4().hex[:10]}"  # channels are shared by every Redis database
    stored: dict[str, bytes] = {}

    def deploy(sequence: int, n: int) -> str:
        version = version_id(n)
        key = f"models/{org}/deployed_{version}/model.onnx"
        if version not in stored:
            stored[version] = to_onnx(booster, org_id=org, version=version).SerializeToString()
            objects.put_bytes(org, key, stored[version])
        deployment = hotswap.Deployment(
            org,
            version,
            f"/elsewhere/{key}",  # the deploying host's path: not this host's
            hashlib.sha256(stored[version]).hexdigest(),
            "2026-06-01T12:00:00.000Z",
            sequence,
            modelKey=key,
        )
        assert hotswap.publish(client, deployment, "deployed")
        return version

    folder = tmp_path / "cache-host"
    rows, _ = make_data(20, seed=3)
    first = deploy(1, 1)
    with ModelCache(redis_url, folder, [org], fallback=no_fallback, resync_interval_s=1.0) as cache:
        assert cache.version(org) == first
        served = [first]
        for n in (2, 3, 4):
            served.append(deploy(n, n))
            wait_for(lambda v=served[-1]: cache.version(org) == v, SWAP_TIMEOUT_S, "the swap")
            assert len(_downloaded(folder, org)) <= 2

        assert _downloaded(folder, org) == sorted(served[-2:])  # the served and the previous
        prediction = cache.predict(org, rows)
        assert prediction.version == served[-1] and len(prediction.probabilities) == len(rows)

        # A rollback to a pruned version fetches it again and serves it.
        deploy(5, 1)
        wait_for(lambda: cache.version(org) == first, SWAP_TIMEOUT_S, "the rollback swap")
        assert _downloaded(folder, org) == sorted([served[-1], first])
        assert np.isfinite(cache.predict(org, rows).probabilities).all()
        assert cache.stats()[org].load_failures == 0
    client.close()
