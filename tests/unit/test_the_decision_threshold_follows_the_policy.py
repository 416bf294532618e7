"""The decision threshold is chosen on the inner fold by the decision policy, travels in the model
(metadata and the `failure_alarm` output) and in metrics.json, and a target no threshold reaches
fails the training with a message saying what to do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from tests.unit.test_train_script import (
    holdout_matrix,
    labels,
    onnx_metadata,
    onnx_outputs,
    run_script,
    script_config,
    script_module,
    write_dataset,
)
from training_tasks.protocol.decision import threshold_of
from training_tasks.protocol.onnx_checks import check_model_bytes

# Six rows, highest probability first; three failures.
PROBABILITY = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3])
FAILURE = np.array([1, 1, 0, 1, 0, 0])


def choose(policy: dict[str, Any], probability: np.ndarray, failure: np.ndarray) -> float:
    return script_module().choose_threshold(policy, probability, failure)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # F1 at 0.9, 0.8, 0.7, 0.6, 0.4, 0.3: 0.5, 0.8, 0.67, 0.86, 0.75, 0.67
        ({"type": "maxF1"}, 0.6),
        # precision 1, 1, .67, .75, .6, .5 with recall .33, .67, .67, 1, 1, 1
        ({"type": "precisionAtLeast", "value": 0.75}, 0.6),
        ({"type": "precisionAtLeast", "value": 1.0}, 0.8),
        ({"type": "recallAtLeast", "value": 0.6}, 0.8),
        ({"type": "recallAtLeast", "value": 1.0}, 0.6),
        ({"type": "fixed", "threshold": 0.5}, 0.5),
    ],
)
def test_each_policy_picks_the_expected_threshold(policy: dict[str, Any], expected: float) -> None:
    assert choose(policy, PROBABILITY, FAILURE) == float(np.float32(expected))


@pytest.mark.parametrize(
    ("policy", "probability", "failure", "expected"),
    [
        # F1 0.67 at 0.9 and at 0.6
        ({"type": "maxF1"}, [0.9, 0.8, 0.7, 0.6], [1, 0, 0, 1], 0.9),
        # recall 1 at 0.9 (precision 1) and at 0.8 (precision 0.5)
        ({"type": "precisionAtLeast", "value": 0.5}, [0.9, 0.8, 0.7], [1, 0, 0], 0.9),
        # precision 0.5 at 0.8 and at 0.6, both with recall >= 0.5
        ({"type": "recallAtLeast", "value": 0.5}, [0.9, 0.8, 0.7, 0.6], [0, 1, 0, 1], 0.8),
    ],
)
def test_ties_go_to_the_higher_threshold(
    policy: dict[str, Any], probability: list[float], failure: list[int], expected: float
) -> None:
    chosen = choose(policy, np.array(probability), np.array(failure))

    assert chosen == float(np.float32(expected))


def test_rows_with_equal_probabilities_are_one_candidate() -> None:
    # At 0.9 both tied rows are alarms (precision 0.5); only 0.5 reaches recall 1.
    probability, failure = np.array([0.9, 0.9, 0.5]), np.array([1, 0, 1])

    assert choose({"type": "precisionAtLeast", "value": 0.6}, probability, failure) == float(
        np.float32(0.5)
    )
    assert choose({"type": "maxF1"}, probability, failure) == float(np.float32(0.5))


def test_a_precision_no_threshold_reaches_names_the_best_one_and_what_to_do() -> None:
    module = script_module()

    with pytest.raises(module.ScriptError) as refused:
        choose(
            {"type": "precisionAtLeast", "value": 0.9},
            np.array([0.9, 0.8, 0.7]),
            np.array([0, 1, 0]),
        )

    message = str(refused.value)
    assert "precisionAtLeast 0.9" in message
    assert "best reached is 0.500" in message
    assert "lower the value" in message


def test_a_fixed_threshold_becomes_the_smallest_float32_at_or_above_it() -> None:
    for wanted in (0.3, 0.7, 0.123456789, 0.5, 0.0, 1.0):
        chosen = choose({"type": "fixed", "threshold": wanted}, np.empty(0), np.empty(0))

        assert chosen == float(np.float32(chosen))  # the same in float32 and float64
        assert chosen >= wanted
        assert float(np.nextafter(np.float32(chosen), np.float32(-1))) < wanted


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("decision")
    write_dataset(folder, train_rows=4000, holdout_rows=2000)
    return folder


def test_max_f1_is_chosen_on_the_inner_fold_and_the_alarm_agrees_with_it_on_every_row(
    data: Path,
) -> None:
    policy = {"type": "maxF1"}
    run = run_script(data, script_config(data, outputPath=str(data / "f1"), decisionPolicy=policy))
    assert run.returncode == 0, run.stderr
    metrics = json.loads((run.out / "metrics.json").read_text())
    metadata = onnx_metadata(run.out)
    threshold = metrics["decision_threshold"]
    x, y = holdout_matrix(data, "train.parquet"), labels(data, "train.parquet")
    native = lgb.Booster(model_file=str(run.out / "model.txt"))

    on_inner_fold = choose(policy, np.asarray(native.predict(x[-800:])), y[-800:])
    probability, alarm = onnx_outputs(run.out, holdout_matrix(data))

    assert threshold == on_inner_fold != 0.5
    assert threshold_of(metadata) == threshold
    assert json.loads(metadata["decision_policy"]) == metrics["decision_policy"] == policy
    assert np.array_equal(alarm, probability >= threshold)
    assert 0 < alarm.sum() < len(alarm)
    check_model_bytes((run.out / "model.onnx").read_bytes(), feature_count=4)


def test_metrics_json_scores_the_holdout_at_the_chosen_threshold(data: Path) -> None:
    policy = {"type": "recallAtLeast", "value": 0.95}
    run = run_script(data, script_config(data, outputPath=str(data / "rec"), decisionPolicy=policy))
    assert run.returncode == 0, run.stderr
    metrics = json.loads((run.out / "metrics.json").read_text())
    _, alarm = onnx_outputs(run.out, holdout_matrix(data))
    failure = labels(data) == 1

    assert metrics["decision_threshold"] < 0.5
    assert metrics["recall"] == pytest.approx(np.count_nonzero(alarm & failure) / failure.sum())
    assert metrics["precision"] == pytest.approx(np.count_nonzero(alarm & failure) / alarm.sum())


def test_a_fixed_threshold_that_is_no_float32_decides_alike_in_float32_and_float64(
    data: Path,
) -> None:
    policy = {"type": "fixed", "threshold": 0.3}
    run = run_script(data, script_config(data, outputPath=str(data / "fix"), decisionPolicy=policy))
    assert run.returncode == 0, run.stderr
    threshold = threshold_of(onnx_metadata(run.out))
    probability, alarm = onnx_outputs(run.out, holdout_matrix(data))

    assert threshold == float(np.float32(threshold)) == float(np.float32(0.3))
    assert np.array_equal(alarm, probability.astype(np.float64) >= 0.3)
    assert np.array_equal(alarm, probability >= np.float32(threshold))


def test_a_precision_target_no_threshold_reaches_fails_the_run_without_a_model(
    data: Path,
) -> None:
    config = script_config(
        data,
        outputPath=str(data / "unreachable"),
        decisionPolicy={"type": "precisionAtLeast", "value": 0.99},
    )
    config["hyperparameters"] |= {"numIterations": 1, "numLeaves": 2}  # two probabilities only

    run = run_script(data, config)

    assert run.returncode != 0
    message = run.events[-1]["message"]
    assert run.events[-1]["event"] == "error"
    assert "precisionAtLeast 0.99" in message and "best reached is 0." in message
    assert "inner validation fold (800 rows" in message
    assert not (run.out / "model.onnx").exists()
