"""The bundled training script keeps its contract: files in, ONNX + native model + metrics out."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import lightgbm as lgb
import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training_tasks.config.settings import BUNDLED_SCRIPT

FEATURES = ["temperature", "pressure", "vibration", "rpm"]
TARGET = "failure"
PROBABILITY = "failure_probability"
METRIC_KEYS = {"accuracy", "precision", "recall", "f1", "auc"}
COST_KEYS = {"num_iterations", "train_rows", "holdout_rows", "fit_seconds", "export_seconds"}
DECISION_KEYS = {
    "decision_threshold",
    "decision_policy",
    "best_iteration",
    "inner_rows",
    "inner_positives",
    "seed",
}


def sensor_table(rows: int, seed: int) -> pa.Table:
    """A learnable failure problem: float32 features with NaN, int8 labels, time and asset."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES))).astype(np.float32)
    x[rng.random(x.shape) < 0.03] = np.nan
    clean = np.nan_to_num(x)
    logit = 2.5 * clean[:, 0] - 2.0 * clean[:, 1] + np.sin(3 * clean[:, 2]) - 0.3
    y = (logit + rng.normal(scale=0.6, size=rows) > 0).astype(np.int8)
    columns: dict[str, Any] = {
        "timestamp": pa.array(np.arange(rows).astype("datetime64[s]")),
        "asset": pa.array([f"pump-{i % 3}" for i in range(rows)]),
    }
    columns.update({name: x[:, j] for j, name in enumerate(FEATURES)})
    columns[TARGET] = y
    return pa.table(columns)


def write_dataset(folder: Path, *, train_rows: int = 4000, holdout_rows: int = 1000) -> None:
    """train.parquet and holdout.parquet as the extract stage writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(sensor_table(train_rows, seed=1), folder / "train.parquet")
    pq.write_table(sensor_table(holdout_rows, seed=2), folder / "holdout.parquet")


def script_config(folder: Path, **changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "organizationId": "acme-plant",
        "version": "v2026-06-01T12-00-00-000Z_a1b2c3d4",
        "featureColumns": FEATURES,
        "targetColumn": TARGET,
        "hyperparameters": {
            "numLeaves": 15,
            "learningRate": 0.1,
            "featureFraction": 0.9,
            "baggingFraction": 0.8,
            "baggingFreq": 5,
            "minDataInLeaf": 20,
            "maxDepth": -1,
            "numIterations": 40,
            "objective": "binary",
            "metric": "auc",
            "verbosity": 1,
        },
        "validationSplit": 0.2,
        "dataRange": {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-06-01T00:00:00Z"},
        "outputPath": str(folder / "out"),
        "trainDataPath": str(folder / "train.parquet"),
        "holdoutDataPath": str(folder / "holdout.parquet"),
        "notInTheContract": "ignored",
    }
    config.update(changes)
    return config


@dataclass
class Run:
    returncode: int
    events: list[dict[str, Any]]
    stderr: str
    out: Path


def run_script(folder: Path, config: dict[str, Any]) -> Run:
    Path(config["outputPath"]).mkdir(parents=True, exist_ok=True)
    config_path = folder / "training_config.json"
    config_path.write_text(json.dumps(config))
    done = subprocess.run(
        [sys.executable, str(BUNDLED_SCRIPT), str(config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    events = [json.loads(line) for line in done.stdout.splitlines()]
    return Run(done.returncode, events, done.stderr, Path(config["outputPath"]))


def holdout_matrix(folder: Path, name: str = "holdout.parquet") -> np.ndarray:
    table = pq.read_table(folder / name, columns=FEATURES)
    return np.column_stack([table.column(c).to_numpy() for c in FEATURES]).astype(np.float32)


def labels(folder: Path, name: str = "holdout.parquet") -> np.ndarray:
    return pq.read_table(folder / name, columns=[TARGET]).column(TARGET).to_numpy()


def onnx_outputs(out: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(failure_probability, failure_alarm) of the model in `out` on the raw rows `x`."""
    session = ort.InferenceSession(str(out / "model.onnx"))
    probability, alarm = session.run([PROBABILITY, "failure_alarm"], {"input": x})
    return probability, alarm


