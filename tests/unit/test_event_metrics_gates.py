"""The validate stage records event metrics for a model of single readings when the run has
failure events, and thresholds.minEventRecall / maxFalseAlarmsPerAssetDay reject a version with
the numbers behind the verdict."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support.onnx_fixtures import FEATURES, TARGET, column_model, judge, save_onnx
from training_tasks.config.training import from_wire
from training_tasks.stages.extract.result import ExtractResult
from training_tasks.stages.validate.event_checks import EventScope
from training_tasks.stages.validate.inputs import run_inputs

SPLIT_AT = datetime(2026, 3, 1, tzinfo=UTC)
END = SPLIT_AT + timedelta(days=2)
HORIZON_H = 6
# A and B fail at 20 h and 30 h after the split; C never does. A alarms at 16-17 h (caught, 4 h
# ahead), B never (missed); C alarms alone at 5 h and at 40-41 h: two false alarm episodes.
ALARMS = {"A": [16, 17], "B": [], "C": [5, 40, 41]}
FAILURES = {"A": 20, "B": 30}
LENIENT = {
    "accuracy": 0.0,
    "precision": 0.0,
    "recall": 0.0,
    "minHoldoutPositives": 1,
    "notWorseThanDeployed": False,
}


def at(hours: float) -> datetime:
    return SPLIT_AT + timedelta(hours=hours)


def write_holdout(path: Path, *, with_assets: bool = True) -> Path:
    """Hourly readings of A, B and C, in source order (by time, assets interleaved); the
    model's probability is the first feature: 0.9 where it alarms, 0.1 elsewhere."""
    rows = [(asset, hour) for hour in range(48) for asset in "ABC"]
    score = [0.9 if hour in ALARMS[asset] else 0.1 for asset, hour in rows]
    label = [
        int(asset in FAILURES and hour < FAILURES[asset] <= hour + HORIZON_H)
        for asset, hour in rows
    ]
    columns: dict[str, Any] = {
        "timestamp": pa.array([at(h) for _, h in rows], pa.timestamp("us", tz="UTC")),
    }
    if with_assets:
        columns["asset_id"] = pa.array([asset for asset, _ in rows])
    for j, name in enumerate(FEATURES):
        columns[name] = pa.array(score if j == 0 else [0.0] * len(rows), pa.float32())
    columns[TARGET] = pa.array(label, pa.int8())
    pq.write_table(pa.table(columns), path)
    return path


def write_events(path: Path) -> Path:
    """The failures, and one of an asset the holdout does not have, and one before the split."""
    events = [*FAILURES.items(), ("Z", 25), ("A", -30)]
    stamps = pa.array([at(h) for _, h in events], pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"asset_id": [a for a, _ in events], "timestamp": stamps}), path)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    save_onnx(tmp_path, column_model(threshold=0.5))
    write_holdout(tmp_path / "holdout.parquet")
    write_events(tmp_path / "events.parquet")
    return tmp_path


def scope(folder: Path) -> EventScope:
    return EventScope(folder / "events.parquet", SPLIT_AT, END, HORIZON_H * 3600)


def validate(folder: Path, events: EventScope | None, **thresholds: Any) -> Any:
    return judge(
        folder / "model.onnx",
        folder / "holdout.parquet",
        thresholds={**LENIENT, **thresholds},
        events=events,
        purge_gap_s=HORIZON_H * 3600,
    )


def test_the_event_metrics_of_a_model_of_single_readings_are_recorded_beside_the_others(
    folder: Path,
) -> None:
    report = validate(folder, scope(folder))

    assert report.passed, report.failures
    assert {k: report.metrics[k] for k in ("eventsCaught", "eventsTotal")} == {
        "eventsCaught": 1,
        "eventsTotal": 2,
    }
    assert report.metrics["eventRecall"] == 0.5
    assert report.metrics["medianLeadTimeH"] == pytest.approx(4.0)
    assert report.metrics["falseAlarmsPerAssetDay"] == pytest.approx(2 / (3 * 2.0))
    doc = report.as_dict()
    assert doc["events"]["falseAlarms"] == 2 and doc["events"]["assets"] == 3
    assert doc["purgeGapSeconds"] == HORIZON_H * 3600


