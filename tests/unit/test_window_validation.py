"""A window model the training script exports passes the validate stage on a window holdout: its
in-graph statistics match the reference, it scores as its native booster does, its metadata
holds the run's window, and the event metrics are recorded. A model whose graph computes a
statistic differently is rejected with the statistic and the difference named."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import numpy_helper

from tests.support.onnx_fixtures import column_model, save_onnx
from tests.unit.test_window_training import (
    DERIVED,
    GAP_S,
    HORIZON_BUCKETS,
    INTERVAL_S,
    LENGTH,
    SPLIT_S,
    START_S,
    TARGET,
    WINDOWS,
    train,
    window_config,
    write_window_dataset,
)
from training_tasks.config.training import from_wire
from training_tasks.config.window_features import WindowSpec
from training_tasks.stages.validate.event_checks import EventScope
from training_tasks.stages.validate.events import event_metrics
from training_tasks.stages.validate.recorded import recorded_by_run
from training_tasks.stages.validate.stage import ValidationReport, validate

LENIENT = {"accuracy": 0.0, "precision": 0.0, "recall": 0.0}
END_S = START_S + 3000 * INTERVAL_S + 1  # as write_window_dataset ends the holdout
HORIZON_S = HORIZON_BUCKETS * INTERVAL_S


def write_events(folder: Path) -> Path:
    """events.parquet of the failures behind the labels: a run of labelled buckets ends one
    bucket before its failure (a bucket is labelled when a failure is in (t, t + horizon])."""
    assets, times = [], []
    for name in ("train.parquet", "holdout.parquet"):
        table = pq.read_table(folder / name)
        label = table.column(TARGET).to_numpy()
        asset = table.column("asset_id").to_numpy(zero_copy_only=False)
        seconds = table.column("timestamp").cast(pa.int64()).to_numpy() // 10**6
        run_ends = np.r_[(label[1:] == 0) | (asset[1:] != asset[:-1]), True]
        for row in np.flatnonzero((label == 1) & run_ends):
            assets.append(asset[row])
            times.append(int(seconds[row]) + INTERVAL_S)
    path = folder / "events.parquet"
    stamps = pa.array(np.array(times) * 10**6, pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"asset_id": pa.array(assets), "timestamp": stamps}), path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Path]:
    folder = tmp_path_factory.mktemp("window-validation")
    write_window_dataset(folder)
    config = window_config(folder)
    metrics = train(folder, config)
    return folder, {**config, "metrics": metrics}, write_events(folder)


def judge(
    folder: Path,
    config: Mapping[str, Any],
    events: Path | None,
    *,
    model: Path | None = None,
    thresholds: Mapping[str, Any] = LENIENT,
    windows: Mapping[str, Any] = WINDOWS,
    deployed: Path | None = None,
) -> ValidationReport:
    """The validate stage on the run's holdout, as the pipeline calls it for a window run."""
    wire = {**config, "derivedFeatures": DERIVED, "windows": dict(windows)}
    derived, recorded = recorded_by_run(from_wire(wire), config["metrics"])
    scope = None
    if events is not None:
        split_at, end = (datetime.fromtimestamp(s, UTC) for s in (SPLIT_S, END_S))
        scope = EventScope(events, split_at, end, HORIZON_S)
    spec = WindowSpec.from_wire(windows)
    return validate(
        org_id=config["organizationId"],
        version=config["version"],
        model_path=model or folder / "out" / "model.onnx",
        holdout_path=folder / "holdout.parquet",
        feature_columns=list(spec.columns),
        target_column=TARGET,
        thresholds=thresholds,
        native_model_path=folder / "out" / "model.txt",
        deployed_model_path=deployed,
        derived_features=derived,
        recorded_thresholds=recorded,
        script_metrics=config["metrics"],
        windows=spec,
        events=scope,
        purge_gap_s=GAP_S,
    )


def checks_of(report: ValidationReport) -> dict[str, Any]:
    return {check.name: check for check in report.checks}


def test_a_window_model_from_the_training_script_passes_every_check(
    trained: tuple[Path, dict[str, Any], Path],
) -> None:
    folder, config, events = trained

    report = judge(folder, config, events)

    assert report.passed, report.failures
    checks = checks_of(report)
    assert "input float [N, 12, 2]" in checks["contract"].detail
    assert (
        "window" in checks["metadata"].detail and "2 derived features" in checks["metadata"].detail
    )
    holdout_examples = config["metrics"]["holdout_rows"]
    assert f"on {holdout_examples} holdout windows" in checks["windowFeatures"].detail
    assert checks["windowFeatures"].value <= 1e-4
    assert checks["latency"].detail.startswith("single-window inference p99")
    assert report.parity["status"] == "passed" and report.parity["rows"] == holdout_examples
    assert report.rows == holdout_examples
    # The service's own scores agree with what the script reported on the same examples.
    assert report.metrics["recall"] == pytest.approx(config["metrics"]["recall"], abs=1e-9)