def onnx_metadata(out: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}


@functools.cache
def script_module() -> ModuleType:
    """The bundled script imported as a module (it runs nothing on import)."""
    spec = importlib.util.spec_from_file_location("bundled_train_model", BUNDLED_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run]:
    folder = tmp_path_factory.mktemp("script")
    write_dataset(folder, holdout_rows=2000)
    return folder, run_script(folder, script_config(folder))


def test_the_onnx_model_takes_one_input_and_gives_the_probability_and_the_alarm(
    trained: tuple[Path, Run],
) -> None:
    _, run = trained
    session = ort.InferenceSession(str(run.out / "model.onnx"))

    (model_input,) = session.get_inputs()
    probability, alarm = session.get_outputs()
    assert run.returncode == 0, run.stderr
    assert (model_input.name, model_input.type) == ("input", "tensor(float)")
    assert model_input.shape[1] == len(FEATURES)
    assert (probability.name, probability.type) == ("failure_probability", "tensor(float)")
    assert (alarm.name, alarm.type) == ("failure_alarm", "tensor(bool)")
    assert len(probability.shape) == len(alarm.shape) == 1


def test_onnx_probabilities_match_the_native_lightgbm_model(trained: tuple[Path, Run]) -> None:
    folder, run = trained
    x = holdout_matrix(folder)
    session = ort.InferenceSession(str(run.out / "model.onnx"))

    (onnx_probability,) = session.run([PROBABILITY], {"input": x})
    native = lgb.Booster(model_file=str(run.out / "model.txt")).predict(x)

    assert onnx_probability.shape == (len(x),)
    assert np.isnan(x).any()
    np.testing.assert_allclose(onnx_probability, native, atol=1e-5)


def test_inputs_sitting_exactly_on_split_thresholds_score_the_same_in_onnx_and_lightgbm(
    trained: tuple[Path, Run],
) -> None:
    folder, run = trained
    text = (run.out / "model.txt").read_text()
    features = [
        int(v) for line in re.findall(r"^split_feature=(.*)$", text, re.M) for v in line.split()
    ]
    thresholds = [
        float(v) for line in re.findall(r"^threshold=(.*)$", text, re.M) for v in line.split()
    ]
    base = holdout_matrix(folder)[: len(features)]
    probe = base.copy()
    probe[np.arange(len(features)), features] = np.array(thresholds, dtype=np.float32)

    (onnx_probability,) = ort.InferenceSession(str(run.out / "model.onnx")).run(
        [PROBABILITY], {"input": probe}
    )
    native = lgb.Booster(model_file=str(run.out / "model.txt")).predict(probe)

    np.testing.assert_allclose(onnx_probability, native, atol=1e-5)


def test_the_onnx_metadata_names_the_features_organization_and_version(
    trained: tuple[Path, Run],
) -> None:
    _, run = trained
    metadata = {p.key: p.value for p in onnx.load(str(run.out / "model.onnx")).metadata_props}

    assert json.loads(metadata["feature_columns"]) == FEATURES
    assert metadata["organization_id"] == "acme-plant"
    assert metadata["version"] == "v2026-06-01T12-00-00-000Z_a1b2c3d4"


def test_metrics_json_reports_holdout_quality_and_costs(trained: tuple[Path, Run]) -> None:
    _, run = trained
    metrics = json.loads((run.out / "metrics.json").read_text())

    assert set(metrics) >= METRIC_KEYS | COST_KEYS | DECISION_KEYS
    assert metrics["auc"] > 0.85
    assert metrics["accuracy"] > 0.75
    assert (metrics["train_rows"], metrics["holdout_rows"]) == (4000, 2000)
    assert metrics["num_iterations"] == metrics["best_iteration"] == 40


def test_without_a_policy_the_decision_is_at_one_half_and_the_last_fifth_is_the_inner_fold(
    trained: tuple[Path, Run],
) -> None:
    folder, run = trained
    metrics = json.loads((run.out / "metrics.json").read_text())
    inner_labels = labels(folder, "train.parquet")[-800:]

    assert metrics["decision_threshold"] == 0.5
    assert metrics["decision_policy"] == {"type": "fixed", "threshold": 0.5}
    assert metrics["seed"] == 42
    assert (metrics["inner_rows"], metrics["inner_positives"]) == (800, int(inner_labels.sum()))
    assert onnx_metadata(run.out)["decision_threshold"] == "0.5"


