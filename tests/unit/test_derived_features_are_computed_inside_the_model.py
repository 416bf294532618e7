"""Derived features are trained on float32 columns computed as the contract says, and the ONNX model
computes them itself from the raw columns with standard operators, giving the native model's
probabilities."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tests.unit.test_train_script import (
    FEATURES,
    Run,
    holdout_matrix,
    onnx_metadata,
    onnx_outputs,
    run_script,
    script_config,
    script_module,
    write_dataset,
)
from training_tasks.config.derived import compile_features
from training_tasks.config.derived import evaluate as service_evaluate
from training_tasks.protocol.onnx_checks import check_model_bytes

# One feature per function and operator of the expression language.
SPEC = {
    "temp_abs": "abs(temperature)",
    "pressure_sqrt": "sqrt(pressure)",  # NaN below zero
    "vibration_log1p": "log1p(vibration)",  # -inf at -1, NaN below
    "rpm_exp": "exp(rpm * 30)",  # overflows to inf
    "low": "min(temperature, pressure)",
    "high": "max(temperature, pressure)",
    "ratio": "temperature / pressure",
    "spread": "temperature - vibration",
    "sum": "temperature + rpm",
    "negated": "-rpm",
    "area": "pi * temperature * temperature + 2",
    "just_pi": "pi",
}
EXACT = ("temp_abs", "pressure_sqrt", "low", "high", "ratio", "spread", "sum", "negated", "area")
F32 = np.float32


def contract_evaluate(ast: Mapping[str, Any], raw: Mapping[str, np.ndarray]) -> Any:
    """The contract's float32 evaluation, written out independently of the script."""
    if "num" in ast:
        return F32(ast["num"])
    if "col" in ast:
        return raw[ast["col"]]
    a = [contract_evaluate(arg, raw) for arg in ast["args"]]
    name = ast.get("op", ast.get("fn"))
    with np.errstate(all="ignore"):
        return {
            "+": lambda: a[0] + a[1],
            "-": lambda: a[0] - a[1],
            "*": lambda: a[0] * a[1],
            "/": lambda: a[0] / a[1],
            "neg": lambda: -a[0],
            "abs": lambda: np.abs(a[0]),
            "sqrt": lambda: np.sqrt(a[0]),
            "log1p": lambda: np.log(a[0] + F32(1)),
            "exp": lambda: np.exp(a[0]),
            "min": lambda: np.minimum(a[0], a[1]),
            "max": lambda: np.maximum(a[0], a[1]),
        }[name]()


def contract_columns(derived: list[dict[str, Any]], x: np.ndarray) -> np.ndarray:
    """[raw..., derived...] of the raw rows `x`, float32."""
    raw = {name: x[:, j] for j, name in enumerate(FEATURES)}
    columns = [np.broadcast_to(contract_evaluate(d["ast"], raw), (len(x),)) for d in derived]
    return np.column_stack([x, *columns]).astype(np.float32)


def awkward_rows() -> np.ndarray:
    """Raw rows with zeros, negatives, -1, NaN, infinities and large values in every column."""
    special = [0.0, -0.0, 1.0, -1.0, -2.5, 3.0, 1e-30, 1e30, 88.0, -88.0, np.nan, np.inf, -np.inf]
    rng = np.random.default_rng(3)
    columns = [rng.permutation(np.r_[special, rng.normal(scale=3, size=200)]) for _ in FEATURES]
    return np.column_stack(columns).astype(np.float32)


def graph_columns(derived: list[dict[str, Any]], x: np.ndarray) -> np.ndarray:
    """What the script's graph front computes: [raw..., derived...] of the raw rows `x`."""
    front, output, columns = script_module().derived_front(FEATURES, [d["ast"] for d in derived])
    graph = helper.make_graph(
        front.nodes,
        "front",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", len(FEATURES)])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", None])],
        front.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    onnx.checker.check_model(model, full_check=True)
    (computed,) = ort.InferenceSession(model.SerializeToString()).run(None, {"input": x})
    return np.column_stack([x, computed[:, columns]])


@pytest.fixture(scope="module")
def derived() -> list[dict[str, Any]]:
    return compile_features(SPEC, FEATURES)


