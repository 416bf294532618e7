"""Model files at rest: sealed per organization and version, opened in memory, refused elsewhere."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnx
import pytest
import redis as redis_lib
from sqlalchemy import Engine, select

from tests.support.onnx_fixtures import (
    FEATURES,
    TARGET,
    make_data,
    to_onnx,
    train_booster,
    write_holdout,
)
from tests.support.registry_fixtures import (
    NOW,
    finished_run,
    migrated_engine,
    record_model,
    register,
)
from training_tasks.protocol.hotswap import Deployment
from training_tasks.protocol.keyring import MODEL_MAGIC, Keyring, is_sealed
from training_tasks.protocol.paths import ModelStore
from training_tasks.stages.deploy import deploy
from training_tasks.stages.validate.stage import validate
from workers.model_cache import ModelCache, ModelRejected, read_replicas
from workers.model_cache.model import load_model

KEY = "k2:" + base64.b64encode(b"\x42" * 32).decode()
OLD_KEY = "k1:" + base64.b64encode(b"\x41" * 32).decode()
VERSION = "v2026-06-01T12-00-00-000Z_a1b2c3d4"
OTHER_VERSION = "v2026-06-01T12-00-09-000Z_0000beef"
ROWS = np.zeros((3, len(FEATURES)), dtype=np.float32)
SWAP_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    return train_booster(*make_data(400), rounds=10)


def onnx_bytes(booster: lgb.Booster, org: str, version: str) -> bytes:
    return bytes(to_onnx(booster, org_id=org, version=version).SerializeToString())


def sealed_file(path: Path, data: bytes, org: str, version: str, keys: str = KEY) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(Keyring.parse(keys).seal_model(data, org, version))
    return path


def deployment_of(path: Path, org: str, version: str, sequence: int = 1) -> Deployment:
    return Deployment(
        organizationId=org,
        version=version,
        modelPath=str(path),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        deployedAt="2026-06-01T12:00:00.000Z",
        sequence=sequence,
    )


# -- the cache's loader, without Redis ------------------------------------------------------


def test_the_cache_loader_opens_a_sealed_model_with_the_environments_key(
    tmp_path: Path, booster: lgb.Booster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ML_MASTER_KEYS", f"{KEY},{OLD_KEY}")
    path = tmp_path / "models/acme/deployed_x/model.onnx"
    sealed_file(path, onnx_bytes(booster, "acme", VERSION), "acme", VERSION, keys=OLD_KEY)
    model = load_model(tmp_path, "acme", deployment_of(path, "acme", VERSION))
    assert model.version == VERSION
    assert model.predict(ROWS).shape == (3,)


@pytest.mark.parametrize(
    ("keys", "reason"),
    [(None, "ML_MASTER_KEYS is not set"), (OLD_KEY, "key 'k2', which ML_MASTER_KEYS here")],
)
def test_the_cache_loader_without_the_right_key_says_which_key_it_needs(
    tmp_path: Path,
    booster: lgb.Booster,
    monkeypatch: pytest.MonkeyPatch,
    keys: str | None,
    reason: str,
) -> None:
    if keys is None:
        monkeypatch.delenv("ML_MASTER_KEYS", raising=False)
    else:
        monkeypatch.setenv("ML_MASTER_KEYS", keys)
    path = tmp_path / "models/acme/deployed_x/model.onnx"
    sealed_file(path, onnx_bytes(booster, "acme", VERSION), "acme", VERSION)
    with pytest.raises(ModelRejected, match=reason):
        load_model(tmp_path, "acme", deployment_of(path, "acme", VERSION))


def test_the_cache_loader_refuses_a_sealed_model_announced_as_another_version(
    tmp_path: Path, booster: lgb.Booster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ML_MASTER_KEYS", KEY)
    path = tmp_path / f"models/acme/deployed_{OTHER_VERSION}/model.onnx"
    sealed_file(path, onnx_bytes(booster, "acme", VERSION), "acme", VERSION)
    with pytest.raises(ModelRejected, match=f"version {OTHER_VERSION} does not open"):
        load_model(tmp_path, "acme", deployment_of(path, "acme", OTHER_VERSION))


# -- the validate stage ---------------------------------------------------------------------


@pytest.fixture
def holdout(tmp_path: Path) -> Path:
    return write_holdout(tmp_path / "holdout.parquet", *make_data(2000, seed=5))


def validate_file(path: Path, holdout: Path, org: str, version: str, **extra: Any) -> Any:
    return validate(
        org_id=org,
        version=version,
        model_path=path,
        holdout_path=holdout,
        feature_columns=FEATURES,
        target_column=TARGET,
        thresholds={"maxLatencyMs": 1000.0, "maxMemoryMb": 4096.0},
        **extra,
    )


def check(report: Any, name: str) -> dict[str, Any]:
    return next(c for c in report.as_dict()["checks"] if c["name"] == name)


def test_validate_opens_a_sealed_model_and_records_the_hash_of_the_file_as_stored(
    tmp_path: Path, booster: lgb.Booster, holdout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ML_MASTER_KEYS", KEY)
    path = sealed_file(
        tmp_path / f"models/acme/model_{VERSION}.onnx",
        onnx_bytes(booster, "acme", VERSION),
        "acme",
        VERSION,
    )
    deployed = sealed_file(
        tmp_path / f"models/acme/deployed_{OTHER_VERSION}/model.onnx",
        onnx_bytes(booster, "acme", OTHER_VERSION),
        "acme",
        OTHER_VERSION,
    )
    report = validate_file(path, holdout, "acme", VERSION, deployed_model_path=deployed)
    assert check(report, "load")["passed"], report.failures
    assert check(report, "metadata")["passed"]
    assert report.model_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report.model_size_bytes == path.stat().st_size
    assert report.comparison["status"] == "passed", report.comparison  # it was compared
    assert report.comparison["deployedSha256"] == hashlib.sha256(deployed.read_bytes()).hexdigest()


@pytest.mark.parametrize(("org", "version"), [("globex", VERSION), ("acme", OTHER_VERSION)])
def test_validate_rejects_a_sealed_model_moved_to_another_org_or_version_saying_why(
    tmp_path: Path,
    booster: lgb.Booster,
    holdout: Path,
    monkeypatch: pytest.MonkeyPatch,
    org: str,
    version: str,
) -> None:
    monkeypatch.setenv("ML_MASTER_KEYS", KEY)
    path = sealed_file(
        tmp_path / f"models/{org}/model_{version}.onnx",
        onnx_bytes(booster, "acme", VERSION),
        "acme",
        VERSION,
    )
    report = validate_file(path, holdout, org, version)
    assert not report.passed
    load = check(report, "load")
    assert not load["passed"]
    assert f"organization {org} version {version}" in load["detail"]
    assert "sealed for another organization or version" in load["detail"]


# -- deploy and a real model cache on Redis -------------------------------------------------


@pytest.fixture
def org_ids() -> tuple[str, str]:
    # Pub/sub channels are shared by every Redis database: org ids of this test's own.
    tag = uuid.uuid4().hex[:8]
    return f"enc-{tag}-a", f"enc-{tag}-b"


@pytest.fixture
def engine(sqlite_url: str, org_ids: tuple[str, str]) -> Iterator[Engine]:
    engine = migrated_engine(sqlite_url)
    for org in org_ids:
        register(engine, org)
    yield engine
    engine.dispose()


@pytest.fixture
def redis(redis_url: str) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(redis_url)
    yield client
    client.close()


def trained(
    engine: Engine, store: ModelStore, org: str, booster: lgb.Booster, n: int, keys: str | None
) -> str:
    """Record a validated version whose model file is filed as the train stage files it."""
    now = NOW + timedelta(seconds=n)
    run_id, version = finished_run(engine, org, now)
    data = onnx_bytes(booster, org, version)
    if keys is not None:
        data = Keyring.parse(keys).seal_model(data, org, version)
    record_model(engine, store, org, version, run_id, now=now, data=data, report={"passed": True})
    return version


def wait_until(predicate: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + SWAP_TIMEOUT_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {SWAP_TIMEOUT_S} s waiting for {what}")


@pytest.mark.integration
@pytest.mark.redis
def test_a_sealed_model_is_deployed_byte_for_byte_and_served_by_the_cache(
    tmp_path: Path,
    engine: Engine,
    redis: redis_lib.Redis,
    redis_url: str,
    booster: lgb.Booster,
    org_ids: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ML_MASTER_KEYS", KEY)
    store, (org, other) = ModelStore(tmp_path / "ml"), org_ids
    version = trained(engine, store, org, booster, 1, KEY)
    deployment = deploy(engine, redis, store, org, version, now=NOW, actor="test")
    deployed = Path(deployment.modelPath)
    assert deployed.read_bytes() == store.version_model(org, version).read_bytes()
    assert deployed.read_bytes().startswith(MODEL_MAGIC + b"k2\n")
    assert deployment.sha256 == hashlib.sha256(deployed.read_bytes()).hexdigest()

    cache = ModelCache(redis_url, store.base, [org, other]).start()
    try:
        served = cache.predict(org, ROWS)
        assert served.version == version and served.probabilities.shape == (3,)
        _moved_files_are_refused_and_the_old_model_keeps_serving(
            cache, redis, store, org, other, version, deployed
        )
    finally:
        cache.close()


def _moved_files_are_refused_and_the_old_model_keeps_serving(
    cache: ModelCache,
    redis: redis_lib.Redis,
    store: ModelStore,
    org: str,
    other: str,
    version: str,
    deployed: Path,
) -> None:
    from training_tasks.protocol import hotswap

    # The sealed file copied into the other organization's folder, announced for that org.
    foreign = store.deployed_model(other, version)
    foreign.parent.mkdir(parents=True)
    shutil.copyfile(deployed, foreign)
    hotswap.publish(redis, replace(deployment_of(foreign, other, version), sequence=1), "deployed")
    wait_until(lambda: cache.stats()[other].load_failures == 1, "the foreign file's refusal")

    def refused_entry() -> dict[str, Any] | None:
        # The entry can be confirmed before the refusal is written into it: wait for the reason.
        entry = read_replicas(redis, other).get(cache.replica_id) or {}
        return entry if entry.get("lastError") else None

    entry = wait_until(refused_entry, "the entry with its refusal")
    assert "sealed for another organization or version" in str(entry["lastError"])
    assert cache.version(other) is None

    # The same file renamed to a later version of its own organization.
    renamed = store.deployed_model(org, OTHER_VERSION)
    renamed.parent.mkdir(parents=True)
    shutil.copyfile(deployed, renamed)
    hotswap.publish(redis, deployment_of(renamed, org, OTHER_VERSION, sequence=2), "deployed")
    wait_until(lambda: cache.stats()[org].load_failures == 1, "the renamed file's refusal")
    assert cache.predict(org, ROWS).version == version

    def refusal() -> str:
        entry = read_replicas(redis, org).get(cache.replica_id) or {}
        return str(entry.get("lastError") or "")

    reason = wait_until(refusal, "the refusal in the replica's entry")
    assert f"version {OTHER_VERSION} does not open" in reason


@pytest.mark.integration
@pytest.mark.redis
def test_without_a_key_model_files_stay_plain_onnx_and_are_served(
    tmp_path: Path,
    engine: Engine,
    redis: redis_lib.Redis,
    redis_url: str,
    booster: lgb.Booster,
    org_ids: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ML_MASTER_KEYS", raising=False)
    store, org = ModelStore(tmp_path / "ml"), org_ids[0]
    version = trained(engine, store, org, booster, 1, None)
    deployment = deploy(engine, redis, store, org, version, now=NOW, actor="test")
    data = Path(deployment.modelPath).read_bytes()
    assert not is_sealed(data)
    assert onnx.load_from_string(data).metadata_props  # a plain ONNX protobuf
    with ModelCache(redis_url, store.base, [org]) as cache:
        assert cache.predict(org, ROWS).version == version


# -- the whole pipeline with a key ----------------------------------------------------------

START = datetime(2026, 1, 1, tzinfo=UTC)
RANGE = {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-02-15T00:00:00Z"}


@pytest.mark.integration
@pytest.mark.redis
@pytest.mark.postgres
def test_a_worker_with_a_key_seals_the_model_and_the_scada_url_and_a_second_run_compares(
    tmp_path: Path,
    redis_url: str,
    postgres_factory: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.support.processes import celery_worker, service_env
    from training_tasks.config.settings import Settings
    from training_tasks.db.engine import make_engine
    from training_tasks.db.tables import organizations
    from training_tasks.demo import scada
    from training_tasks.runtime import build_runtime
    from training_tasks.service import TrainingService

    service_db, scada_db = postgres_factory(), postgres_factory()
    frames = scada.iter_sensor_frames(assets=6, days=45, interval_min=10, seed=7, start=START)
    scada.write_scada_postgres(scada_db, frames, scada.ACME_LAYOUT)
    base = tmp_path / "ml"
    env = service_env(
        redis_url=redis_url,
        database_url=service_db,
        ml_base_path=base,
        extra={"ML_MASTER_KEYS": KEY},
    )
    # The registry reads the key from the process environment, like every service process.
    monkeypatch.setenv("ML_MASTER_KEYS", KEY)
    service = TrainingService(build_runtime(Settings.from_env(env)))
    try:
        org = "acme-corp"
        service.register_organization(org, scada.demo_org_config(org, scada_db, scada.ACME_LAYOUT))
        with make_engine(service_db).connect() as conn:
            column = conn.execute(select(organizations.c.scada_url)).scalar_one()
        assert column.startswith("enc:v1:k2:") and "postgres" not in column
        with celery_worker(env, tmp_path):
            results = [
                service.train_model(org, {"dataRange": RANGE}, timeout_s=180) for _ in range(2)
            ]
        for result in results:
            assert result["status"] == "succeeded", result["error"]
            _assert_sealed_on_disk(base, org, result["version"])
        second = json.loads(
            (base / "artifacts" / org / results[1]["version"] / "validation.json").read_text()
        )
        assert second["comparison"]["status"] in ("passed", "failed"), second["comparison"]
    finally:
        service.close()


def _assert_sealed_on_disk(base: Path, org: str, version: str) -> None:
    filed = base / "models" / org / f"model_{version}.onnx"
    deployed = base / "models" / org / f"deployed_{version}" / "model.onnx"
    assert is_sealed(filed.read_bytes()) and deployed.read_bytes() == filed.read_bytes()
    assert not (base / "artifacts" / org / version / "model.onnx").exists()
    assert Keyring.parse(KEY).open_model(filed.read_bytes(), org, version).startswith(b"\x08")
