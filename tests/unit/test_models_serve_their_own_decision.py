"""Each model serves its own decision: its `failure_alarm` output at its `decision_threshold`,
or probability >= 0.5 for a model exported without them; a bad threshold refuses the model."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tests.support.onnx_fixtures import make_data, to_onnx, to_onnx_with_alarm, train_booster
from training_tasks.protocol.hotswap import Deployment
from workers.model_cache import ModelCache, ModelRejected, ModelUnavailable
from workers.model_cache.model import load_model

ORG = "acme"
VERSION = "v2026-06-01T12-00-00-000Z_a1b2c3d4"


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    return train_booster(*make_data(300), rounds=8)


def deploy_file(base: Path, data: bytes) -> Deployment:
    path = base / "models" / ORG / f"deployed_{VERSION}" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    return Deployment(ORG, VERSION, str(path), sha, "2026-06-01T12:00:00.000Z", 1)


# Rows whose probabilities (by the module's booster) include some in [0.3, 0.5): there a model
# deciding at 0.3 and one deciding at 0.5 disagree.
DECISION_ROWS, _ = make_data(20, seed=7)


@contextlib.contextmanager
def serving(base: Path, data: bytes) -> Iterator[ModelCache]:
    """A cache serving the model `data` as its one deployment, without Redis."""
    cache = ModelCache("redis://127.0.0.1:1/0", base, [ORG])  # never connects here
    try:
        cache._slots.offer(deploy_file(base, data), announced=False)
        assert cache.wait_idle(30)
        yield cache
    finally:
        cache._slots.close()


def test_a_model_with_an_alarm_output_serves_its_own_alarms_and_threshold(
    tmp_path: Path, booster: lgb.Booster
) -> None:
    onnx_model = to_onnx_with_alarm(booster, threshold=0.3, org_id=ORG, version=VERSION)
    data = onnx_model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (own_alarms,) = session.run(["failure_alarm"], {"input": DECISION_ROWS})
    with serving(tmp_path, data) as cache:
        prediction = cache.predict(ORG, DECISION_ROWS.tolist())
    probabilities = prediction.probabilities
    assert prediction.threshold == 0.3
    assert prediction.alarms.dtype == np.bool_ and prediction.alarms.shape == (20,)
    assert prediction.alarms.tolist() == own_alarms.tolist()
    assert prediction.alarms.tolist() == (probabilities >= np.float32(0.3)).tolist()
    assert (prediction.alarms != (probabilities >= 0.5)).any()  # not the old models' rule
    assert np.allclose(probabilities, booster.predict(DECISION_ROWS), atol=1e-5)


@pytest.mark.parametrize("probability_pair", [False, True])
def test_an_old_model_serves_alarms_at_probability_half_and_threshold_half(
    tmp_path: Path, booster: lgb.Booster, probability_pair: bool
) -> None:
    data = to_onnx(
        booster, org_id=ORG, version=VERSION, probability_pair=probability_pair
    ).SerializeToString()
    model = load_model(tmp_path, ORG, deploy_file(tmp_path, data))
    assert (model.threshold, model.has_alarm) == (0.5, False)
    with serving(tmp_path / "cache", data) as cache:
        prediction = cache.predict(ORG, DECISION_ROWS)
    assert prediction.threshold == 0.5
    assert prediction.alarms.dtype == np.bool_
    assert prediction.alarms.tolist() == (prediction.probabilities >= 0.5).tolist()
    assert prediction.alarms.any() and not prediction.alarms.all()


def test_a_threshold_without_an_alarm_output_decides_at_that_threshold(
    tmp_path: Path, booster: lgb.Booster
) -> None:
    onnx_model = to_onnx(booster, org_id=ORG, version=VERSION)
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = "decision_threshold", "0.3"
    model = load_model(tmp_path, ORG, deploy_file(tmp_path, onnx_model.SerializeToString()))
    probabilities, alarms = model.decide(DECISION_ROWS)
    assert (model.threshold, model.has_alarm) == (0.3, False)
    assert alarms.tolist() == (probabilities >= np.float32(0.3)).tolist()


@pytest.mark.parametrize("value", ["abc", "1.5", "nan", "-0.1"])
def test_a_model_whose_decision_threshold_is_not_a_probability_is_refused_naming_it(
    tmp_path: Path, booster: lgb.Booster, value: str
) -> None:
    data = to_onnx_with_alarm(
        booster, threshold_metadata=value, org_id=ORG, version=VERSION
    ).SerializeToString()
    with pytest.raises(ModelRejected, match=f"decision_threshold .*{value}"):
        load_model(tmp_path, ORG, deploy_file(tmp_path, data))
    # In a cache it is refused like any failed check: counted, and the 503 says why.
    with serving(tmp_path / "cache", data) as cache:
        with pytest.raises(ModelUnavailable, match="decision_threshold"):
            cache.predict(ORG, DECISION_ROWS)
        assert cache.stats()[ORG].load_failures == 1


def test_an_alarm_output_that_is_not_bool_is_refused(tmp_path: Path, booster: lgb.Booster) -> None:
    onnx_model = to_onnx(booster, org_id=ORG, version=VERSION)
    onnx_model.graph.node.append(
        helper.make_node("Identity", ["failure_probability"], ["failure_alarm"])
    )
    onnx_model.graph.output.append(
        helper.make_tensor_value_info("failure_alarm", TensorProto.FLOAT, [None])
    )
    data = onnx_model.SerializeToString()
    with pytest.raises(ModelRejected, match=r"'failure_alarm' .*tensor\(float\).*bool \[N\]"):
        load_model(tmp_path, ORG, deploy_file(tmp_path, data))


class CountingSession:
    """An onnxruntime session that counts its runs."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.runs = 0

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.runs += 1
        return self.session.run(names, feed)


def test_one_prediction_runs_the_model_once_for_probabilities_and_alarms(
    tmp_path: Path, booster: lgb.Booster
) -> None:
    data = to_onnx_with_alarm(booster, threshold=0.3, org_id=ORG, version=VERSION)
    model = load_model(tmp_path, ORG, deploy_file(tmp_path, data.SerializeToString()))
    counting = CountingSession(model.session)
    probabilities, alarms = replace(model, session=counting).decide(DECISION_ROWS)
    assert counting.runs == 1
    assert alarms.tolist() == (probabilities >= np.float32(0.3)).tolist()
