"""Each metric in the validation report comes with its 95% Wilson interval and the counts behind
it; a gate inside the interval is called out, and too few holdout failures reject the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn import metrics as skm

from tests.support.onnx_fixtures import (
    FEATURES,
    ORG_ID,
    TARGET,
    VERSION,
    column_model,
    save_onnx,
    write_holdout,
)
from training_tasks.stages.validate.metrics import ranking_metrics, wilson
from training_tasks.stages.validate.stage import ValidationReport, validate


def holdout_with(
    path: Path, *, rows: int, tp: int, fn: int, fp: int, seed: int = 3
) -> tuple[Path, np.ndarray, np.ndarray]:
    """A holdout for `column_model`: exactly `tp`, `fn` and `fp` rows at threshold 0.5."""
    rng = np.random.default_rng(seed)
    tn = rows - tp - fn - fp
    probability = np.r_[
        rng.uniform(0.5, 1.0, tp),
        rng.uniform(0.0, 0.5, fn),
        rng.uniform(0.5, 1.0, fp),
        rng.uniform(0.0, 0.5, tn),
    ].astype(np.float32)
    labels = np.r_[np.ones(tp + fn), np.zeros(fp + tn)].astype(np.int8)
    order = rng.permutation(rows)
    features = rng.normal(size=(rows, len(FEATURES))).astype(np.float32)
    features[:, 0] = probability[order]
    return write_holdout(path, features, labels[order]), probability[order], labels[order]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_onnx(tmp_path_factory.mktemp("model"), column_model())


@pytest.fixture(scope="module")
def thirty_nine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """39 failures of which the model alarms on 23, and 10 false alarms: precision 23/33."""
    path = tmp_path_factory.mktemp("data") / "holdout.parquet"
    return holdout_with(path, rows=1000, tp=23, fn=16, fp=10)[0]


def judge(model: Path, holdout: Path, **thresholds: Any) -> ValidationReport:
    return validate(
        org_id=ORG_ID,
        version=VERSION,
        model_path=model,
        holdout_path=holdout,
        feature_columns=FEATURES,
        target_column=TARGET,
        thresholds={"notWorseThanDeployed": False, **thresholds},
    )


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [  # Newcombe (1998), Statistics in Medicine 17:857, Table I, the score method
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        (23, 33, 0.5266, 0.8262),  # the 39-positives case: precision 0.697
    ],
)
def test_wilson_intervals_match_published_values(
    successes: int, trials: int, low: float, high: float
) -> None:
    bounds = wilson(successes, trials)

    assert bounds is not None
    assert bounds[0] == pytest.approx(low, abs=5e-5) and bounds[1] == pytest.approx(high, abs=5e-5)


def test_a_rate_of_nothing_has_no_interval() -> None:
    assert wilson(0, 0) is None


def test_roc_auc_and_average_precision_equal_scikit_learns_with_ties() -> None:
    rng = np.random.default_rng(5)
    labels = (rng.random(5000) < 0.1).astype(np.int8)
    scores = np.round(rng.random(5000) * 0.6 + 0.4 * labels, 2).astype(np.float32)

    roc_auc, average_precision = ranking_metrics(labels, scores)

    assert roc_auc == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-12
    )


def test_a_gate_inside_the_interval_is_called_out_and_the_point_value_still_decides(
    model: Path, thirty_nine: Path
) -> None:
    report = judge(model, thirty_nine)

    note = (
        "precision 0.697, 95% CI 0.53\u20130.83 from 39 positives: the interval straddles the "
        "0.70 gate (23 of 33 predicted positives)"
    )
    assert not report.passed
    assert f"precision 0.697 is below the threshold 0.700; {note}" in report.failures
    assert note in report.warnings
    assert any(
        w.startswith("recall 0.590, 95% CI 0.43\u20130.73 from 39 positives")
        for w in (report.warnings)
    )
    assert not any(w.startswith("accuracy") for w in report.warnings)


def test_a_passing_gate_inside_the_interval_passes_with_a_warning(
    model: Path, thirty_nine: Path
) -> None:
    report = judge(model, thirty_nine, precision=0.65, recall=0.55)

    assert report.passed, report.failures
    assert report.failures == []
    assert report.warnings[0].startswith("precision 0.697, 95% CI 0.53\u20130.83 from 39 positives")
    assert report.warnings[0].endswith("straddles the 0.65 gate (23 of 33 predicted positives)")
    assert report.warnings[1].startswith("recall 0.590, 95% CI 0.43\u20130.73 from 39 positives")


def test_validation_json_keeps_every_field_and_adds_counts_intervals_and_the_threshold(
    model: Path, thirty_nine: Path, tmp_path: Path
) -> None:
    doc = json.loads(judge(model, thirty_nine).write(tmp_path / "validation.json").read_text())

    old = {
        "organizationId",
        "version",
        "passed",
        "failures",
        "checks",
        "metrics",
        "scriptMetrics",
        "latency",
        "memory",
        "parity",
        "comparison",
        "modelSha256",
        "modelSizeBytes",
        "rows",
        "durationMs",
    }
    assert old | {"decisionThreshold", "counts", "intervals", "warnings", "report"} == set(doc)
    assert doc["decisionThreshold"] == 0.5 and doc["metrics"]["decisionThreshold"] == 0.5
    assert doc["counts"] == {
        "rows": 1000,
        "positives": 39,
        "predictedPositives": 33,
        "truePositives": 23,
        "falsePositives": 10,
        "falseNegatives": 16,
        "trueNegatives": 951,
    }
    precision = doc["intervals"]["precision"]
    assert precision["value"] == pytest.approx(23 / 33)
    assert (precision["successes"], precision["trials"]) == (23, 33)
    assert precision["trialsOf"] == "predictedPositives"
    assert precision["confidence"] == 0.95 and precision["method"] == "wilson"
    assert (precision["low"], precision["high"]) == pytest.approx((0.5266, 0.8262), abs=5e-5)
    assert (doc["intervals"]["recall"]["successes"], doc["intervals"]["recall"]["trials"]) == (
        23,
        39,
    )
    assert doc["intervals"]["accuracy"]["successes"] == 974
    f1 = doc["intervals"]["f1"]
    assert f1["value"] == pytest.approx(doc["metrics"]["f1"]) == pytest.approx(46 / 72)
    assert f1["low"] < f1["value"] < f1["high"]
    for name in ("rocAuc", "prAuc"):
        assert 0.0 < doc["metrics"][name] <= 1.0


def test_a_holdout_with_fewer_failures_than_min_holdout_positives_is_rejected_naming_both(
    model: Path, tmp_path: Path
) -> None:
    holdout = holdout_with(tmp_path / "holdout.parquet", rows=800, tp=10, fn=2, fp=1)[0]

    report = judge(model, holdout)

    assert not report.passed
    assert report.failures[0].startswith(
        "the holdout has 12 positive rows, fewer than thresholds.minHoldoutPositives 30"
    )
    assert report.metrics["recall"] == pytest.approx(10 / 12)  # still measured and reported


def test_min_holdout_positives_comes_from_the_thresholds(model: Path, thirty_nine: Path) -> None:
    strict = judge(model, thirty_nine, minHoldoutPositives=40, precision=0.5, recall=0.5)
    lenient = judge(model, thirty_nine, minHoldoutPositives=0, precision=0.5, recall=0.5)

    assert strict.failures == [
        "the holdout has 39 positive rows, fewer than thresholds.minHoldoutPositives 40: "
        "precision and recall on so few failures say little about the model; widen the data "
        "range or validationSplit so the holdout holds more failures, or lower "
        "minHoldoutPositives"
    ]
    assert lenient.passed
