"""The validate stage reads the window holdout and the failure events that extract writes from a
real PostgreSQL: every example gets its window, the model's in-graph statistics are held to the
reference on all of them, and the event metrics count the failures whose horizon lies in the
holdout, with the purge gap recorded."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.support.onnx_fixtures import (
    VERSION,
    make_windows,
    to_onnx_window,
    train_window_booster,
)
from tests.unit.test_window_extract import window_setup, write_source
from training_tasks.stages.extract.stage import extract
from training_tasks.stages.validate.inputs import run_inputs
from training_tasks.stages.validate.stage import validate

pytestmark = pytest.mark.integration

ORG = "acme"
LENIENT = {
    "accuracy": 0.0,
    "precision": 0.0,
    "recall": 0.0,
    "minHoldoutPositives": 1,
    "notWorseThanDeployed": False,
}
WIRE_KEYS = ("interval", "intervalSeconds", "length", "columns", "stats")


def test_a_window_model_is_judged_on_the_holdout_and_events_extract_writes(
    postgres_url: str, tmp_path: Path
) -> None:
    write_source(postgres_url, zoned=True)
    schema, config = window_setup()
    data = extract(postgres_url, schema, config, tmp_path / "data", batch_rows=64)
    assert config.windows is not None and data.events_path is not None
    window = {key: config.windows.to_wire()[key] for key in WIRE_KEYS}
    booster = train_window_booster(*make_windows(600, window=window), window=window, rounds=10)
    model = tmp_path / "model.onnx"
    model.write_bytes(to_onnx_window(booster, window=window, org_id=ORG).SerializeToString())
    booster.save_model(str(tmp_path / "model.txt"))

    report = validate(
        org_id=ORG,
        version=VERSION,
        model_path=model,
        holdout_path=data.holdout_path,
        holdout_sha256=data.holdout_sha256,
        feature_columns=config.feature_columns,
        target_column=config.target_column,
        thresholds=LENIENT,
        native_model_path=tmp_path / "model.txt",
        **run_inputs(config, data),
    )

    assert report.passed, report.failures
    checks = {check.name: check for check in report.checks}
    examples = int(pq.read_table(data.holdout_path).column("example").to_numpy().sum())
    assert report.rows == data.rows_holdout == examples
    assert f"on {examples} holdout windows" in checks["windowFeatures"].detail
    assert report.parity["status"] == "passed"
    # Of the failures, A's at 21 h and a's at 20 h have their 2 h horizon inside the holdout
    # (from 18 h to the end of the day); A's and B's after the end do not count.
    assert report.metrics["eventsTotal"] == 2
    assert report.as_dict()["purgeGapSeconds"] == data.purge_gap_s == 2 * 3600 + 30 * 60