def test_stdout_carries_only_json_progress_lines_in_order(trained: tuple[Path, Run]) -> None:
    _, run = trained
    kinds = [event["event"] for event in run.events]

    assert kinds[0] == "start"
    assert kinds[1] == "loaded" and run.events[1]["rows"] == 4000
    assert kinds[-2:] == ["exported", "done"]
    iterations = [e for e in run.events if e["event"] == "iteration"]
    assert iterations[-1] == {"event": "iteration", "iteration": 40, "total": 40}
    assert run.events[-1]["metrics"]["auc"] > 0.85
    assert "[LightGBM]" in run.stderr  # verbosity 1 logs go to stderr, not into the JSON


def test_the_script_leaves_no_temporary_files_behind(trained: tuple[Path, Run]) -> None:
    _, run = trained

    assert sorted(p.name for p in run.out.iterdir()) == ["metrics.json", "model.onnx", "model.txt"]


def test_a_missing_column_fails_with_a_json_error_naming_it(tmp_path: Path) -> None:
    write_dataset(tmp_path, train_rows=300, holdout_rows=100)

    run = run_script(tmp_path, script_config(tmp_path, featureColumns=[*FEATURES, "humidity"]))

    assert run.returncode != 0
    assert run.events[-1]["event"] == "error"
    assert "'humidity'" in run.events[-1]["message"]
    assert "humidity" in run.stderr
    assert not (run.out / "model.onnx").exists()


def test_a_missing_data_file_fails_with_a_json_error_naming_it(tmp_path: Path) -> None:
    config = script_config(tmp_path, trainDataPath=str(tmp_path / "nowhere.parquet"))

    run = run_script(tmp_path, config)

    assert run.returncode != 0
    assert "nowhere.parquet does not exist" in run.events[-1]["message"]


def test_training_data_with_a_single_class_is_refused(tmp_path: Path) -> None:
    table = sensor_table(300, seed=3)
    table = table.set_column(
        table.schema.get_field_index(TARGET), TARGET, pa.array(np.zeros(300, dtype=np.int8))
    )
    pq.write_table(table, tmp_path / "train.parquet")
    pq.write_table(sensor_table(100, seed=4), tmp_path / "holdout.parquet")

    run = run_script(tmp_path, script_config(tmp_path))

    assert run.returncode != 0
    assert "only class 0" in run.events[-1]["message"]


def test_the_script_needs_exactly_one_argument() -> None:
    done = subprocess.run(
        [sys.executable, str(BUNDLED_SCRIPT)], capture_output=True, text=True, check=False
    )

    assert done.returncode == 2
    assert json.loads(done.stdout)["event"] == "error"


def test_cross_entropy_models_and_arrow_nulls_export_with_the_same_contract(
    tmp_path: Path,
) -> None:
    table = sensor_table(2000, seed=5)
    index = table.schema.get_field_index("rpm")
    rpm = table.column("rpm").to_numpy()
    with_nulls = pa.array(rpm, mask=np.arange(len(rpm)) % 7 == 0, type=pa.float32())
    pq.write_table(table.set_column(index, "rpm", with_nulls), tmp_path / "train.parquet")
    pq.write_table(sensor_table(500, seed=6), tmp_path / "holdout.parquet")
    config = script_config(tmp_path)
    config["hyperparameters"] |= {"objective": "cross_entropy", "numIterations": 15}

    run = run_script(tmp_path, config)

    assert run.returncode == 0, run.stderr
    x = holdout_matrix(tmp_path)
    (onnx_probability,) = ort.InferenceSession(str(run.out / "model.onnx")).run(
        [PROBABILITY], {"input": x}
    )
    native = lgb.Booster(model_file=str(run.out / "model.txt")).predict(x)
    np.testing.assert_allclose(onnx_probability, native, atol=1e-5)
