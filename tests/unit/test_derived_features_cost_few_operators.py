"""The graph computes derived features side by side (one operator per kind of operation, not per
feature) and moves a feature's last constant steps into the trees' thresholds, and neither
changes a single decision: every value is the contract's, every row takes the native model's
branches, also rows sitting exactly on a moved threshold."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import lightgbm as lgb
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.unit.test_derived_features_are_computed_inside_the_model import (
    awkward_rows,
    contract_columns,
    graph_columns,
)
from tests.unit.test_train_script import FEATURES, script_module
from training_tasks.config.derived import compile_features

# Operations that share columns, operands and constants, so that several must wait a round.
SHARED = {
    "ab": "temperature * pressure",
    "ac": "temperature * vibration",
    "aa": "temperature * temperature",
    "ba": "pressure * temperature",
    "a_minus_b": "temperature - pressure",
    "b_minus_a": "pressure - temperature",
    "a_over_b": "temperature / pressure",
    "b_over_a": "pressure / temperature",
    "nested": "(temperature * pressure) * (temperature * vibration)",
    "twice": "temperature * 2",
    "thrice": "temperature * 3",
    "from_ten": "10 - rpm",
    "low": "min(temperature, pressure)",
    "high": "max(pressure, temperature)",
    "scaled_by_a_function": "sqrt(2) * rpm",
    "plain": "vibration",
    "mixed": "log1p(temperature * pressure) * sqrt(rpm)",
    "exp_twice": "exp(rpm) + exp(rpm)",
}
# onnxruntime's Log and Exp may differ from numpy's in the last two bits; the product adds one.
ROUNDED_BY_ORT = ("mixed", "exp_twice")
PHYSICS = {
    "power": "temperature * rpm * 2 * pi / 60",
    "spread": "pressure - vibration",
    "strain": "vibration * temperature",
    "always": "2 * pi",  # a constant: the trees cannot split on it
}
# Each feature ends in constant steps the trees can take over.
FOLDED = {
    "scaled": "temperature * 2 * pi / 60",
    "kelvin": "273.15 + pressure",
    "power": "vibration * rpm / 1000 - 3",
    "falling": "5 - temperature",  # decreasing: stays in the graph
}


def test_features_sharing_columns_are_computed_together_exactly_as_the_contract_says() -> None:
    derived = compile_features(SHARED, FEATURES)
    x = awkward_rows()

    in_graph = graph_columns(derived, x)
    expected = contract_columns(derived, x)

    for j, name in enumerate([*FEATURES, *SHARED]):
        if name in ROUNDED_BY_ORT:
            np.testing.assert_array_max_ulp(in_graph[:, j], expected[:, j], maxulp=4)
        else:
            np.testing.assert_array_equal(in_graph[:, j], expected[:, j], err_msg=name)


def test_three_physics_features_cost_four_operators_in_front_of_the_trees() -> None:
    derived = compile_features(PHYSICS, FEATURES)
    booster, model = converted(derived, rows=20_000)
    used = used_features(booster)

    front = Counter(n.op_type for n in model.graph.node[: tree_position(model)])

    assert used == {4, 5, 6}
    # One Gather lines rpm, vibration and temperature up under temperature, pressure and
    # vibration; one Mul makes both products, one Sub the spread; the trees compare
    # temperature * rpm with thresholds moved by 2 * pi / 60.
    assert front == Counter({"Gather": 1, "Mul": 1, "Sub": 1, "Concat": 1})


@pytest.mark.parametrize(
    "steps",
    [
        [("*", 0.10471975803375244)],
        [("*", 3.0), ("+", -1.5)],
        [("+", 273.15)],
        [("-", 3.0)],
        [("*", 1e-3), ("-", 3.0)],
        [("*", 1e30)],  # overflows to inf
        [("*", 1e-40)],  # a subnormal factor
    ],
)
def test_a_moved_threshold_is_the_largest_value_the_steps_keep_at_or_below_the_old_one(
    steps: list[tuple[str, float]],
) -> None:
    fold = script_module().fold_into_thresholds
    rng = np.random.default_rng(0)
    thresholds = np.r_[
        rng.normal(scale=10, size=300), 0.0, -0.0, 1e-38, -1e-38, 3e38, -3e38, 1e-45
    ].astype(np.float32)

    moved = fold(steps, thresholds)
    below_top = moved < np.inf  # +inf: every value stays at or below the old threshold
    with np.errstate(over="ignore"):  # the largest float32 steps up to inf
        after = np.nextafter(moved[below_top], np.float32(np.inf))

    assert moved.dtype == np.float32
    assert np.all(apply(steps, moved) <= thresholds)
    assert np.all(apply(steps, after) > thresholds[below_top])


def test_rows_on_moved_thresholds_take_the_native_models_branches() -> None:
    derived = compile_features(FOLDED, FEATURES)
    booster, model = converted(derived, rows=20_000)
    probes = boundary_rows(booster, derived)

    session = ort.InferenceSession(model.SerializeToString())
    (probability, _) = session.run(None, {"input": probes})
    native = booster.predict(contract_columns(derived, probes))

    assert {4, 5, 6} <= used_features(booster)
    assert len(probes) > 1000
    np.testing.assert_allclose(probability, native, atol=1e-6)


def test_an_unused_derived_feature_adds_no_operator() -> None:
    derived = compile_features({"unused": "exp(temperature) * rpm", **PHYSICS}, FEATURES)
    columns = np.random.default_rng(1).normal(size=(2000, len(FEATURES))).astype(np.float32)
    labels = (columns[:, 0] > 0.5).astype(int)  # only temperature matters
    booster = lgb.train(
        {
            "objective": "binary",
            "verbosity": -1,
            "seed": 1,
            "feature_contri": [1.0] + [0.0] * (len(FEATURES) + len(derived) - 1),
        },
        lgb.Dataset(contract_columns(derived, columns), label=labels),
        20,
    )
    model = export(booster, derived)

    assert used_features(booster) == {0}
    assert model.graph.node[tree_position(model)].input[0] == "input"
    assert tree_position(model) == 0


# --- helpers ----------------------------------------------------------------------------------


def apply(steps: list[tuple[str, float]], values: np.ndarray) -> np.ndarray:
    """The steps in float32, as the graph computes them."""
    with np.errstate(all="ignore"):
        for op, constant in steps:
            c = np.float32(constant)
            values = values * c if op == "*" else values + c if op == "+" else values - c
    return values


def converted(derived: list[dict[str, Any]], rows: int) -> tuple[lgb.Booster, onnx.ModelProto]:
    """A booster trained on [raw..., derived...] whose labels depend on the derived columns, and
    its export by the bundled script."""
    rng = np.random.default_rng(7)
    raw = rng.normal(scale=[5, 3, 2, 40], size=(rows, len(FEATURES))).astype(np.float32)
    columns = contract_columns(derived, raw)
    extra = columns[:, len(FEATURES) :]
    spread = (extra - extra.mean(axis=0)) / (extra.std(axis=0) + 1e-9)
    labels = (np.nan_to_num(spread).sum(axis=1) + rng.normal(scale=0.3, size=rows) > 1).astype(int)
    booster = lgb.train(
        {
            "objective": "binary",
            "verbosity": -1,
            "seed": 3,
            "num_leaves": 15,
            # splits on derived columns only: a raw column would rank rows as a scaled copy of
            # it does, and LightGBM takes the first of equal candidates
            "feature_contri": [0.0] * len(FEATURES) + [1.0] * len(derived),
        },
        lgb.Dataset(columns, label=labels),
        40,
    )
    return booster, export(booster, derived)


def export(booster: lgb.Booster, derived: list[dict[str, Any]]) -> onnx.ModelProto:
    tm = script_module()
    config = {
        "organizationId": "acme",
        "version": "v1",
        "decisionPolicy": {"type": "fixed", "threshold": 0.5},
        "featureColumns": FEATURES,
        "derivedFeatures": derived,
    }
    model = onnx.load_from_string(
        tm.finish(tm.convert(booster.model_to_string(), config), config, 0.5, 42)
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def used_features(booster: lgb.Booster) -> set[int]:
    text = booster.model_to_string()
    return {
        int(v) for line in re.findall(r"^split_feature=(.*)$", text, re.M) for v in line.split()
    }


def tree_position(model: onnx.ModelProto) -> int:
    return next(i for i, n in enumerate(model.graph.node) if n.op_type.startswith("TreeEnsemble"))


def boundary_rows(booster: lgb.Booster, derived: list[dict[str, Any]]) -> np.ndarray:
    """Raw rows whose derived value sits on, or a few float32 steps either side of, each split
    threshold of a derived feature: the core of every FOLDED feature is one raw column when
    vibration is 1, so the rows are found by solving for that column."""
    text = booster.model_to_string()
    features = [int(v) for s in re.findall(r"^split_feature=(.*)$", text, re.M) for v in s.split()]
    thresholds = [float(v) for s in re.findall(r"^threshold=(.*)$", text, re.M) for v in s.split()]
    solve = {  # derived feature -> (raw column, its value for a derived value t)
        4: (0, lambda t: t / (2 * np.pi / 60)),
        5: (1, lambda t: t - 273.15),
        6: (3, lambda t: (t + 3) * 1000),
        7: (0, lambda t: 5 - t),
    }
    base = np.ones(len(FEATURES), np.float32)
    rows = []
    for feature, threshold in zip(features, thresholds, strict=True):
        if feature not in solve:
            continue
        column, inverse = solve[feature]
        value = np.float32(inverse(threshold))
        for _ in range(12):  # walk 12 float32 steps down, then up through the crossing
            value = np.nextafter(value, np.float32(-np.inf))
        for _ in range(25):
            row = base.copy()
            row[column] = value
            rows.append(row)
            value = np.nextafter(value, np.float32(np.inf))
    assert len(derived) == 4
    return np.array(rows, np.float32)
