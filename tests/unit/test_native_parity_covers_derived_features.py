"""A model with derived features computes them in its graph from the raw columns; validation feeds
the native booster [raw..., derived...] computed by the service's own evaluator, so a graph that
computes a feature differently fails parity. The deployed model, old or new in style, is fed the
raw columns its own metadata names, on the same holdout rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from tests.support import onnx_fixtures as fixtures
from tests.support.onnx_fixtures import (
    FEATURES,
    derived_spec,
    make_data,
    save_model,
    save_onnx,
    to_onnx_with_derived,
    train_booster,
    with_derived_columns,
    write_holdout,
)
from training_tasks.stages.validate.metrics import ranking_metrics
from training_tasks.stages.validate.stage import ValidationReport

DERIVED = derived_spec(
    {
        "load": "temperature * pressure",
        "wear": "log1p(abs(vibration)) - rpm / 2",
        "spread": "max(temperature, pressure) - min(temperature, pressure)",
    }
)


@pytest.fixture(scope="module")
def derived_booster() -> lgb.Booster:
    features, labels = make_data(3000, seed=1)
    return train_booster(with_derived_columns(features, DERIVED), labels)


@pytest.fixture(scope="module")
def holdout_rows() -> tuple[np.ndarray, np.ndarray]:
    return make_data(2000, seed=2)


@pytest.fixture(scope="module")
def holdout(tmp_path_factory: pytest.TempPathFactory, holdout_rows: Any) -> Path:
    return write_holdout(tmp_path_factory.mktemp("data") / "holdout.parquet", *holdout_rows)


def judge(model: Path, holdout: Path, **kw: Any) -> ValidationReport:
    """Validated as a run that recorded DERIVED and a threshold of 0.5."""
    recorded = {"metrics.json": 0.5}
    return fixtures.judge(
        model,
        holdout,
        **{"thresholds": {}, "derived_features": DERIVED, "recorded_thresholds": recorded, **kw},
    )


def test_a_derived_feature_model_passes_parity_on_raw_and_derived_columns(
    derived_booster: lgb.Booster, holdout: Path, tmp_path: Path
) -> None:
    proto = to_onnx_with_derived(derived_booster, DERIVED, threshold=0.5)
    model = save_onnx(tmp_path / "m", proto, derived_booster)

    report = judge(model, holdout)

    assert report.passed, report.failures
    assert report.parity["status"] == "passed" and report.parity["maxAbsDiff"] < 1e-4
    metadata = next(c for c in report.as_dict()["checks"] if c["name"] == "metadata")
    assert "3 derived features" in metadata["detail"]


def test_a_graph_that_computes_a_derived_feature_differently_fails_parity(
    derived_booster: lgb.Booster, holdout: Path, tmp_path: Path
) -> None:
    # It records `load = temperature * pressure` but adds them.
    wrong = derived_spec(
        {**{d["name"]: d["expression"] for d in DERIVED}, "load": "temperature + pressure"}
    )
    proto = to_onnx_with_derived(derived_booster, DERIVED, computed_as=wrong, threshold=0.5)
    model = save_onnx(tmp_path / "m", proto, derived_booster)

    report = judge(model, holdout, thresholds={"accuracy": 0, "precision": 0, "recall": 0})

    assert not report.passed and report.parity["status"] == "failed"
    assert report.parity["maxAbsDiff"] > 1e-4
    assert len(report.failures) == 1 and "does not match the booster" in report.failures[0]


def test_a_model_whose_derived_features_differ_from_the_runs_is_rejected_naming_both(
    derived_booster: lgb.Booster, holdout: Path, tmp_path: Path
) -> None:
    recorded = derived_spec({"load": "temperature * pressure"})
    proto = to_onnx_with_derived(derived_booster, DERIVED, threshold=0.5)
    model = save_onnx(tmp_path / "m", proto, derived_booster)

    report = judge(model, holdout, derived_features=recorded)

    assert not report.passed
    assert report.failures[0] == (
        "the model's derived_features is [load = temperature * pressure, wear = "
        "log1p(abs(vibration)) - rpm / 2, spread = max(temperature, pressure) - "
        "min(temperature, pressure)] but the run's derivedFeatures is "
        "[load = temperature * pressure]"
    )


def test_a_model_txt_over_raw_columns_only_fails_parity_naming_the_widths(
    derived_booster: lgb.Booster, holdout: Path, tmp_path: Path
) -> None:
    proto = to_onnx_with_derived(derived_booster, DERIVED, threshold=0.5)
    raw_only = train_booster(*make_data(1000, seed=4), rounds=5)
    model = save_onnx(tmp_path / "m", proto, raw_only)

    report = judge(model, holdout)

    assert report.failures == [
        f"the native model {tmp_path / 'm' / 'model.txt'} takes 4 features, not 7 "
        "(4 raw and 3 derived)"
    ]


def test_an_old_style_deployed_model_is_compared_with_a_derived_one_on_the_same_rows(
    derived_booster: lgb.Booster, holdout: Path, holdout_rows: Any, tmp_path: Path
) -> None:
    old = train_booster(*make_data(3000, seed=1))
    deployed = save_model(tmp_path / "deployed", old)
    proto = to_onnx_with_derived(derived_booster, DERIVED, threshold=0.5)

    report = judge(
        save_onnx(tmp_path / "m", proto, derived_booster), holdout, deployed_model_path=deployed
    )

    features, labels = holdout_rows
    expected, _ = ranking_metrics(labels, np.asarray(old.predict(features), dtype=np.float32))
    assert report.passed, report.failures
    assert report.comparison["status"] == "passed"
    assert report.comparison["deployed"] == pytest.approx(expected, abs=1e-6)


def test_a_deployed_model_of_other_raw_columns_is_fed_its_own_columns(
    tmp_path: Path,
) -> None:
    features, labels = make_data(3000, seed=1)
    extra = np.c_[features, features[:, 0] * 0.5].astype(np.float32)
    columns = [*FEATURES, "torque"]
    holdout_x, holdout_y = make_data(2000, seed=2)
    holdout = write_holdout(
        tmp_path / "holdout.parquet",
        np.c_[holdout_x, holdout_x[:, 0] * 0.5].astype(np.float32),
        holdout_y,
        feature_columns=columns,
    )
    # The deployed model reads torque, vibration and temperature, in that order.
    theirs = ["torque", "vibration", "temperature"]
    picked = [columns.index(name) for name in theirs]
    old = train_booster(extra[:, picked], labels)
    deployed = save_model(tmp_path / "deployed", old, feature_columns=theirs)
    new = train_booster(features, labels)

    report = judge(
        save_model(tmp_path / "m", new),
        holdout,
        deployed_model_path=deployed,
        derived_features=[],
    )

    holdout_all = np.c_[holdout_x, holdout_x[:, 0] * 0.5].astype(np.float32)
    expected, _ = ranking_metrics(
        holdout_y, np.asarray(old.predict(holdout_all[:, picked]), dtype=np.float32)
    )
    assert report.comparison["status"] in ("passed", "failed")
    assert report.comparison["deployedFeatures"] == theirs
    assert report.comparison["deployed"] == pytest.approx(expected, abs=1e-6)
