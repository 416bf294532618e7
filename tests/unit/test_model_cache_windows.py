"""A window model in the model cache: it takes windows [n, length, columns], says what a window
holds, refuses other shapes and gaps naming what to send, and a file whose metadata and input
disagree is never served."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.support.onnx_fixtures import (
    WINDOW,
    make_data,
    make_windows,
    to_onnx,
    to_onnx_window,
    train_booster,
    train_window_booster,
    window_statistics,
)
from training_tasks.protocol.hotswap import Deployment
from workers.model_cache import ModelCache, ModelRejected
from workers.model_cache.model import LoadedModel, load_model

ORG = "acme"
VERSION = "v2026-06-01T12-00-00-000Z_a1b2c3d4"
LATER = "v2026-06-02T12-00-00-000Z_b1b2c3d4"
LENGTH, COLUMNS = WINDOW["length"], len(WINDOW["columns"])
WINDOWS, LABELS = make_windows(200, seed=5)


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    return train_window_booster(*make_windows(1500), rounds=20)


def deploy_file(
    base: Path, data: bytes, *, version: str = VERSION, sequence: int = 1
) -> Deployment:
    path = base / "models" / ORG / f"deployed_{version}" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    return Deployment(ORG, version, str(path), sha, "2026-06-01T12:00:00.000Z", sequence)


def window_model(base: Path, booster: lgb.Booster, **options: Any) -> LoadedModel:
    data = to_onnx_window(booster, org_id=ORG, version=VERSION, **options).SerializeToString()
    return load_model(base, ORG, deploy_file(base, data))


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


# -- what a window model takes and answers ------------------------------------------------------


def test_a_window_model_says_it_takes_windows_of_its_length_and_columns(
    tmp_path: Path, booster: lgb.Booster
) -> None:
    model = window_model(tmp_path, booster)
    assert model.window is not None and model.window.to_wire() == WINDOW
    assert model.input_shape == (LENGTH, COLUMNS)
    assert model.feature_columns == tuple(WINDOW["columns"])
    assert model.input_name == "window"


def test_a_window_model_scores_windows_as_its_trees_score_their_statistics(
    tmp_path: Path, booster: lgb.Booster
) -> None:
    model = window_model(tmp_path, booster, threshold=0.4)
    probabilities, alarms = model.decide(WINDOWS)
    reference = booster.predict(window_statistics(WINDOWS))
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(WINDOWS),)
    assert np.abs(probabilities - reference).max() < 1e-5
    assert alarms.tolist() == (probabilities >= np.float32(0.4)).tolist()
    assert alarms.any() and not alarms.all()
    assert model.threshold == 0.4


def test_a_single_window_gives_the_same_answer_as_in_a_batch(
    tmp_path: Path, booster: lgb.Booster
) -> None:
    model = window_model(tmp_path, booster)
    batch = model.predict(WINDOWS[:3])
    one = model.predict(WINDOWS[1])  # [length, columns]
    as_lists = model.predict(WINDOWS[2].tolist())
    assert one.shape == (1,) and one[0] == batch[1] and as_lists[0] == batch[2]


@pytest.mark.parametrize(
    "shape",
    [(4, LENGTH - 1, COLUMNS), (4, LENGTH, COLUMNS + 1), (4, COLUMNS), (LENGTH * COLUMNS,)],
)
def test_input_of_another_shape_is_refused_naming_the_window_shape_and_columns(
    tmp_path: Path, booster: lgb.Booster, shape: tuple[int, ...]
) -> None:
    model = window_model(tmp_path, booster)
    with pytest.raises(ValueError) as refused:
        model.decide(np.zeros(shape, dtype=np.float32))
    message = str(refused.value)
    assert f"[n_windows, {LENGTH}, {COLUMNS}]" in message
    assert "36 buckets of 10min, oldest first" in message
    assert "['vibration', 'temperature']" in message and f"got shape {list(shape)}" in message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_window_with_a_gap_is_refused_naming_the_window_and_column(
    tmp_path: Path, booster: lgb.Booster, bad: float
) -> None:
    model = window_model(tmp_path, booster)
    windows = WINDOWS[:5].copy()
    windows[3, 10, 1] = bad
    with pytest.raises(ValueError, match=r"window 3 holds NaN or infinity in \['temperature'\]"):
        model.decide(windows)


def test_a_model_on_single_readings_refuses_windows_naming_its_rows(tmp_path: Path) -> None:
    booster = train_booster(*make_data(300), rounds=5)
    data = to_onnx(booster, org_id=ORG, version=VERSION).SerializeToString()
    model = load_model(tmp_path, ORG, deploy_file(tmp_path, data))
    assert model.window is None and model.input_shape == (4,)
    with pytest.raises(ValueError, match=r"rows must be 2-D \[n_rows, 4\] in the order"):
        model.decide(np.zeros((2, LENGTH, 4), dtype=np.float32))


def test_the_cache_says_which_window_an_organization_is_served_with(
    tmp_path: Path, booster: lgb.Booster
) -> None:
    data = to_onnx_window(booster, org_id=ORG, version=VERSION).SerializeToString()
    with serving(tmp_path, data) as cache:
        assert cache.window_spec(ORG) == WINDOW
        assert cache.feature_columns(ORG) == WINDOW["columns"]
        prediction = cache.predict(ORG, WINDOWS[:4])
    assert prediction.version == VERSION and prediction.probabilities.shape == (4,)


def test_the_cache_has_no_window_for_an_organization_served_on_single_readings(
    tmp_path: Path,
) -> None:
    booster = train_booster(*make_data(300), rounds=5)
    data = to_onnx(booster, org_id=ORG, version=VERSION).SerializeToString()
    with serving(tmp_path, data) as cache:
        assert cache.window_spec(ORG) is None


# -- files whose metadata and input disagree ----------------------------------------------------


def without_window_metadata(booster: lgb.Booster) -> bytes:
    model = to_onnx_window(booster, org_id=ORG, version=VERSION, metadata={"window": None})
    return model.SerializeToString()


def window_on_a_row_model() -> bytes:
    booster = train_booster(*make_data(300), rounds=5)
    model = to_onnx(booster, org_id=ORG, version=VERSION)
    onnx.helper.set_model_props(
        model,
        {**{p.key: p.value for p in model.metadata_props}, "window": json.dumps(WINDOW)},
    )
    return model.SerializeToString()


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"metadata": {"window": json.dumps({**WINDOW, "length": 24})}}, r"windows \[N, 24, 2\]"),
        ({"input_shape": ["N", LENGTH, 3]}, r"takes input 'window' of shape \['N', 36, 3\]"),
        ({"metadata": {"feature_columns": '["vibration", "pressure"]'}}, "its window holds"),
        ({"metadata": {"window": '{"length": 36}'}}, "malformed metadata window"),
        ({"metadata": {"window": "[1, 2"}}, "malformed metadata window"),
        ({"metadata": {"window": json.dumps({**WINDOW, "length": 10**9})}}, "more than the"),
        ({"metadata": {"window_feature_columns": '["vibration__mean"]'}}, "not the statistics"),
    ],
)
def test_a_window_model_whose_metadata_and_input_disagree_is_refused_at_load(
    tmp_path: Path, booster: lgb.Booster, options: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ModelRejected, match=reason):
        window_model(tmp_path, booster, **options)


def test_a_window_input_without_window_metadata_is_refused_at_load(
    tmp_path: Path, booster: lgb.Booster
) -> None:
    deployment = deploy_file(tmp_path, without_window_metadata(booster))
    with pytest.raises(ModelRejected, match="has no window metadata saying its length"):
        load_model(tmp_path, ORG, deployment)


def test_window_metadata_on_a_model_that_takes_rows_is_refused_at_load(tmp_path: Path) -> None:
    deployment = deploy_file(tmp_path, window_on_a_row_model())
    with pytest.raises(ModelRejected, match=r"takes input 'input' of shape \[None, 4\]"):
        load_model(tmp_path, ORG, deployment)


def test_a_refused_window_model_leaves_the_served_one_in_place(
    tmp_path: Path, booster: lgb.Booster
) -> None:
    good = to_onnx_window(booster, org_id=ORG, version=VERSION).SerializeToString()
    with serving(tmp_path, good) as cache:
        bad = to_onnx_window(booster, org_id=ORG, version=LATER, metadata={"window": None})
        cache._slots.offer(
            deploy_file(tmp_path, bad.SerializeToString(), version=LATER, sequence=2),
            announced=True,
        )
        assert cache.wait_idle(30)
        assert cache.version(ORG) == VERSION and cache.window_spec(ORG) == WINDOW
        assert "has no window metadata" in str(cache.served()[ORG].last_error)


# -- the session agrees with a bare onnxruntime -------------------------------------------------


def test_the_cache_answers_exactly_what_a_bare_session_answers(
    tmp_path: Path, booster: lgb.Booster
) -> None:
    data = to_onnx_window(booster, org_id=ORG, version=VERSION).SerializeToString()
    model = load_model(tmp_path, ORG, deploy_file(tmp_path, data))
    options = ort.SessionOptions()
    options.intra_op_num_threads = (
        1  # as the cache runs it: more threads add trees in another order
    )
    bare = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    probabilities, alarms = bare.run(["failure_probability", "failure_alarm"], {"window": WINDOWS})
    ours, our_alarms = model.decide(WINDOWS)
    assert ours.tobytes() == probabilities.tobytes() and (our_alarms == alarms).all()
