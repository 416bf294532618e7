"""The same config on the same data trains the same model, with bagging, feature sampling and early
stopping, and that model is the one a bare `lightgbm.train` with the same parameters gives."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest

from tests.unit.test_train_script import (
    FEATURES,
    TARGET,
    Run,
    holdout_matrix,
    labels,
    onnx_outputs,
    run_script,
    script_config,
    write_dataset,
)

SAMPLED: dict[str, Any] = {
    "baggingFraction": 0.7,
    "baggingFreq": 1,
    "featureFraction": 0.75,
    "learningRate": 0.3,
    "numIterations": 300,
    "earlyStoppingRounds": 5,
}
OTHER_VERSION = "v2026-06-02T08-00-00-000Z_0f1e2d3c"


def sampled_config(folder: Path, out: str, **hyperparameters: Any) -> dict[str, Any]:
    config = script_config(folder, outputPath=str(folder / out))
    config["hyperparameters"] |= SAMPLED | hyperparameters
    return config


@pytest.fixture(scope="module")
def twice(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run, Run]:
    """Two runs of one config on one dataset; the second under another version id."""
    folder = tmp_path_factory.mktemp("reproducible")
    write_dataset(folder, train_rows=6000, holdout_rows=2000)
    first = run_script(folder, sampled_config(folder, "first"))
    again = sampled_config(folder, "second")
    again["version"] = OTHER_VERSION
    second = run_script(folder, again)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    return folder, first, second


def metrics(run: Run) -> dict[str, Any]:
    return json.loads((run.out / "metrics.json").read_text())


def test_two_runs_write_the_same_native_model_and_stop_early_at_the_same_tree(
    twice: tuple[Path, Run, Run],
) -> None:
    _, first, second = twice

    assert (first.out / "model.txt").read_text() == (second.out / "model.txt").read_text()
    assert metrics(first)["best_iteration"] == metrics(second)["best_iteration"] < 300


def test_two_runs_give_bit_identical_onnx_probabilities_and_alarms(
    twice: tuple[Path, Run, Run],
) -> None:
    folder, first, second = twice
    x = holdout_matrix(folder)

    first_probability, first_alarm = onnx_outputs(first.out, x)
    second_probability, second_alarm = onnx_outputs(second.out, x)

    assert np.array_equal(first_probability, second_probability)
    assert np.array_equal(first_alarm, second_alarm)


def test_the_onnx_models_differ_only_in_the_version_metadata(
    twice: tuple[Path, Run, Run],
) -> None:
    _, first, second = twice
    models = [onnx.load(str(run.out / "model.onnx")) for run in (first, second)]
    metadata = [{p.key: p.value for p in model.metadata_props} for model in models]

    assert models[0].graph.SerializeToString() == models[1].graph.SerializeToString()
    assert metadata[1].pop("version") == OTHER_VERSION
    assert metadata[0].pop("version") != OTHER_VERSION
    assert metadata[0] == metadata[1]
    assert metadata[0]["seed"] == "42"
    for model in models:  # the rest of the file is byte for byte the same, opsets included
        kept = [p for p in model.metadata_props if p.key != "version"]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
    assert models[0].SerializeToString() == models[1].SerializeToString()


def test_the_native_model_records_the_seed_and_deterministic_row_wise_training(
    twice: tuple[Path, Run, Run],
) -> None:
    _, first, _ = twice
    text = (first.out / "model.txt").read_text()

    assert "[seed: 42]" in text
    assert "[deterministic: 1]" in text
    assert "[force_row_wise: 1]" in text


def test_another_seed_samples_other_rows_and_trains_another_model(
    twice: tuple[Path, Run, Run],
) -> None:
    folder, first, _ = twice

    other = run_script(folder, sampled_config(folder, "seed7", seed=7))

    assert other.returncode == 0, other.stderr
    assert metrics(other)["seed"] == 7
    assert "[seed: 7]" in (other.out / "model.txt").read_text()
    first_trees = re.findall(
        r"^Tree=.*?^end of trees", (first.out / "model.txt").read_text(), re.M | re.S
    )
    other_trees = re.findall(
        r"^Tree=.*?^end of trees", (other.out / "model.txt").read_text(), re.M | re.S
    )
    assert first_trees != other_trees


def test_the_model_is_a_bare_lightgbm_train_fit_before_the_inner_fold_and_stopped_on_it(
    twice: tuple[Path, Run, Run],
) -> None:
    folder, first, _ = twice
    table = pq.read_table(folder / "train.parquet", columns=[*FEATURES, TARGET])
    x = np.column_stack([table.column(c).to_numpy() for c in FEATURES]).astype(np.float32)
    y = labels(folder, "train.parquet")
    cut = len(y) - int(len(y) * 0.2)  # the rows are in time order; the last fifth is the fold
    params = {
        "objective": "binary",
        "metric": "auc",
        "num_leaves": 15,
        "learning_rate": 0.3,
        "feature_fraction": 0.75,
        "bagging_fraction": 0.7,
        "bagging_freq": 1,
        "min_data_in_leaf": 20,
        "max_depth": -1,
        "seed": 42,
        "deterministic": True,
        "force_row_wise": True,
        "early_stopping_round": 5,
        "verbosity": -1,
    }
    fit_set = lgb.Dataset(x[:cut], label=y[:cut])
    inner_set = lgb.Dataset(x[cut:], label=y[cut:], reference=fit_set)
    bare = lgb.train(params, fit_set, num_boost_round=300, valid_sets=[inner_set])

    holdout = holdout_matrix(folder)
    probability, _ = onnx_outputs(first.out, holdout)

    assert bare.best_iteration == metrics(first)["best_iteration"]
    assert np.abs(probability - bare.predict(holdout)).max() < 1e-6