def test_too_few_events_caught_and_too_many_false_alarms_reject_the_version_with_the_numbers(
    folder: Path,
) -> None:
    report = validate(folder, scope(folder), minEventRecall=0.7, maxFalseAlarmsPerAssetDay=0.2)

    assert not report.passed
    assert (
        "event recall 0.500 (1 of 2 holdout failures caught) is below "
        "thresholds.minEventRecall 0.7" in report.failures
    )
    assert (
        "0.333 false alarms per asset-day (2 false alarms over 3 assets x 2.0 days) is "
        "above thresholds.maxFalseAlarmsPerAssetDay 0.2" in report.failures
    )
    assert len(report.failures) == 2


def test_gates_that_are_met_pass_with_the_evidence(folder: Path) -> None:
    report = validate(folder, scope(folder), minEventRecall=0.5, maxFalseAlarmsPerAssetDay=0.34)

    assert report.passed, report.failures
    checks = {check.name: check for check in report.checks}
    assert checks["eventRecall"].detail.startswith("event recall 0.500 (1 of 2 holdout failures")
    assert checks["falseAlarms"].value == pytest.approx(1 / 3)


def test_without_failure_events_the_metrics_are_empty_and_the_report_unchanged(
    folder: Path,
) -> None:
    report = validate(folder, None)

    assert report.passed
    assert report.metrics["eventRecall"] is None and report.metrics["eventsTotal"] is None
    doc = report.as_dict()
    assert "events" not in doc and "window" not in doc
    assert not any(check.name in ("eventRecall", "falseAlarms") for check in report.checks)


def test_an_event_gate_without_failure_events_rejects_and_says_what_to_do(folder: Path) -> None:
    report = validate(folder, None, minEventRecall=0.5)

    assert not report.passed
    (failure,) = report.failures
    assert "thresholds.minEventRecall is set but the run has no failure events" in failure
    assert "schemaConfig.labels" in failure


def test_a_holdout_without_asset_ids_cannot_be_judged_by_events(tmp_path: Path) -> None:
    save_onnx(tmp_path, column_model(threshold=0.5))
    write_holdout(tmp_path / "holdout.parquet", with_assets=False)
    write_events(tmp_path / "events.parquet")

    report = validate(tmp_path, scope(tmp_path), minEventRecall=0.5)

    assert not report.passed
    (failure,) = report.failures
    assert failure.startswith("the event metrics cannot be computed")
    assert "asset_id" in failure


def test_the_gates_wait_for_a_model_that_loads(folder: Path) -> None:
    (folder / "model.onnx").write_bytes(b"not onnx")

    report = validate(folder, scope(folder), minEventRecall=0.5, maxFalseAlarmsPerAssetDay=1.0)

    blocked = [f for f in report.failures if "could not be checked because the load" in f]
    assert len(blocked) == 1 and "eventRecall, falseAlarms" in blocked[0]


def test_the_run_hands_validation_its_windows_events_and_purge_gap(folder: Path) -> None:
    wire = {
        "organizationId": "acme-plant",
        "dataRange": {"startDate": "2026-01-01T00:00:00Z", "endDate": END.isoformat()},
        "hyperparameters": {},
        "validationSplit": 0.2,
        "targetColumn": TARGET,
        "featureColumns": ["vibration", "temperature"],
        "windows": {"interval": "10min", "length": 6, "columns": ["vibration", "temperature"]},
        "purgeGapSeconds": 6 * 3600 + 3600,
        "labelHorizonSeconds": 6 * 3600,
    }
    data = ExtractResult(
        folder / "train.parquet",
        folder / "holdout.parquet",
        *(10, 10, 1, 1),
        split_at=SPLIT_AT,
        data_hash="0" * 64,
        elapsed_s=1.0,
        purge_gap_s=6 * 3600 + 3600,
        events_path=folder / "events.parquet",
        window=True,
    )

    found = run_inputs(from_wire(wire), data)

    assert found["windows"] is not None and found["windows"].span_s == 3600
    assert found["events"] == scope(folder)
    assert found["purge_gap_s"] == 7 * 3600
    plain = run_inputs(from_wire({**wire, "windows": None, "labelHorizonSeconds": None}), data)
    assert plain["windows"] is None and plain["events"] is None


def test_validation_json_is_valid_json_with_the_event_block(folder: Path, tmp_path: Path) -> None:
    report = validate(folder, scope(folder))

    doc = json.loads(report.write(tmp_path / "validation.json").read_text())

    assert doc["events"]["splitAt"] == "2026-03-01T00:00:00Z"
    assert doc["events"]["horizonHours"] == HORIZON_H
    assert np.isclose(doc["metrics"]["falseAlarmsPerAssetDay"], 1 / 3)
