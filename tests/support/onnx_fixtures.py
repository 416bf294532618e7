"""Small LightGBM failure classifiers exported to ONNX by the model contract, and their holdouts."""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import lightgbm as lgb
import numpy as np
import onnx
import onnxmltools
import pyarrow as pa
import pyarrow.parquet as pq
from onnx import TensorProto, helper, numpy_helper
from onnxmltools.convert.common.data_types import FloatTensorType

FEATURES = ["temperature", "pressure", "vibration", "rpm"]
TARGET = "failure"
ORG_ID = "acme-plant"
VERSION = "v2026-06-01T12-00-00-000Z_a1b2c3d4"
# The highest opset the installed onnxmltools LightGBM converter supports.
TARGET_OPSET = 15


def make_data(
    rows: int, *, seed: int = 0, width: int = len(FEATURES), informative: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Sensor-like float32 features with a few NaN, and 0/1 failure labels (about 40% failures).

    With `informative=False` the labels are random, so no model can learn them.
    """
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, width)).astype(np.float32)
    features[rng.random(features.shape) < 0.02] = np.nan
    clean = np.nan_to_num(features)
    logit = 2.5 * clean[:, 0] - 2.0 * clean[:, 1] + clean[:, 2 % width] - 0.5
    labels = logit + rng.normal(scale=0.7, size=rows) > 0
    if not informative:
        labels = rng.random(rows) < 0.4
    return features, labels.astype(np.int8)


def train_booster(
    features: np.ndarray, labels: np.ndarray, *, rounds: int = 40, seed: int = 0
) -> lgb.Booster:
    """A small binary LightGBM booster."""
    # One thread: these boosters are tiny, and OpenMP threads spin badly on a busy machine.
    params = {
        "objective": "binary",
        "num_leaves": 15,
        "verbosity": -1,
        "seed": seed,
        "num_threads": 1,
    }
    return lgb.train(params, lgb.Dataset(features, labels), num_boost_round=rounds)


def to_onnx(
    booster: lgb.Booster,
    *,
    feature_columns: Sequence[str] = FEATURES,
    org_id: str = ORG_ID,
    version: str = VERSION,
    probability_pair: bool = False,
) -> onnx.ModelProto:
    """Convert a booster to the model contract: input `input`, output `failure_probability` [N].

    With `probability_pair=True` the converter's own [N, 2] `probabilities` output is kept instead.
    """
    width = booster.num_feature()
    model = onnxmltools.convert_lightgbm(
        booster,
        initial_types=[("input", FloatTensorType([None, width]))],
        zipmap=False,
        target_opset=TARGET_OPSET,
    )
    graph = model.graph
    if not probability_pair:
        del graph.output[:]
        graph.initializer.append(numpy_helper.from_array(np.array(1, dtype=np.int64), "class_1"))
        graph.node.append(
            helper.make_node(
                "Gather", ["probabilities", "class_1"], ["failure_probability"], axis=1
            )
        )
        graph.output.append(
            helper.make_tensor_value_info("failure_probability", TensorProto.FLOAT, [None])
        )
    metadata = {
        "feature_columns": json.dumps(list(feature_columns)),
        "organization_id": org_id,
        "version": version,
    }
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model


def save_model(
    folder: Path,
    booster: lgb.Booster,
    *,
    native: lgb.Booster | None = None,
    **onnx_options: Any,
) -> Path:
    """Write `model.onnx` and, next to it, `model.txt` of `native` (default: the same booster)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(to_onnx(booster, **onnx_options).SerializeToString())
    (native or booster).save_model(str(folder / "model.txt"))
    return path


def write_holdout(
    path: Path,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    feature_columns: Sequence[str] = FEATURES,
    target_column: str = TARGET,
) -> Path:
    """A holdout Parquet file as extract writes it: timestamp, asset id, features, target."""
    rows = len(labels)
    columns: dict[str, pa.Array] = {
        "ts": pa.array(
            np.datetime64("2026-01-01T00:00:00") + np.arange(rows) * np.timedelta64(1, "m")
        ),
        "asset_id": pa.array([f"pump-{i % 7}" for i in range(rows)]),
    }
    for j, name in enumerate(feature_columns):
        columns[name] = pa.array(features[:, j], type=pa.float32())
    columns[target_column] = pa.array(labels, type=pa.int8())
    pq.write_table(pa.table(columns), path)
    return path


# The lowest default-domain opset with GreaterOrEqual is 12; 13 is what the training script uses.
DECISION_OPSET = 13


def to_onnx_with_alarm(
    booster: lgb.Booster,
    *,
    threshold: float = 0.5,
    threshold_metadata: str | None = None,
    **onnx_options: Any,
) -> onnx.ModelProto:
    """The model contract with a decision: `failure_alarm` bool [N] = probability >= `threshold`.

    Metadata `decision_threshold` is `repr(threshold)`, or `threshold_metadata` when given (to
    write a value a reader must refuse).
    """
    model = to_onnx(booster, **onnx_options)
    graph = model.graph
    graph.initializer.append(
        numpy_helper.from_array(np.array(threshold, dtype=np.float32), "decision_threshold")
    )
    graph.node.append(
        helper.make_node(
            "GreaterOrEqual", ["failure_probability", "decision_threshold"], ["failure_alarm"]
        )
    )
    graph.output.append(helper.make_tensor_value_info("failure_alarm", TensorProto.BOOL, [None]))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, DECISION_OPSET)
    shown = repr(threshold) if threshold_metadata is None else threshold_metadata
    entry = model.metadata_props.add()
    entry.key, entry.value = "decision_threshold", shown
    onnx.checker.check_model(model)
    return model