@pytest.mark.parametrize("name", list(SPEC))
def test_the_script_computes_each_function_as_the_contract_and_the_service_do(
    derived: list[dict[str, Any]], name: str
) -> None:
    x = awkward_rows()
    raw = {n: x[:, j] for j, n in enumerate(FEATURES)}
    (feature,) = [d for d in derived if d["name"] == name]

    by_script = script_module().evaluate(feature["ast"], lambda c: raw[c])
    (by_service,) = service_evaluate([feature], raw)
    expected = np.broadcast_to(contract_evaluate(feature["ast"], raw), (len(x),))

    assert np.asarray(by_script).dtype == np.float32
    np.testing.assert_array_equal(np.broadcast_to(by_script, (len(x),)), expected)
    np.testing.assert_array_equal(by_service, expected)


@pytest.mark.parametrize("name", list(SPEC))
def test_the_graph_computes_each_function_from_the_raw_columns(
    derived: list[dict[str, Any]], name: str
) -> None:
    x = awkward_rows()
    (feature,) = [d for d in derived if d["name"] == name]

    in_graph = graph_columns([feature], x)
    expected = contract_columns([feature], x)

    np.testing.assert_array_equal(in_graph[:, : len(FEATURES)], x)
    if name in EXACT or name == "just_pi":
        np.testing.assert_array_equal(in_graph, expected)  # IEEE operations: bit for bit
    else:
        # onnxruntime's Exp and Log are not numpy's: they may differ in the last bit.
        np.testing.assert_array_max_ulp(in_graph, expected, maxulp=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, derived: list[dict[str, Any]]) -> Run:
    folder = tmp_path_factory.mktemp("derived")
    write_dataset(folder, train_rows=4000, holdout_rows=2000)
    config = script_config(folder, derivedFeatures=derived)
    config["hyperparameters"] |= {"numIterations": 60, "featureFraction": 1.0}
    run = run_script(folder, config)
    assert run.returncode == 0, run.stderr
    return run


def test_the_onnx_model_takes_the_raw_columns_and_matches_the_native_model(
    trained: Run, derived: list[dict[str, Any]]
) -> None:
    x = holdout_matrix(trained.out.parent)

    probability, alarm = onnx_outputs(trained.out, x)
    native = lgb.Booster(model_file=str(trained.out / "model.txt"))

    assert native.num_feature() == len(FEATURES) + len(SPEC)
    assert np.abs(probability - native.predict(contract_columns(derived, x))).max() < 1e-6
    assert np.array_equal(alarm, probability >= 0.5)


def test_the_trees_split_on_derived_columns(trained: Run) -> None:
    text = (trained.out / "model.txt").read_text()
    used = {
        int(v) for line in re.findall(r"^split_feature=(.*)$", text, re.M) for v in line.split()
    }

    assert re.findall(r"^feature_names=(.*)$", text, re.M)[0].split() == [*FEATURES, *SPEC]
    assert any(index >= len(FEATURES) for index in used)


def test_the_model_uses_only_standard_operators_and_records_its_derived_features(
    trained: Run, derived: list[dict[str, Any]]
) -> None:
    data = (trained.out / "model.onnx").read_bytes()
    model = onnx.load_from_string(data)

    shape = check_model_bytes(data, feature_count=len(FEATURES))

    assert shape.input_name == "input"
    assert shape.output_names == ("failure_probability", "failure_alarm")
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx.ml"}
    assert shape.opsets[""] >= 13
    assert json.loads(onnx_metadata(trained.out)["derived_features"]) == derived
    assert json.loads(onnx_metadata(trained.out)["feature_columns"]) == FEATURES


@pytest.mark.parametrize(
    ("derived_features", "words"),
    [
        ([{"name": "rpm", "expression": "2", "ast": {"num": 2.0}}], "repeats the name"),
        ([{"name": "x", "expression": "humidity", "ast": {"col": "humidity"}}], "'humidity'"),
        ([{"name": "x", "expression": "?", "ast": {"fn": "tan", "args": [{"num": 1}]}}], "tan"),
    ],
)
def test_a_derived_feature_the_script_cannot_compute_is_refused_naming_it(
    tmp_path: Path, derived_features: list[dict[str, Any]], words: str
) -> None:
    write_dataset(tmp_path, train_rows=300, holdout_rows=100)

    run = run_script(tmp_path, script_config(tmp_path, derivedFeatures=derived_features))

    assert run.returncode != 0
    assert words in run.events[-1]["message"]
    assert "derived feature" in run.events[-1]["message"]
