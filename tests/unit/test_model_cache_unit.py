"""The model cache's pieces without Redis: path and sha256 checks, loading, the swap rules."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import redis

from tests.support.onnx_fixtures import FEATURES, make_data, to_onnx, train_booster
from training_tasks.protocol.hotswap import Deployment
from workers.model_cache import ModelCache, ModelRejected, ModelUnavailable
from workers.model_cache import cache as cache_module
from workers.model_cache.model import check_model_path, check_sha256, load_model
from workers.model_cache.slots import ServingSlots

ORG = "acme"
VERSION = "v2026-06-01T12-00-00-000Z_a1b2c3d4"


def deployment(sequence: int, *, org: str = ORG, path: str = "", sha256: str = "") -> Deployment:
    return Deployment(
        organizationId=org,
        version=f"v{sequence}",
        modelPath=path,
        sha256=sha256,
        deployedAt="2026-06-01T12:00:00.000Z",
        sequence=sequence,
    )


# -- import weight ----------------------------------------------------------------------------


def test_importing_the_cache_loads_neither_celery_nor_sqlalchemy() -> None:
    code = (
        "import sys, workers.model_cache; "
        "print(' '.join(m for m in sys.modules if m.split('.')[0] in ('celery', 'sqlalchemy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []


# -- the path and sha256 checks ---------------------------------------------------------------


def model_file(base: Path, org: str, name: str = "deployed_v1/model.onnx") -> Path:
    path = base / "models" / org / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"model")
    return path


def test_a_model_inside_the_organizations_folder_passes_the_path_check(tmp_path: Path) -> None:
    path = model_file(tmp_path, ORG)
    assert check_model_path(tmp_path, ORG, path) == path.resolve()
    assert check_model_path(tmp_path, ORG, f"models/{ORG}/deployed_v1/model.onnx") == path.resolve()


@pytest.mark.parametrize(
    "target",
    [
        "models/globex/deployed_v1/model.onnx",
        "models/acme/../globex/deployed_v1/model.onnx",
        "/etc/passwd",
        "models/acme",
    ],
)
def test_a_path_outside_the_organizations_folder_is_refused(tmp_path: Path, target: str) -> None:
    model_file(tmp_path, "globex")
    (tmp_path / "models" / ORG).mkdir(parents=True)
    with pytest.raises(ModelRejected, match="outside"):
        check_model_path(tmp_path, ORG, target)


def test_a_symlink_from_the_organizations_folder_into_another_is_refused(tmp_path: Path) -> None:
    foreign = model_file(tmp_path, "globex")
    link = tmp_path / "models" / ORG / "deployed_v2"
    link.parent.mkdir(parents=True)
    link.symlink_to(foreign.parent, target_is_directory=True)
    with pytest.raises(ModelRejected, match=f"outside .*models/{ORG}"):
        check_model_path(tmp_path, ORG, link / "model.onnx")


def test_a_missing_model_file_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ModelRejected, match="missing"):
        check_model_path(tmp_path, ORG, f"models/{ORG}/deployed_v9/model.onnx")


def test_an_unsafe_organization_id_is_refused_before_any_path_is_built(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a valid organization id"):
        ModelCache("redis://127.0.0.1:1/0", tmp_path, [".."])


def test_the_sha256_check_accepts_the_right_digest_and_names_both_when_wrong() -> None:
    digest = hashlib.sha256(b"model").hexdigest()
    check_sha256(b"model", digest.upper(), Path("m.onnx"))
    with pytest.raises(ModelRejected, match=f"sha256 {digest}, the deployment says 0+;"):
        check_sha256(b"model", "0" * 64, Path("m.onnx"))


# -- loading real ONNX files ------------------------------------------------------------------


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    return train_booster(*make_data(300), rounds=8)


def deploy_file(base: Path, data: bytes, *, org: str = ORG, version: str = VERSION) -> Deployment:
    path = base / "models" / org / f"deployed_{version}" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    return Deployment(org, version, str(path), sha, "2026-06-01T12:00:00.000Z", 1)


def test_a_loaded_model_predicts_one_probability_per_row(
    tmp_path: Path, booster: lgb.Booster
) -> None:
    onnx_model = to_onnx(booster, org_id=ORG, version=VERSION)
    model = load_model(tmp_path, ORG, deploy_file(tmp_path, onnx_model.SerializeToString()))
    rows, _ = make_data(20, seed=1)
    probabilities = model.predict(rows.tolist())
    assert model.feature_columns == tuple(FEATURES)
    assert probabilities.shape == (20,)
    assert np.allclose(probabilities, booster.predict(rows), atol=1e-5)


def test_an_n_by_2_probabilities_output_is_accepted_and_gives_the_same_answer(
    tmp_path: Path, booster: lgb.Booster
) -> None:
    plain = to_onnx(booster, org_id=ORG, version=VERSION).SerializeToString()
    pair = to_onnx(booster, org_id=ORG, version=VERSION, probability_pair=True).SerializeToString()
    rows, _ = make_data(10, seed=2)
    first = load_model(tmp_path, ORG, deploy_file(tmp_path, plain)).predict(rows)
    second = load_model(tmp_path / "b", ORG, deploy_file(tmp_path / "b", pair)).predict(rows)
    assert np.allclose(first, second)


def test_rows_of_the_wrong_width_are_refused_naming_the_feature_columns(
    tmp_path: Path, booster: lgb.Booster
) -> None:
    data = to_onnx(booster, org_id=ORG, version=VERSION).SerializeToString()
    model = load_model(tmp_path, ORG, deploy_file(tmp_path, data))
    with pytest.raises(ValueError, match="temperature"):
        model.predict([[1.0, 2.0]])


@pytest.mark.parametrize(
    ("metadata", "message"),
    [({"org_id": "globex"}, "organization_id='globex'"), ({"version": "v0"}, "version='v0'")],
)
def test_a_model_whose_metadata_names_another_org_or_version_is_refused(
    tmp_path: Path, booster: lgb.Booster, metadata: dict[str, str], message: str
) -> None:
    options: dict[str, Any] = {"org_id": ORG, "version": VERSION, **metadata}
    data = to_onnx(booster, **options).SerializeToString()
    with pytest.raises(ModelRejected, match=message):
        load_model(tmp_path, ORG, deploy_file(tmp_path, data))


def test_a_corrupt_model_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelRejected, match="is not an ONNX model"):
        load_model(tmp_path, ORG, deploy_file(tmp_path, b"\x08\x07garbage"))


# -- the swap rules, with a fake loader -------------------------------------------------------


@dataclass
class FakeModel:
    version: str
    sequence: int
    ready: bool = False
    gate: threading.Event | None = None

    def run(self) -> str:
        if self.gate is not None:
            self.gate.wait(timeout=5)
        assert self.ready, "a call saw a half-loaded model"
        return self.version


class FakeLoader:
    """Builds a FakeModel slowly, in steps; fails for the sequences in `fail`."""

    def __init__(self, *, delay_s: float = 0.0, fail: frozenset[int] = frozenset()) -> None:
        self.delay_s = delay_s
        self.fail = fail
        self.loaded: list[int] = []

    def __call__(self, deployment: Deployment) -> FakeModel:
        model = FakeModel(deployment.version, deployment.sequence)
        time.sleep(self.delay_s)
        if deployment.sequence in self.fail:
            raise ModelRejected(f"sha256 mismatch in {deployment.version}")
        model.ready = True
        self.loaded.append(deployment.sequence)
        return model


def slots_with(loader: FakeLoader) -> ServingSlots[FakeModel]:
    return ServingSlots([ORG], loader)


def test_an_announcement_not_newer_than_the_served_model_is_ignored_and_counted() -> None:
    slots = slots_with(FakeLoader())
    slots.offer(deployment(3), announced=False)
    assert slots.wait_idle(5)
    assert slots.offer(deployment(3), announced=True) is None
    assert slots.offer(deployment(2), announced=True) is None
    assert slots.offer(deployment(3), announced=False) is None  # the periodic re-read
    assert slots.current(ORG).version == "v3"
    assert slots.stats()[ORG].ignored_stale == 2
    slots.close()


def test_a_burst_of_deployments_loads_at_most_two_and_ends_on_the_newest() -> None:
    loader = FakeLoader(delay_s=0.1)
    slots = slots_with(loader)
    for sequence in range(1, 6):
        slots.offer(deployment(sequence), announced=True)
    assert slots.wait_idle(5)
    assert loader.loaded == [1, 5]
    assert slots.current(ORG).version == "v5"
    slots.close()


def test_a_failed_load_keeps_the_old_model_and_is_counted() -> None:
    slots = slots_with(FakeLoader(fail=frozenset({2})))
    slots.offer(deployment(1), announced=False)
    slots.wait_idle(5)
    slots.offer(deployment(2), announced=True)
    slots.wait_idle(5)
    assert slots.current(ORG).version == "v1"
    stats = slots.stats()[ORG]
    assert (stats.loads, stats.load_failures, stats.swaps) == (1, 1, 0)
    slots.close()


def test_an_org_without_a_valid_model_raises_model_unavailable_saying_why() -> None:
    slots = slots_with(FakeLoader(fail=frozenset({1})))
    with pytest.raises(ModelUnavailable, match="acme: no deployment has been announced"):
        slots.current(ORG)
    slots.offer(deployment(1), announced=True)
    slots.wait_idle(5)
    with pytest.raises(ModelUnavailable, match=r"acme: version v1 \(sequence 1\): sha256"):
        slots.current(ORG)
    with pytest.raises(ModelUnavailable, match=r"globex.*add globex to its organizations"):
        slots.current("globex")
    slots.close()


def test_concurrent_calls_see_only_whole_models_and_never_go_back_a_version() -> None:
    slots = slots_with(FakeLoader(delay_s=0.002))
    slots.offer(deployment(1), announced=False)
    slots.wait_idle(5)
    errors: list[BaseException] = []
    stop = threading.Event()

    def call_forever() -> None:
        last = 0
        while not stop.is_set():
            try:
                sequence = int(slots.current(ORG).run()[1:])
                assert sequence >= last, f"went back from {last} to {sequence}"
                last = sequence
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=call_forever) for _ in range(4)]
    for thread in threads:
        thread.start()
    for sequence in range(2, 60):
        slots.offer(deployment(sequence), announced=True)
        time.sleep(0.001)
    assert slots.wait_idle(5)
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    assert errors == []
    assert slots.current(ORG).version == "v59"
    slots.close()


def test_a_call_in_flight_finishes_on_the_old_model_while_the_new_one_is_served() -> None:
    slots = slots_with(FakeLoader())
    slots.offer(deployment(1), announced=False)
    slots.wait_idle(5)
    old = slots.current(ORG)
    old.gate = threading.Event()
    result: list[str] = []
    caller = threading.Thread(target=lambda: result.append(slots.current(ORG).run()))
    caller.start()
    slots.offer(deployment(2), announced=True)
    assert slots.wait_idle(5)
    assert slots.current(ORG).version == "v2"
    old.gate.set()
    caller.join(timeout=5)
    assert result == ["v1"]
    slots.close()


# -- the listener's liveness check ------------------------------------------------------------


class SilentPubSub:
    """A subscription whose connection stays open but never answers, not even a ping."""

    def __init__(self) -> None:
        self.pings = 0

    def get_message(self, timeout: float) -> None:
        time.sleep(min(timeout, 0.01))

    def ping(self, message: str) -> None:
        self.pings += 1


def test_a_subscription_that_stops_answering_pings_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module, "_PING_INTERVAL_S", 0.02)
    monkeypatch.setattr(cache_module, "_PONG_TIMEOUT_S", 0.1)
    cache = ModelCache("redis://127.0.0.1:1/0", tmp_path, [ORG])  # never connects here
    pubsub = SilentPubSub()
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError, match="no pong"):
        cache._pump(pubsub)
    assert time.monotonic() - started < 2
    assert pubsub.pings >= 1