# Operators of the derived-feature expressions, as the training script builds them.
_DERIVED_OPERATORS = {
    "+": "Add",
    "-": "Sub",
    "*": "Mul",
    "/": "Div",
    "neg": "Neg",
    "abs": "Abs",
    "sqrt": "Sqrt",
    "exp": "Exp",
    "min": "Min",
    "max": "Max",
}


def derived_spec(spec: dict[str, str], feature_columns: Sequence[str] = FEATURES) -> list[Any]:
    """Derived features as the run records them ([{name, expression, ast}]) from {name: text}."""
    from training_tasks.config.derived import compile_features

    return compile_features(spec, feature_columns)


def with_derived_columns(
    features: np.ndarray, derived: Sequence[Any], feature_columns: Sequence[str] = FEATURES
) -> np.ndarray:
    """[raw..., derived...], what a model with derived features trains on, by the service's
    evaluator."""
    from training_tasks.config.derived import evaluate

    columns = {name: features[:, j] for j, name in enumerate(feature_columns)}
    return np.column_stack([features, *evaluate(derived, columns)]).astype(np.float32)


def to_onnx_with_derived(
    booster: lgb.Booster,
    derived: Sequence[Any],
    *,
    computed_as: Sequence[Any] | None = None,
    threshold: float | None = None,
    feature_columns: Sequence[str] = FEATURES,
    **onnx_options: Any,
) -> onnx.ModelProto:
    """A model over [raw..., derived...] whose graph takes the raw columns and computes the
    derived ones in front of the trees; metadata `derived_features` records `derived`.

    `computed_as` makes the graph compute other expressions than it records (a broken export);
    with `threshold` the model also has `failure_alarm` and `decision_threshold`.
    """
    options = {"feature_columns": feature_columns, **onnx_options}
    if threshold is None:
        model = to_onnx(booster, **options)
    else:
        model = to_onnx_with_alarm(booster, threshold=threshold, **options)
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["tree_input" if name == "input" else name for name in node.input]
    nodes, initializers, columns = _derived_nodes(computed_as or derived, feature_columns)
    nodes.append(helper.make_node("Concat", ["input", *columns], ["tree_input"], axis=1))
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *existing])
    graph.initializer.extend(initializers)
    del graph.input[:]
    graph.input.append(
        helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, len(feature_columns)])
    )
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, DECISION_OPSET)
    entry = model.metadata_props.add()
    entry.key, entry.value = "derived_features", json.dumps(list(derived))
    onnx.checker.check_model(model)
    return model


