"""Validation reads the model's decision threshold from its metadata, holds it to the threshold the
run recorded, scores the holdout at it, and checks the model's own `failure_alarm` row by row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from sklearn import metrics as skm

from tests.support.onnx_fixtures import (
    FEATURES,
    check,
    column_model,
    judge,
    make_data,
    save_model,
    save_onnx,
    to_onnx_with_alarm,
    train_booster,
    write_holdout,
)
from training_tasks.protocol.onnx_checks import UnsafeModel, check_model_bytes

LENIENT = {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "notWorseThanDeployed": False}


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    return train_booster(*make_data(3000, seed=1))


@pytest.fixture(scope="module")
def holdout_rows() -> tuple[np.ndarray, np.ndarray]:
    return make_data(2000, seed=2)


@pytest.fixture(scope="module")
def holdout(tmp_path_factory: pytest.TempPathFactory, holdout_rows: Any) -> Path:
    return write_holdout(tmp_path_factory.mktemp("data") / "holdout.parquet", *holdout_rows)


@pytest.fixture(scope="module")
def probability_holdout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A holdout whose first column is the probability a `column_model` gives each row."""
    rng = np.random.default_rng(7)
    features = rng.normal(size=(1000, len(FEATURES))).astype(np.float32)
    features[:, 0] = rng.random(1000).astype(np.float32)
    labels = (features[:, 0] + rng.normal(scale=0.2, size=1000) > 0.6).astype(np.int8)
    path = tmp_path_factory.mktemp("data") / "probabilities.parquet"
    return write_holdout(path, features, labels), features[:, 0]


def test_an_old_model_with_one_output_and_no_threshold_still_passes_at_0_5_as_before(
    booster: lgb.Booster, holdout: Path, holdout_rows: Any, tmp_path: Path
) -> None:
    report = judge(
        save_model(tmp_path / "m", booster), holdout, recorded_thresholds={"decisionPolicy": 0.5}
    )

    assert report.passed, report.failures
    features, labels = holdout_rows
    predicted = np.asarray(booster.predict(features)) >= 0.5
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        labels, predicted, average="binary"
    )
    assert report.decision_threshold == 0.5 and report.metrics["decisionThreshold"] == 0.5
    assert report.metrics["precision"] == pytest.approx(precision, abs=1e-12)
    assert report.metrics["recall"] == pytest.approx(recall, abs=1e-12)
    assert report.metrics["f1"] == pytest.approx(f1, abs=1e-12)
    assert report.metrics["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
    assert check(report, "decision")["detail"].startswith("skipped (no failure_alarm output)")


def test_a_model_is_scored_at_the_threshold_its_metadata_records(
    booster: lgb.Booster, holdout: Path, holdout_rows: Any, tmp_path: Path
) -> None:
    model = save_onnx(tmp_path / "m", to_onnx_with_alarm(booster, threshold=0.3), booster)

    report = judge(model, holdout, recorded_thresholds={"metrics.json": 0.3}, thresholds=LENIENT)

    assert report.passed, report.failures
    features, labels = holdout_rows
    predicted = np.asarray(booster.predict(features), dtype=np.float32) >= np.float32(0.3)
    tp = int(np.sum(predicted & (labels == 1)))
    assert report.decision_threshold == 0.3
    assert report.counts is not None
    assert report.counts["predictedPositives"] == int(predicted.sum())
    assert report.counts["truePositives"] == tp
    assert report.metrics["precision"] == pytest.approx(tp / predicted.sum())
    assert check(report, "decision")["passed"] is True
    assert "on all 2000 rows" in check(report, "decision")["detail"]


def test_an_alarm_that_disagrees_with_the_threshold_is_rejected_naming_the_first_row(
    probability_holdout: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    holdout, probability = probability_holdout
    # The graph alarms from 0.6 on, but the model records (and the run chose) 0.5.
    model = save_onnx(tmp_path / "m", column_model(threshold=0.5, alarm_threshold=0.6))

    report = judge(model, holdout, recorded_thresholds={"metrics.json": 0.5}, thresholds=LENIENT)

    first = int(np.flatnonzero((probability >= 0.5) & (probability < 0.6))[0])
    decision = check(report, "decision")
    assert not report.passed and decision["passed"] is False
    assert report.failures == [decision["detail"]]
    assert f"failure_alarm is False on holdout row {first} (counted from 0)" in decision["detail"]
    shown = f"{float(probability[first]):.9g}"
    assert (
        f"where failure_probability {shown} >= decision_threshold 0.5 is True"
        in (decision["detail"])
    )


def test_a_metadata_threshold_that_differs_from_the_runs_is_rejected_naming_both(
    booster: lgb.Booster, holdout: Path, tmp_path: Path
) -> None:
    model = save_onnx(tmp_path / "m", to_onnx_with_alarm(booster, threshold=0.4), booster)

    report = judge(model, holdout, recorded_thresholds={"metrics.json": 0.35})

    assert not report.passed
    assert report.failures == [
        "the model's decision_threshold is 0.4 but the run's metrics.json records 0.35"
    ]
    assert check(report, "metadata")["passed"] is False


def test_a_model_without_a_threshold_is_rejected_when_the_run_recorded_another(
    booster: lgb.Booster, holdout: Path, tmp_path: Path
) -> None:
    report = judge(
        save_model(tmp_path / "m", booster), holdout, recorded_thresholds={"metrics.json": 0.3}
    )

    assert report.failures == [
        "the model's decision_threshold is not recorded (read as 0.5) but the run's "
        "metrics.json records 0.3"
    ]


def test_a_run_whose_policy_chose_a_threshold_that_metrics_json_lacks_is_rejected(
    booster: lgb.Booster, holdout: Path, tmp_path: Path
) -> None:
    model = save_onnx(tmp_path / "m", to_onnx_with_alarm(booster, threshold=0.4), booster)

    report = judge(model, holdout, recorded_thresholds={"metrics.json": None})

    assert not report.passed
    assert "the run's metrics.json records no decision_threshold" in report.failures[0]


def test_a_threshold_the_model_records_unreadably_is_rejected_and_its_alarm_left_unjudged(
    booster: lgb.Booster, holdout: Path, tmp_path: Path
) -> None:
    proto = to_onnx_with_alarm(booster, threshold=0.5, threshold_metadata="half")
    model = save_onnx(tmp_path / "m", proto, booster)

    report = judge(model, holdout)

    assert report.failures == [
        "the model's decision_threshold 'half' is not a number; export the model again",
        "decision could not be checked because the metadata check failed",
    ]


def test_an_alarm_output_that_is_not_bool_is_an_unsafe_model(
    booster: lgb.Booster, holdout: Path, tmp_path: Path
) -> None:
    proto = to_onnx_with_alarm(booster, threshold=0.5)
    graph = proto.graph
    alarm = next(node for node in graph.node if node.output[0] == "failure_alarm")
    alarm.output[0] = "alarm_bool"
    graph.node.append(
        helper.make_node("Cast", ["alarm_bool"], ["failure_alarm"], to=TensorProto.FLOAT)
    )
    del graph.output[1:]
    graph.output.append(helper.make_tensor_value_info("failure_alarm", TensorProto.FLOAT, [None]))
    onnx.checker.check_model(proto)

    with pytest.raises(UnsafeModel, match="gives output 'failure_alarm' as tensor\\(float\\)"):
        check_model_bytes(proto.SerializeToString(), label="the model")
    report = judge(save_onnx(tmp_path / "m", proto, booster), holdout)
    assert not report.passed
    assert "the model contract needs bool [N]" in check(report, "load")["detail"]
