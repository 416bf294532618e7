"""Hosts with no shared folder: two workers and a model cache on folders of their own, one
database, one Redis, one S3-protocol object store (moto in server mode, a bucket per test).

What a user would check: the stages of one run really run on different hosts (worker A extracts
and dies mid-training, worker B trains, validates and deploys from what the store holds), a
prediction service on a third folder serves the deployed model by its key, follows deploys and a
rollback made from a fourth, empty folder, and gc deletes a removed version's objects. Models are
sealed (ML_MASTER_KEYS): no plain model reaches the store, and every host opens them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis as redis_lib

from tests.support.chaos import RANGE, RUN_TIMEOUT_S, START, Chaos
from tests.support.onnx_fixtures import to_onnx
from tests.support.processes import celery_worker, wait_for
from tests.support.s3_server import S3Server, running_s3_server
from training_tasks.config.settings import Settings
from training_tasks.demo import scada
from training_tasks.protocol import hotswap
from training_tasks.protocol.keyring import generate_key, is_sealed
from training_tasks.protocol.object_store import ObjectStore
from training_tasks.registry import versions
from training_tasks.runtime import build_runtime
from training_tasks.service import TrainingService
from training_tasks.service.api import TrainingHandle
from workers.model_cache import ModelCache, no_fallback

pytestmark = pytest.mark.integration

ORG = "acme-corp"
MASTER_KEY = generate_key("k1")


@dataclass
class Hosts:
    """Worker A on the chaos service's folder, worker B and a cache on folders of their own."""

    env_a: dict[str, str]
    env_b: dict[str, str]
    base_b: Path
    base_cache: Path
    store_url: str
    control: TrainingService  # trainctl on a fourth host: an empty folder, the same store
    s3: S3Server
    bucket: str

    def keys(self) -> list[str]:
        return self.s3.keys(self.bucket)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def hosts(chaos: Chaos, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hosts]:
    bucket = s3.new_bucket()  # a bucket of this test's own
    store_env = s3.store_env(bucket)
    for name, value in store_env.items():  # this process is the cache's and trainctl's host
        if name != "MODEL_STORE_URL":
            monkeypatch.setenv(name, value)
    base_b = chaos.tmp / "host-b"
    (base_b / "scripts").mkdir(parents=True)
    shutil.copy(chaos.base / "scripts" / "slow_train.py", base_b / "scripts")
    (base_b / "scripts" / "delay_s").write_text("0")  # host B's own script folder: no delay
    monkeypatch.setenv("ML_MASTER_KEYS", MASTER_KEY)  # models are sealed: the cache opens them
    env_a = {**chaos.env, **store_env, "ML_MASTER_KEYS": MASTER_KEY}
    env_b = {**env_a, "ML_BASE_PATH": str(base_b)}
    control_env = {**env_a, "ML_BASE_PATH": str(chaos.tmp / "host-control")}
    control = TrainingService(build_runtime(Settings.from_env(control_env)))
    cache = chaos.tmp / "host-cache"
    yield Hosts(env_a, env_b, base_b, cache, store_env["MODEL_STORE_URL"], control, s3, bucket)
    control.close()


def _cache(chaos: Chaos, hosts: Hosts) -> ModelCache:
    return ModelCache(
        chaos.env["REDIS_URL"],
        hosts.base_cache,
        [ORG],
        fallback=no_fallback,
        model_store_url=hosts.store_url,
        resync_interval_s=1.0,
    )


def _train(chaos: Chaos) -> TrainingHandle:
    handle = chaos.service.train_model(ORG, {"dataRange": RANGE}, wait=False)
    assert isinstance(handle, TrainingHandle)
    return handle


def _rows() -> np.ndarray:
    frame = scada.generate_sensor_frame(assets=2, days=1, interval_min=10, seed=5, start=START)
    return frame[list(scada.FEATURES)].to_numpy(np.float32)


def test_a_run_extracted_on_one_host_is_trained_and_deployed_on_another_through_the_store(
    chaos: Chaos, hosts: Hosts
) -> None:
    chaos.register(ORG, scada.ACME_LAYOUT, script="slow_train.py")
    chaos.delay(60)  # host A's training sleeps: A dies in it, after its extract was published
    handle = _train(chaos)
    with celery_worker(hosts.env_a, chaos.tmp) as host_a:
        chaos.wait_stage(handle.run_id, "train")
        trainer = chaos.training_process()
        os.killpg(host_a.proc.pid, signal.SIGKILL)
        host_a.proc.wait(timeout=10)
        trainer.wait(timeout=10)
    with celery_worker(hosts.env_b, chaos.tmp) as host_b:
        result = handle.wait(timeout_s=RUN_TIMEOUT_S)
    assert result["status"] == "succeeded", result["error"] or host_b.log_tail()
    version = result["version"]

    # Extract ran on A only; train, validate and deploy on B only, from what the store held.
    assert [a["stage"] for a in chaos.run(handle.run_id)["attempts"]] == ["train"]
    assert (chaos.base / "data" / ORG / version / "holdout.parquet").is_file()
    assert not (chaos.base / "models" / ORG / f"model_{version}.onnx").exists()
    assert (hosts.base_b / "models" / ORG / f"model_{version}.onnx").is_file()
    assert (hosts.base_b / "data" / ORG / version / "holdout.parquet").is_file()  # fetched
    keys = hosts.keys()
    model_key = f"models/{ORG}/deployed_{version}/model.onnx"
    for key in (
        f"models/{ORG}/model_{version}.onnx",
        model_key,
        f"data/{ORG}/{version}/holdout.parquet",
        f"artifacts/{ORG}/{version}/metrics.json",
        f"artifacts/{ORG}/{version}/train.log",
        f"artifacts/{ORG}/{version}/validation.json",
        f"artifacts/{ORG}/{version}/manifest.json",
    ):
        assert key in keys, key
    assert f"data/{ORG}/{version}/train.parquet" not in keys  # scratch, removed after success
    assert not any("current" in key or "deployment.json" in key for key in keys)  # nothing mutable

    # No plain model reaches the store: the ONNX model and the native one are sealed.
    for key in (model_key, f"artifacts/{ORG}/{version}/model.txt"):
        assert is_sealed(hosts.s3.read(hosts.bucket, key)), key
    # B's validation opened the sealed native model it fetched: parity was checked, not skipped.
    validation = versions.get_version(chaos.service.rt.engine, version)["validation"]
    assert validation is not None
    [parity] = [check for check in validation["checks"] if check["name"] == "parity"]
    assert parity["passed"] and "skipped" not in parity["detail"], parity
    stored = hotswap.read_current(redis_lib.Redis.from_url(chaos.env["REDIS_URL"]), ORG)
    assert stored is not None and (stored.version, stored.modelKey) == (version, model_key)
    with _cache(chaos, hosts) as cache:  # a prediction service on a third host
        assert cache.version(ORG) == version
        prediction = cache.predict(ORG, _rows())
        assert prediction.version == version and len(prediction.probabilities) == len(_rows())
    assert (hosts.base_cache / model_key).is_file()