def _derived_nodes(
    derived: Sequence[Any], feature_columns: Sequence[str]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], list[str]]:
    """Nodes computing each derived column as [N, 1] from `input`, and their constants."""
    nodes: list[onnx.NodeProto] = []
    constants: list[onnx.TensorProto] = []

    def add(op: str, inputs: list[str], **attributes: Any) -> str:
        name = f"derived_{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [name], **attributes))
        return name

    def constant(array: np.ndarray) -> str:
        name = f"derived_const_{len(constants)}"
        constants.append(numpy_helper.from_array(array, name))
        return name

    def value(ast: dict[str, Any]) -> str:
        if "num" in ast:
            return constant(np.array(ast["num"], dtype=np.float32))
        if "col" in ast:
            index = constant(np.array([list(feature_columns).index(ast["col"])], dtype=np.int64))
            return add("Gather", ["input", index], axis=1)
        args = [value(arg) for arg in ast["args"]]
        name = ast.get("op") or ast["fn"]
        if name == "log1p":  # as the script exports it: Log(Add(a, 1))
            one = constant(np.array(1.0, dtype=np.float32))
            return add("Log", [add("Add", [args[0], one])])
        return add(_DERIVED_OPERATORS[name], args)

    columns = [value(feature["ast"]) for feature in derived]
    return nodes, constants, columns


def save_onnx(folder: Path, model: onnx.ModelProto, native: lgb.Booster | None = None) -> Path:
    """Write `model` as `model.onnx` and, with `native`, its booster as `model.txt` next to it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    if native is not None:
        native.save_model(str(folder / "model.txt"))
    return path


def column_model(
    *,
    column: int = 0,
    threshold: float | None = None,
    alarm_threshold: float | None = None,
    feature_columns: Sequence[str] = FEATURES,
    org_id: str = ORG_ID,
    version: str = VERSION,
) -> onnx.ModelProto:
    """A model whose `failure_probability` is its input column `column`, so a test holdout
    decides every score. With `threshold` it records `decision_threshold` and has
    `failure_alarm` = probability >= `alarm_threshold` (default: the threshold it records)."""
    nodes = [helper.make_node("Gather", ["input", "column"], ["failure_probability"], axis=1)]
    initializers = [numpy_helper.from_array(np.array(column, dtype=np.int64), "column")]
    outputs = [helper.make_tensor_value_info("failure_probability", TensorProto.FLOAT, [None])]
    metadata = {
        "feature_columns": json.dumps(list(feature_columns)),
        "organization_id": org_id,
        "version": version,
    }
    if threshold is not None:
        cut = threshold if alarm_threshold is None else alarm_threshold
        initializers.append(numpy_helper.from_array(np.array(cut, dtype=np.float32), "cut"))
        nodes.append(
            helper.make_node("GreaterOrEqual", ["failure_probability", "cut"], ["failure_alarm"])
        )
        outputs.append(helper.make_tensor_value_info("failure_alarm", TensorProto.BOOL, [None]))
        metadata["decision_threshold"] = repr(threshold)
    graph = helper.make_graph(
        nodes,
        "column_model",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, len(feature_columns)])],
        outputs,
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", DECISION_OPSET)])
    model.ir_version = 8  # old enough for any onnxruntime this service supports
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model


def judge(model: Path, holdout: Path, **overrides: Any) -> Any:
    """Validate `model` on `holdout` as the fixture organization's version, with its model.txt
    when there is one and without the deployed-model comparison; `overrides` replace any
    argument of `validate`."""
    from training_tasks.stages.validate.stage import validate

    native = model.with_name("model.txt")
    args: dict[str, Any] = {
        "org_id": ORG_ID,
        "version": VERSION,
        "model_path": model,
        "holdout_path": holdout,
        "feature_columns": FEATURES,
        "target_column": TARGET,
        "thresholds": {"notWorseThanDeployed": False},
        "native_model_path": native if native.exists() else None,
    }
    return validate(**{**args, **overrides})


def check(report: Any, name: str) -> dict[str, Any]:
    """The named check of a validation report."""
    return next(c for c in report.as_dict()["checks"] if c["name"] == name)


# -- window models ----------------------------------------------------------------------------
# A window model takes input `window` float32 [N, length, columns] (oldest bucket first) and
# computes its statistics in the graph, in front of the trees: the training script's own
# window_front, convert and finish build it, so the fixture is what the script exports.

WINDOW: dict[str, Any] = {
    "interval": "10min",
    "intervalSeconds": 600,
    "length": 36,
    "columns": ["vibration", "temperature"],
    "stats": ["mean", "std", "min", "max", "slope", "last", "delta"],
}


@functools.cache
def train_script() -> ModuleType:
    """The bundled training script imported as a module (it runs nothing on import)."""
    from training_tasks.config.settings import BUNDLED_SCRIPT

    spec = importlib.util.spec_from_file_location("bundled_train_model", BUNDLED_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def make_windows(
    count: int, *, window: dict[str, Any] = WINDOW, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Windows [count, length, columns] float32 of vibration around 1 and temperature around 60
    (further columns: noise), and labels (about 40% failures): a failing asset's vibration and
    temperature drift upwards, by amounts that overlap the healthy ones', so scores spread."""
    rng = np.random.default_rng(seed)
    length, width = window["length"], len(window["columns"])
    failing = rng.random(count) < 0.4
    steps = np.arange(length, dtype=np.float64)
    level = rng.normal(0.0, 1.0, (count, 1, width)) + np.array([1.0, 60.0, *[0.0] * (width - 2)])
    noise = rng.normal(0.0, 1.0, (count, length, width)) * np.array(
        [0.1, 1.0, *[1.0] * (width - 2)]
    )
    drift = np.zeros((count, 1, width))
    drift[:, 0, 0] = rng.uniform(0.0, 0.01, count) + failing * rng.uniform(0.0, 0.01, count)
    drift[:, 0, 1 % width] += failing * rng.uniform(0.0, 0.05, count)
    windows = level + noise + drift * steps[None, :, None]
    return windows.astype(np.float32), failing.astype(np.int8)