def test_the_report_records_the_window_the_event_metrics_and_the_purge_gap(
    trained: tuple[Path, dict[str, Any], Path], tmp_path: Path
) -> None:
    folder, config, events = trained

    report = judge(folder, config, events)
    doc = json.loads(report.write(tmp_path / "validation.json").read_text())

    assert doc["purgeGapSeconds"] == GAP_S
    assert doc["window"]["length"] == LENGTH and doc["window"]["featureCheck"]["limit"] == 1e-4
    metrics = doc["metrics"]
    assert metrics["eventsTotal"] > 0 and 0 < metrics["eventsCaught"] <= metrics["eventsTotal"]
    assert metrics["eventRecall"] == pytest.approx(metrics["eventsCaught"] / metrics["eventsTotal"])
    assert 0 < metrics["medianLeadTimeH"] <= HORIZON_S / 3600
    assert metrics["falseAlarmsPerAssetDay"] >= 0
    assert doc["events"]["assets"] == 5 and doc["events"]["horizonHours"] == 6.0


def test_the_event_metrics_are_those_of_the_holdout_examples_at_the_models_threshold(
    trained: tuple[Path, dict[str, Any], Path],
) -> None:
    folder, config, events = trained
    report = judge(folder, config, events)

    holdout = pq.read_table(folder / "holdout.parquet")
    rows = np.flatnonzero(holdout.column("example").to_numpy() == 1)
    windows = np.column_stack([holdout.column(c).to_numpy() for c in WINDOWS["columns"]])
    batch = np.stack([windows[row - LENGTH + 1 : row + 1] for row in rows])
    session = ort.InferenceSession(str(folder / "out" / "model.onnx"))
    _, alarms = session.run(None, {"window": batch})
    failures = pq.read_table(events)
    expected = event_metrics(
        holdout.column("asset_id").take(pa.array(rows)),
        holdout.column("timestamp").take(pa.array(rows)),
        holdout.column(TARGET).to_numpy()[rows],
        alarms,
        failures.column("asset_id"),
        failures.column("timestamp"),
        split_at=datetime.fromtimestamp(SPLIT_S, UTC),
        end=datetime.fromtimestamp(END_S, UTC),
        horizon_s=HORIZON_S,
    )

    assert {k: report.metrics[k] for k in expected.recorded()} == expected.recorded()


def test_a_graph_whose_slope_differs_from_the_reference_is_rejected_naming_the_statistic(
    trained: tuple[Path, dict[str, Any], Path], tmp_path: Path
) -> None:
    folder, config, events = trained
    model = onnx.load(str(folder / "out" / "model.onnx"))
    weights = next(t for t in model.graph.initializer if t.name == "window/weights")
    matrix = numpy_helper.to_array(weights).copy()
    slope = WINDOWS["stats"].index("slope")
    # The slope's weight of the newest centred bucket, 10% off: a plausible slip in an export.
    centred_newest = int(np.flatnonzero(matrix[:, slope])[-1])
    matrix[centred_newest, slope] *= 1.1
    weights.CopyFrom(numpy_helper.from_array(matrix, weights.name))
    tampered = tmp_path / "model.onnx"
    onnx.save(model, str(tampered))

    report = judge(folder, config, events, model=tampered)

    assert not report.passed
    check = checks_of(report)["windowFeatures"]
    assert not check.passed and check.value > 1e-4
    reason = next(f for f in report.failures if "window features differ" in f)
    assert "__slope" in reason and "window_statistics" in reason
    assert "more than 0.0001 x max(1, |value|)" in reason


def test_a_model_without_in_graph_window_features_is_rejected(
    trained: tuple[Path, dict[str, Any], Path], tmp_path: Path
) -> None:
    folder, config, events = trained
    model = onnx.load(str(folder / "out" / "model.onnx"))
    for node in model.graph.node:
        node.output[:] = ["statistics" if n == "window_features" else n for n in node.output]
        node.input[:] = ["statistics" if n == "window_features" else n for n in node.input]
    renamed = tmp_path / "model.onnx"
    onnx.save(model, str(renamed))

    report = judge(folder, config, events, model=renamed)

    assert not report.passed
    assert any("has no tensor 'window_features'" in failure for failure in report.failures)


def test_a_run_with_other_windows_than_the_models_is_rejected_by_its_metadata(
    trained: tuple[Path, dict[str, Any], Path],
) -> None:
    folder, config, events = trained
    # The derived features use no delta, so the run's config is still consistent.
    fewer = {**WINDOWS, "stats": [s for s in WINDOWS["stats"] if s != "delta"]}

    report = judge(folder, config, events, windows=fewer)

    assert not report.passed
    metadata = checks_of(report)["metadata"]
    assert "the model's window is" in metadata.detail and "run's windows is" in metadata.detail
    assert "window_feature_columns" in metadata.detail


def test_a_deployed_model_of_the_same_windows_is_compared_on_the_same_examples(
    trained: tuple[Path, dict[str, Any], Path],
) -> None:
    folder, config, events = trained

    report = judge(folder, config, events, deployed=folder / "out" / "model.onnx")

    assert report.passed, report.failures
    assert report.comparison["status"] == "passed"
    assert report.comparison["deployed"] == pytest.approx(report.metrics["rocAuc"])


def test_a_deployed_model_of_single_readings_is_not_compared_with_a_window_model(
    trained: tuple[Path, dict[str, Any], Path], tmp_path: Path
) -> None:
    folder, config, events = trained
    deployed = save_onnx(tmp_path, column_model(feature_columns=WINDOWS["columns"]))

    report = judge(folder, config, events, deployed=deployed)

    assert report.passed, report.failures
    assert report.comparison["status"] == "skipped (features differ)"
    assert report.comparison["reason"] == (
        "the deployed model takes single readings, this run's holdout holds windows of "
        "12 x 10min of ['vibration', 'temperature']"
    )
