"""Fixtures for integration tests that deploy real ONNX models the way the service does."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import lightgbm as lgb
import pytest
import redis as redis_lib

from tests.support.chaos import chaos  # noqa: F401  (the fixture, for every integration test)
from tests.support.onnx_fixtures import make_data, to_onnx, train_booster
from training_tasks.protocol import hotswap
from training_tasks.protocol.hotswap import Deployment


def version_id(n: int) -> str:
    return f"v2026-06-01T12-00-{n:02d}-000Z_{n:08x}"


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    return train_booster(*make_data(400), rounds=10)


@pytest.fixture
def redis(redis_url: str) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def org() -> str:
    # Channels are shared by every Redis database: a unique org keeps other tests' messages out.
    return f"mc-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "ml"


@pytest.fixture
def deploy(redis: redis_lib.Redis, base: Path, booster: lgb.Booster) -> Callable[..., Deployment]:
    """Deploy as the service does: write the file, then set the key and publish."""

    def run(
        org_id: str,
        n: int,
        *,
        data: bytes | None = None,
        sha256: str | None = None,
        path: Path | None = None,
        publish: bool = True,
    ) -> Deployment:
        version = version_id(n)
        if data is None:
            data = to_onnx(booster, org_id=org_id, version=version).SerializeToString()
        if path is None:
            path = base / "models" / org_id / f"deployed_{version}" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        deployment = Deployment(
            organizationId=org_id,
            version=version,
            modelPath=str(path),
            sha256=sha256 or hashlib.sha256(data).hexdigest(),
            deployedAt="2026-06-01T12:00:00.000Z",
            sequence=n,
        )
        if publish:
            assert hotswap.publish(redis, deployment, "deployed")
        else:  # the message is lost: only the key moves
            redis.set(hotswap.current_key(org_id), deployment.to_json())
        return deployment

    return run