def test_a_cache_on_another_host_follows_deploys_and_a_rollback_made_from_an_empty_folder(
    chaos: Chaos, hosts: Hosts
) -> None:
    chaos.register(ORG, scada.ACME_LAYOUT)
    with celery_worker(hosts.env_b, chaos.tmp) as host_b:
        first = _train(chaos)
        assert first.wait(timeout_s=RUN_TIMEOUT_S)["status"] == "succeeded", host_b.log_tail()
        with _cache(chaos, hosts) as cache:
            assert cache.version(ORG) == first.version
            for _ in range(2):
                handle = _train(chaos)
                result = handle.wait(timeout_s=RUN_TIMEOUT_S)
                assert result["status"] == "succeeded", result["error"] or host_b.log_tail()
                wait_for(lambda v=handle.version: cache.version(ORG) == v, 20, "the swap")
            second, third = chaos.versions(ORG)[1], handle.version
            # Rolled back from a host whose folder holds nothing: deployed from the store.
            hosts.control.rollback_model(ORG, first.version, actor="test")
            wait_for(lambda: cache.version(ORG) == first.version, 20, "the rollback swap")
            assert cache.stats()[ORG].load_failures == 0

    assert second not in (first.version, third)
    removed = hosts.control.collect_garbage(ORG, keep=0, actor="test")
    assert [r["version"] for r in removed] == [second]
    keys = hosts.keys()
    assert not [key for key in keys if second in key]
    for kept in (first.version, third):
        assert f"models/{ORG}/model_{kept}.onnx" in keys
    assert hosts.control.get_organization(ORG)["deployedVersion"] == first.version


def test_a_cache_keeps_serving_while_a_fetched_model_fails_its_sha256_and_never_serves_it(
    s3: S3Server, redis_url: str, booster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3.new_bucket()
    store_env = s3.store_env(bucket)
    for name, value in store_env.items():
        monkeypatch.setenv(name, value)
    objects = ObjectStore.from_url(store_env["MODEL_STORE_URL"])
    client = redis_lib.Redis.from_url(redis_url)
    org = f"os-{uuid.uuid4().hex[:10]}"  # channels are shared by every Redis database

    def publish(n: int, stored: bytes, announced_sha256: str | None = None) -> str:
        version = f"v2026-06-01T12-00-{n:02d}-000Z_{n:08x}"
        key = f"models/{org}/deployed_{version}/model.onnx"
        objects.put_bytes(org, key, stored)
        deployment = hotswap.Deployment(
            org,
            version,
            f"/elsewhere/{key}",  # the deploying host's path: not this host's
            announced_sha256 or hashlib.sha256(stored).hexdigest(),
            "2026-06-01T12:00:00.000Z",
            n,
            modelKey=key,
        )
        assert hotswap.publish(client, deployment, "deployed")
        return version

    def model(n: int) -> bytes:
        version = f"v2026-06-01T12-00-{n:02d}-000Z_{n:08x}"
        return to_onnx(booster, org_id=org, version=version).SerializeToString()

    first = publish(1, model(1))
    folder = tmp_path / "cache-host"
    with ModelCache(redis_url, folder, [org], fallback=no_fallback, resync_interval_s=1.0) as cache:
        assert cache.version(org) == first
        # The store holds other bytes than the deployment announced (changed after the deploy).
        second = publish(
            2, model(2), announced_sha256=hashlib.sha256(b"what was deployed").hexdigest()
        )
        wait_for(lambda: cache.stats()[org].load_failures == 1, 20, "the refused load")
        assert cache.version(org) == first  # the old model keeps serving
        assert "sha256" in (cache.served()[org].last_error or "")
        fetched = folder / "models" / org / f"deployed_{second}"
        assert not fetched.exists() or not list(fetched.iterdir())  # nothing kept, no temp file
        third = publish(3, model(3))
        wait_for(lambda: cache.version(org) == third, 20, "the next verified model")
    client.close()
