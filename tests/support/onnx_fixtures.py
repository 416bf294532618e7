"""Small LightGBM failure classifiers exported to ONNX by the model contract, and their holdouts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
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