def window_statistics(windows: np.ndarray, window: dict[str, Any] = WINDOW) -> np.ndarray:
    """The statistics of each window [N, columns * stats] float32, by the script's reference."""
    return np.asarray(train_script().window_features(windows, window))


def train_window_booster(
    windows: np.ndarray,
    labels: np.ndarray,
    *,
    window: dict[str, Any] = WINDOW,
    rounds: int = 40,
    leaves: int = 15,
    seed: int = 0,
) -> lgb.Booster:
    """A LightGBM booster on the windows' statistics, named `<column>__<stat>`."""
    features = window_statistics(windows, window)
    names = train_script().window_feature_names(window)
    params = {"objective": "binary", "num_leaves": leaves, "verbosity": -1, "seed": seed}
    dataset = lgb.Dataset(features, labels, feature_name=names)
    return lgb.train({**params, "num_threads": 1}, dataset, num_boost_round=rounds)


def to_onnx_window(
    booster: lgb.Booster,
    *,
    window: dict[str, Any] = WINDOW,
    threshold: float = 0.5,
    org_id: str = ORG_ID,
    version: str = VERSION,
    metadata: dict[str, str | None] | None = None,
    input_shape: Sequence[int | str] | None = None,
) -> onnx.ModelProto:
    """A window model as the training script exports it: input `window` [N, length, columns]
    -> the window statistics -> the trees -> `failure_probability` [N] and `failure_alarm` at
    `threshold`, with the metadata `window` and `window_feature_columns`.

    `metadata` replaces entries (None removes one) and `input_shape` declares another input
    shape, to build a model whose metadata and input disagree.
    """
    script = train_script()
    config = {
        "featureColumns": list(window["columns"]),
        "derivedFeatures": [],
        "windows": script.window_spec(window),
        "organizationId": org_id,
        "version": version,
        "decisionPolicy": {"type": "fixed", "threshold": threshold},
    }
    model = script.convert(booster.model_to_string(), config)
    if input_shape is not None:
        declared = helper.make_tensor_value_info("window", TensorProto.FLOAT, list(input_shape))
        model.graph.input[0].CopyFrom(declared)
    model = onnx.load_model_from_string(script.finish(model, config, threshold, 0))
    entries = {p.key: p.value for p in model.metadata_props}
    for key, value in (metadata or {}).items():
        entries.pop(key, None)
        if value is not None:
            entries[key] = value
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, entries)
    onnx.checker.check_model(model)
    return model
