"""Training decides everything on the last part (by time) of the training rows, never on the
holdout: garbage holdout labels or a training file out of time order train the same model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.unit.test_train_script import (
    TARGET,
    Run,
    run_script,
    script_config,
    write_dataset,
)

EARLY_STOPPING: dict[str, Any] = {
    "learningRate": 0.3,
    "numIterations": 300,
    "earlyStoppingRounds": 5,
}
MAX_F1 = {"type": "maxF1"}


def config(folder: Path, out: str, **changes: Any) -> dict[str, Any]:
    built = script_config(folder, outputPath=str(folder / out), decisionPolicy=MAX_F1, **changes)
    built["hyperparameters"] |= EARLY_STOPPING
    return built


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run]:
    folder = tmp_path_factory.mktemp("holdout")
    write_dataset(folder, train_rows=5000, holdout_rows=2000)
    run = run_script(folder, config(folder, "reference"))
    assert run.returncode == 0, run.stderr
    return folder, run


def same_model(first: Run, second: Run) -> bool:
    return (first.out / "model.txt").read_bytes() == (second.out / "model.txt").read_bytes()


def decision(run: Run) -> tuple[Any, Any]:
    metrics = json.loads((run.out / "metrics.json").read_text())
    return metrics["decision_threshold"], metrics["best_iteration"]


def test_early_stopping_and_the_threshold_ignore_garbage_holdout_labels(
    reference: tuple[Path, Run],
) -> None:
    folder, first = reference
    holdout = pq.read_table(folder / "holdout.parquet")
    shuffled = np.random.default_rng(9).permutation(holdout.column(TARGET).to_numpy())
    index = holdout.schema.get_field_index(TARGET)
    pq.write_table(
        holdout.set_column(index, TARGET, pa.array(shuffled)), folder / "garbage.parquet"
    )

    second = run_script(
        folder, config(folder, "garbage", holdoutDataPath=str(folder / "garbage.parquet"))
    )

    assert second.returncode == 0, second.stderr
    assert decision(first)[1] < 300  # early stopping did stop
    assert same_model(first, second)
    assert decision(first) == decision(second)


def test_training_rows_out_of_time_order_are_put_in_order_before_the_inner_fold_is_cut(
    reference: tuple[Path, Run],
) -> None:
    folder, first = reference
    table = pq.read_table(folder / "train.parquet")
    shuffled = table.take(np.random.default_rng(4).permutation(table.num_rows))
    pq.write_table(shuffled, folder / "shuffled.parquet", row_group_size=700)

    second = run_script(
        folder, config(folder, "shuffled", trainDataPath=str(folder / "shuffled.parquet"))
    )

    assert second.returncode == 0, second.stderr
    assert same_model(first, second)
    assert decision(first) == decision(second)


def test_an_inner_fold_without_failures_is_refused_when_early_stopping_needs_it(
    tmp_path: Path,
) -> None:
    write_dataset(tmp_path, train_rows=1000, holdout_rows=300)
    table = pq.read_table(tmp_path / "train.parquet")
    target = table.column(TARGET).to_numpy().copy()
    target[-200:] = 0
    index = table.schema.get_field_index(TARGET)
    pq.write_table(table.set_column(index, TARGET, pa.array(target)), tmp_path / "train.parquet")

    run = run_script(tmp_path, config(tmp_path, "out"))

    assert run.returncode != 0
    message = run.events[-1]["message"]
    assert "inner validation fold" in message and "200 rows" in message
    assert "innerValidationSplit" in message
