"""The validate stage judges a model on the holdout itself and lists every reason it rejects one."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from tests.support.onnx_fixtures import (
    FEATURES,
    ORG_ID,
    TARGET,
    VERSION,
    check,
    make_data,
    save_model,
    train_booster,
    write_holdout,
)
from training_tasks.config.org import THRESHOLD_DEFAULTS
from training_tasks.errors import ValidationRejected
from training_tasks.stages.validate.stage import ValidationReport, validate


@pytest.fixture(scope="module")
def good_booster() -> lgb.Booster:
    return train_booster(*make_data(3000, seed=1))


@pytest.fixture(scope="module")
def poor_booster() -> lgb.Booster:
    return train_booster(*make_data(3000, seed=3, informative=False))


@pytest.fixture(scope="module")
def holdout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    features, labels = make_data(2000, seed=2)
    return write_holdout(tmp_path_factory.mktemp("data") / "holdout.parquet", features, labels)


Validate = Callable[..., ValidationReport]


@pytest.fixture
def run(holdout: Path) -> Validate:
    """validate() with the test holdout and default thresholds, overridable per test."""

    def call(model_path: Path, **overrides: Any) -> ValidationReport:
        thresholds = {**THRESHOLD_DEFAULTS, **overrides.pop("thresholds", {})}
        native = model_path.with_name("model.txt")
        args: dict[str, Any] = {
            "org_id": ORG_ID,
            "version": VERSION,
            "model_path": model_path,
            "holdout_path": holdout,
            "feature_columns": FEATURES,
            "target_column": TARGET,
            "thresholds": thresholds,
            "native_model_path": native if native.exists() else None,
        }
        return validate(**{**args, **overrides})

    return call


def test_a_good_model_passes_and_validation_json_has_every_metric(
    run: Validate, good_booster: lgb.Booster, tmp_path: Path
) -> None:
    report = run(save_model(tmp_path / "m", good_booster))
    path = report.write(tmp_path / "artifacts" / "validation.json")

    doc = json.loads(path.read_text())
    assert report.passed and doc["passed"] is True and doc["failures"] == []
    for name in ("accuracy", "precision", "recall", "f1", "rocAuc", "prAuc"):
        assert 0.8 < doc["metrics"][name] <= 1.0, name
    assert doc["rows"] == 2000
    assert doc["latency"]["singleRowP99Ms"] > 0 and doc["latency"]["batchRows"] == 1000
    assert doc["memory"]["sessionMb"] >= 0
    assert doc["parity"]["status"] == "passed" and doc["parity"]["maxAbsDiff"] < 1e-4
    assert (
        doc["modelSha256"]
        and doc["modelSizeBytes"] == (tmp_path / "m" / "model.onnx").stat().st_size
    )
    assert all(set(c) == {"name", "passed", "value", "limit", "detail"} for c in doc["checks"])
    # The report beside it; no temporary file left.
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "report.html",
        "report_data.json",
        "validation.json",
    ]
    report.raise_if_rejected()


def test_a_model_that_predicts_poorly_is_rejected_and_the_message_lists_each_failed_threshold(
    run: Validate, poor_booster: lgb.Booster, tmp_path: Path
) -> None:
    report = run(save_model(tmp_path / "m", poor_booster))

    assert not report.passed
    with pytest.raises(ValidationRejected) as caught:
        report.raise_if_rejected()
    message = str(caught.value)
    assert ORG_ID in message and VERSION in message
    assert message.endswith("adjust the data range, features or thresholds and train again.")
    for name in ("accuracy", "precision", "recall"):
        value = report.metrics[name]
        assert value is not None and value < 0.70
        assert f"{name} {value:.2f} is below the threshold 0.70" in message
    assert caught.value.failures == report.failures


def test_a_corrupt_model_file_is_rejected_with_a_load_failure_not_an_exception(
    run: Validate, tmp_path: Path
) -> None:
    model_path = tmp_path / "model.onnx"
    model_path.write_bytes(b"\x08\x07 definitely not a protobuf model")

    report = run(model_path)

    assert not report.passed
    load = check(report, "load")
    assert load["passed"] is False and "is not an ONNX model" in load["detail"]
    assert report.failures[0] == load["detail"]
    assert any("could not be checked because the load check failed" in f for f in report.failures)
    assert report.model_sha256 is not None and report.rows == 2000


def test_a_missing_model_file_is_rejected_with_a_load_failure(
    run: Validate, tmp_path: Path
) -> None:
    report = run(tmp_path / "never-written.onnx")

    assert not report.passed and "cannot be read" in check(report, "load")["detail"]


def test_a_model_larger_than_max_model_size_fails_the_size_check(
    run: Validate, good_booster: lgb.Booster, tmp_path: Path
) -> None:
    report = run(save_model(tmp_path / "m", good_booster), thresholds={"maxModelSizeMb": 0.001})

    size = check(report, "modelSize")
    assert not report.passed and size["passed"] is False and size["limit"] == 0.001
    assert report.failures == [size["detail"]]
    assert "above the limit 0.001 MB" in size["detail"]


def test_a_model_slower_than_max_latency_fails_the_latency_check(
    run: Validate, good_booster: lgb.Booster, tmp_path: Path
) -> None:
    report = run(save_model(tmp_path / "m", good_booster), thresholds={"maxLatencyMs": 1e-6})

    assert report.failures == [check(report, "latency")["detail"]]
    assert "single-row inference p99" in report.failures[0]


def test_an_onnx_model_that_differs_from_its_model_txt_fails_parity(
    run: Validate, good_booster: lgb.Booster, tmp_path: Path
) -> None:
    other = train_booster(*make_data(3000, seed=9), rounds=10, seed=9)
    report = run(save_model(tmp_path / "m", good_booster, native=other))

    parity = check(report, "parity")
    assert not report.passed and parity["passed"] is False and parity["value"] > 1e-4
    assert report.parity["status"] == "failed"
    assert "does not match the booster" in " ".join(report.failures)


def test_a_model_without_model_txt_skips_parity_and_still_passes(
    run: Validate, good_booster: lgb.Booster, tmp_path: Path
) -> None:
    model_path = save_model(tmp_path / "m", good_booster)
    (tmp_path / "m" / "model.txt").unlink()

    report = run(model_path)

    assert report.passed and report.parity["status"] == "skipped (no native model)"


def test_a_much_better_deployed_model_makes_the_new_one_fail_not_worse_than_deployed(
    run: Validate, good_booster: lgb.Booster, poor_booster: lgb.Booster, tmp_path: Path
) -> None:
    deployed = save_model(tmp_path / "deployed", good_booster)
    lenient = {"accuracy": 0.0, "precision": 0.0, "recall": 0.0}

    report = run(
        save_model(tmp_path / "new", poor_booster),
        deployed_model_path=deployed,
        thresholds=lenient,
    )

    comparison = report.comparison
    assert comparison["status"] == "failed"
    assert comparison["deployed"] - comparison["new"] > 0.02
    assert report.failures == [check(report, "notWorseThanDeployed")["detail"]]
    assert "below the deployed model's" in report.failures[0]


def test_the_comparison_can_be_turned_off_in_the_thresholds(
    run: Validate, good_booster: lgb.Booster, poor_booster: lgb.Booster, tmp_path: Path
) -> None:
    deployed = save_model(tmp_path / "deployed", good_booster)
    thresholds = {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "notWorseThanDeployed": False}

    report = run(
        save_model(tmp_path / "new", poor_booster),
        deployed_model_path=deployed,
        thresholds=thresholds,
    )

    assert report.passed and report.comparison["status"].startswith("skipped (disabled")


def test_a_deployed_model_with_different_features_skips_the_comparison(
    run: Validate, good_booster: lgb.Booster, tmp_path: Path
) -> None:
    renamed = ["temp_c", "pressure_bar", "vibration_mm_s", "rpm"]
    deployed = save_model(tmp_path / "deployed", good_booster, feature_columns=renamed)

    report = run(save_model(tmp_path / "new", good_booster), deployed_model_path=deployed)

    assert report.passed
    assert report.comparison["status"] == "skipped (features differ)"
    assert check(report, "notWorseThanDeployed")["passed"] is True


def test_a_single_class_holdout_fails_with_a_clear_reason(
    run: Validate, good_booster: lgb.Booster, tmp_path: Path
) -> None:
    features, labels = make_data(500, seed=4)
    holdout = write_holdout(tmp_path / "holdout.parquet", features, np.zeros_like(labels))

    report = run(save_model(tmp_path / "m", good_booster), holdout_path=holdout)

    assert not report.passed
    assert report.failures[0].startswith("the holdout has only class 0 in its 500 rows")
    assert report.metrics["rocAuc"] is None and report.latency["singleRowP99Ms"] > 0
    with pytest.raises(ValidationRejected, match="widen the data range"):
        report.raise_if_rejected()


def test_a_holdout_without_a_feature_column_fails_and_names_it(
    run: Validate, good_booster: lgb.Booster, tmp_path: Path
) -> None:
    report = run(
        save_model(tmp_path / "m", good_booster, feature_columns=[*FEATURES[:3], "torque"]),
        feature_columns=[*FEATURES[:3], "torque"],
    )

    assert (
        not report.passed and "lacks the columns ['torque']" in check(report, "holdout")["detail"]
    )


def test_script_metrics_are_reported_but_do_not_change_the_verdict(
    run: Validate, poor_booster: lgb.Booster, tmp_path: Path
) -> None:
    perfect = {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "auc": float("nan")}

    report = run(save_model(tmp_path / "m", poor_booster), script_metrics=perfect)

    assert not report.passed
    assert report.metrics["recall"] is not None and report.metrics["recall"] < 0.70
    doc = report.as_dict()
    assert doc["scriptMetrics"] == {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "auc": None}
    json.dumps(doc, allow_nan=False)


def test_a_model_with_a_two_column_probability_output_passes_and_the_report_says_so(
    run: Validate, good_booster: lgb.Booster, tmp_path: Path
) -> None:
    report = run(save_model(tmp_path / "m", good_booster, probability_pair=True))

    assert report.passed
    assert "column 1 of output 'probabilities'" in check(report, "contract")["detail"]


def test_a_model_of_another_organization_fails_the_metadata_check(
    run: Validate, good_booster: lgb.Booster, tmp_path: Path
) -> None:
    report = run(save_model(tmp_path / "m", good_booster, org_id="other-org"))

    assert report.failures == ["the model's organization_id is 'other-org', not 'acme-plant'"]


def test_a_model_with_the_wrong_input_width_fails_the_contract_and_says_what_was_not_checked(
    run: Validate, tmp_path: Path
) -> None:
    narrow = train_booster(*make_data(1000, seed=5, width=3), rounds=5)
    report = run(save_model(tmp_path / "m", narrow, feature_columns=FEATURES[:3]))

    assert report.failures == [
        "input 'input' takes 3 features, featureColumns has 4",
        f"the model was trained on {FEATURES[:3]} but featureColumns is {FEATURES}",
        f"the native model {tmp_path / 'm' / 'model.txt'} takes 3 features, not 4",
        "latency, scores, decision, accuracy, precision, recall could not be checked "
        "because the contract check failed",
    ]
