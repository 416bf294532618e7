"""The window statistics computed inside the ONNX graph equal the training-side ones (to float32
rounding), cost few operators, and windows with gaps are refused with the fix named."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tests.unit.test_train_script import script_module

STATS = ["mean", "std", "min", "max", "slope", "last", "delta"]
SPEC = {"interval": "10min", "length": 36, "columns": ["vibration", "temperature"], "stats": STATS}
SCRIPT = script_module()


def front_session(spec: dict[str, Any]) -> tuple[ort.InferenceSession, onnx.ModelProto]:
    """A model that is only the window front: `window` in, the features out."""
    nodes, initializers, output, width = SCRIPT.window_front(spec)
    graph = helper.make_graph(
        nodes,
        "window_front",
        [
            helper.make_tensor_value_info(
                "window", TensorProto.FLOAT, ["N", spec["length"], len(spec["columns"])]
            )
        ],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", width])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session, model


def assert_graph_matches(window: np.ndarray, spec: dict[str, Any]) -> float:
    """Graph vs `window_features`: within 1e-4, or within 1e-6 of the window's magnitude where
    that is larger (float32 holds a level of 1e4 only to about 1e-3); returns the worst ratio of
    difference to allowance."""
    session, _ = front_session(spec)
    (graph,) = session.run(None, {"window": window})
    expected = SCRIPT.window_features(window, spec)
    assert graph.shape == expected.shape == (len(window), len(spec["columns"]) * len(spec["stats"]))
    assert graph.dtype == np.float32
    # per window and column: the largest magnitude its statistics are computed from
    allowed = np.maximum(1e-4, 1e-6 * np.abs(window).max(axis=1))  # [N, C]
    allowed = np.repeat(allowed, len(spec["stats"]), axis=1)
    worst = float((np.abs(graph.astype(np.float64) - expected) / allowed).max(initial=0.0))
    assert worst <= 1, f"graph and training differ by {worst:.2f} times the allowance"
    return worst


def windows(rng: np.random.Generator, rows: int, length: int, columns: int, level: float) -> Any:
    """Noisy windows with a trend around `level`."""
    trend = rng.normal(size=(rows, 1, columns)) * np.arange(length)[None, :, None] * 0.1
    noise = rng.normal(size=(rows, length, columns))
    return (level + trend + noise).astype(np.float32)


def spec_of(length: int, columns: int, stats: list[str] = STATS) -> dict[str, Any]:
    names = ["vibration", "temperature", "pressure"][:columns]
    return {"interval": "10min", "length": length, "columns": names, "stats": stats}


@pytest.mark.parametrize("level", [0.0, -3.5, 1e4, -1e4, 1e6])
@pytest.mark.parametrize(("length", "columns"), [(36, 2), (36, 1), (2, 3), (1, 2), (7, 3)])
def test_graph_statistics_equal_the_training_ones(level: float, length: int, columns: int) -> None:
    rng = np.random.default_rng(int(abs(level)) + length * 10 + columns)
    assert_graph_matches(windows(rng, 64, length, columns, level), spec_of(length, columns))


@pytest.mark.parametrize("value", [0.0, 3.7, 1e4 + 0.1, -2.5e5])
def test_constant_windows_have_no_spread_no_trend_and_no_change(value: float) -> None:
    window = np.full((3, 36, 2), value, np.float32)
    assert_graph_matches(window, SPEC)
    features = SCRIPT.window_features(window, SPEC).reshape(3, 2, len(STATS))
    by_stat = dict(zip(STATS, np.moveaxis(features, 2, 0), strict=True))
    for stat in ("std", "slope", "delta"):
        assert np.all(by_stat[stat] == 0), stat
    for stat in ("mean", "min", "max", "last"):
        assert np.all(by_stat[stat] == np.float32(value)), stat


def test_a_straight_line_has_its_step_as_slope_and_its_rise_as_delta() -> None:
    window = (5.0 + 0.25 * np.arange(36, dtype=np.float32))[None, :, None].repeat(2, axis=2)
    session, _ = front_session(SPEC)
    (graph,) = session.run(None, {"window": window})
    names = SCRIPT.window_feature_names(SPEC)
    values = dict(zip(names, graph[0].tolist(), strict=True))
    assert values["vibration__slope"] == pytest.approx(0.25, abs=1e-6)
    assert values["temperature__delta"] == pytest.approx(0.25 * 35, abs=1e-6)
    assert values["vibration__last"] == pytest.approx(5 + 8.75)
    assert values["temperature__min"] == 5.0 and values["temperature__max"] == 13.75


def test_any_subset_and_order_of_statistics_is_computed_in_that_order() -> None:
    rng = np.random.default_rng(7)
    window = windows(rng, 16, 12, 2, 50.0)
    for stats in (["delta", "mean"], ["max"], ["slope"], ["std", "last"], ["last", "min"]):
        spec = spec_of(12, 2, stats)
        assert_graph_matches(window, spec)
        assert SCRIPT.window_feature_names(spec)[: len(stats)] == [f"vibration__{s}" for s in stats]


def test_features_are_named_per_column_then_per_statistic() -> None:
    names = SCRIPT.window_feature_names(SPEC)
    assert names[:3] == ["vibration__mean", "vibration__std", "vibration__min"]
    assert names[7] == "temperature__mean" and len(names) == 14


def test_the_example_window_costs_nine_operators() -> None:
    _, model = front_session(SPEC)
    kinds = Counter(node.op_type for node in model.graph.node)
    assert sum(kinds.values()) == 9, kinds
    assert kinds["MatMul"] == 1
    only_linear = spec_of(36, 2, ["mean", "last", "delta"])
    assert len(front_session(only_linear)[1].graph.node) == 3  # Transpose, MatMul, Flatten


def test_an_empty_batch_gives_no_rows() -> None:
    session, _ = front_session(SPEC)
    (graph,) = session.run(None, {"window": np.zeros((0, 36, 2), np.float32)})
    assert graph.shape == (0, 14)


def test_windows_with_gaps_are_refused_with_the_fix_named() -> None:
    window = np.ones((4, 36, 2), np.float32)
    window[2, 5, 1] = np.nan
    with pytest.raises(SCRIPT.ScriptError, match=r"\['temperature'\].*forward-fill"):
        SCRIPT.window_features(window, SPEC)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"length": 0}, "length"),
        ({"stats": ["mean", "median"]}, "unknown stats"),
        ({"columns": ["a", "a"]}, "twice"),
        ({"columns": []}, "columns"),
        ({"interval": None}, "interval"),
    ],
)
def test_a_wrong_window_spec_is_refused_naming_the_field(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(SCRIPT.ScriptError, match=message):
        SCRIPT.window_front({**SPEC, **change})


def test_windows_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(SCRIPT.ScriptError, match=r"\[N, 36, 2\]"):
        SCRIPT.window_features(np.zeros((1, 35, 2), np.float32), SPEC)


def test_single_window_latency_is_reported() -> None:
    session, _ = front_session(SPEC)
    window = windows(np.random.default_rng(1), 1, 36, 2, 20.0)
    for _ in range(200):
        session.run(None, {"window": window})
    times_us = []
    for _ in range(2000):
        started = time.perf_counter()
        session.run(None, {"window": window})
        times_us.append((time.perf_counter() - started) * 1e6)
    print(f"\nwindow front, one window [1, 36, 2] -> 14 features: p50 {np.median(times_us):.1f} µs")
