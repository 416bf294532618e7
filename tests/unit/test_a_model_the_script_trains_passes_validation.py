"""A model the bundled training script exports, with derived features and a threshold its policy
chose, passes validation against what the run recorded: metadata, alarm, and native parity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_train_script import (
    FEATURES,
    TARGET,
    run_script,
    script_config,
    write_dataset,
)
from training_tasks.config.derived import compile_features
from training_tasks.config.training import from_wire
from training_tasks.stages.validate.recorded import recorded_by_run
from training_tasks.stages.validate.stage import ValidationReport, validate

DERIVED = {
    "load": f"{FEATURES[0]} * {FEATURES[1]}",
    "wear": f"log1p(abs({FEATURES[2]})) - {FEATURES[0]} / 2",
}
LENIENT = {"accuracy": 0.0, "precision": 0.0, "recall": 0.0}


def train_and_validate(folder: Path, policy: dict[str, Any]) -> tuple[ValidationReport, Any]:
    write_dataset(folder, train_rows=4000, holdout_rows=2000)
    config = script_config(
        folder, derivedFeatures=compile_features(DERIVED, FEATURES), decisionPolicy=policy
    )
    del config["notInTheContract"]
    run = run_script(folder, config)
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((run.out / "metrics.json").read_text())
    # As the run row stores it: derivedFeatures as {name: expression}.
    derived, thresholds = recorded_by_run(
        from_wire({**config, "derivedFeatures": DERIVED}), metrics
    )
    report = validate(
        org_id=config["organizationId"],
        version=config["version"],
        model_path=run.out / "model.onnx",
        holdout_path=folder / "holdout.parquet",
        feature_columns=FEATURES,
        target_column=TARGET,
        thresholds=LENIENT,
        native_model_path=run.out / "model.txt",
        derived_features=derived,
        recorded_thresholds=thresholds,
        script_metrics=metrics,
    )
    return report, metrics


@pytest.mark.parametrize(
    "policy", [{"type": "maxF1"}, {"type": "fixed", "threshold": 0.3}], ids=["maxF1", "fixed"]
)
def test_a_script_model_with_derived_features_and_a_chosen_threshold_passes_validation(
    tmp_path: Path, policy: dict[str, Any]
) -> None:
    report, metrics = train_and_validate(tmp_path, policy)

    assert report.passed, report.failures
    checks = {check.name: check for check in report.checks}
    assert "2 derived features" in checks["metadata"].detail
    assert checks["decision"].detail.startswith("failure_alarm is failure_probability >= ")
    assert report.parity["status"] == "passed"
    assert report.decision_threshold == metrics["decision_threshold"]
    # The script's own holdout precision is reported, not trusted; here the two agree.
    assert report.metrics["precision"] == pytest.approx(metrics["precision"], abs=1e-9)
