"""The model report: its curves and drift are right, the page is self-contained and escaped,
a report failure never changes the verdict, and a report is rebuilt from the artifacts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from tests.support.onnx_fixtures import (
    FEATURES,
    ORG_ID,
    TARGET,
    VERSION,
    make_data,
    save_model,
    train_booster,
)
from training_tasks.config.org import THRESHOLD_DEFAULTS
from training_tasks.reports import build
from training_tasks.reports.evidence import MAX_CURVE_POINTS, score_evidence
from training_tasks.reports.profile import drift, feature_summary
from training_tasks.stages.validate.stage import validate

OLD = "v2026-05-01T12-00-00-000Z_0badc0de"


def _parquet(path: Path, x: np.ndarray, y: np.ndarray, names: list[str]) -> Path:
    start = np.datetime64("2026-01-01T00:00:00")
    columns = {"timestamp": pa.array(start + np.arange(len(y)) * np.timedelta64(1, "m"))}
    for j, name in enumerate(names):
        columns[name] = pa.array(x[:, j], type=pa.float32())
    columns[TARGET] = pa.array(y, type=pa.int8())
    pq.write_table(pa.table(columns), path)
    return path


def _validated(base: Path, names: list[str] = FEATURES, deployed: bool = True) -> Path:
    """Validate a model whose deployed predecessor was validated too; its artifacts folder."""
    train_x, train_y = make_data(4_000, seed=1)
    data = base / "data"
    data.mkdir(parents=True)
    _parquet(data / "train.parquet", train_x, train_y, names)
    holdout = _parquet(data / "holdout.parquet", *make_data(3_000, seed=2), names)
    art = base / "artifacts" / ORG_ID
    new = save_model(art / VERSION, train_booster(train_x, train_y), feature_columns=names)
    old_model = None
    if deployed:
        old_dir = base / "models" / ORG_ID / f"deployed_{OLD}"
        old_model = save_model(
            old_dir, train_booster(train_x[:300], train_y[:300], rounds=3), feature_columns=names
        )
        old_x = train_x + 1.5  # the old training set sits elsewhere: drift on every feature
        old = build.ReportInputs(train_y, np.full(len(train_y), 0.5), 0.5, names, TARGET)
        old = build.ReportInputs(
            train_y,
            np.linspace(0, 1, len(train_y)),
            0.5,
            names,
            TARGET,
            train_path=_parquet(base / "old.parquet", old_x, train_y, names),
        )
        (art / OLD).mkdir(parents=True)
        build.write_report(art / OLD, {"organizationId": ORG_ID, "version": OLD}, old)
    report = validate(
        org_id=ORG_ID,
        version=VERSION,
        model_path=new,
        holdout_path=holdout,
        feature_columns=names,
        target_column=TARGET,
        thresholds=THRESHOLD_DEFAULTS,
        native_model_path=new.parent / "model.txt",
        deployed_model_path=old_model,
    )
    report.write(new.parent / "validation.json")
    return new.parent


def test_curves_agree_with_scikit_learn_and_stay_small() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(100_000) < 0.1
    scores = np.clip(labels * 0.3 + rng.random(100_000) * 0.7, 0, 1).astype(np.float32)
    found = score_evidence(labels, scores, 0.5)
    assert found["rocAuc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert found["prAuc"] == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    assert len(found["roc"]["fpr"]) <= MAX_CURVE_POINTS + 2
    point = found["operatingPoint"]
    alarms = scores >= 0.5
    assert point["truePositives"] == int(np.sum(alarms & labels))
    assert point["falsePositives"] == int(np.sum(alarms & ~labels))


def test_psi_is_near_zero_for_the_same_data_and_flags_a_shift() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=50_000), rng.normal(size=50_000)
    same = drift(
        {"features": {"x": feature_summary(pa.chunked_array([a]))}},
        {"features": {"x": feature_summary(pa.chunked_array([b]))}},
    )
    shifted = drift(
        {"features": {"x": feature_summary(pa.chunked_array([a]))}},
        {"features": {"x": feature_summary(pa.chunked_array([b + 1.0]))}},
    )
    assert same[0]["psi"] < 0.01 and same[0]["level"] == "stable"
    assert shifted[0]["psi"] > 0.25 and shifted[0]["level"] == "significant"


def test_psi_reads_a_binary_feature_and_missing_values() -> None:
    ones = pa.chunked_array([np.r_[np.zeros(900), np.ones(100)]])
    more_ones = pa.chunked_array([np.r_[np.zeros(500), np.ones(500)]])
    with_missing = pa.chunked_array([np.r_[np.zeros(450), np.ones(50), [np.nan] * 500]])
    ref = {"features": {"x": feature_summary(ones)}}
    assert drift(ref, {"features": {"x": feature_summary(ones)}})[0]["psi"] == pytest.approx(0)
    assert drift(ref, {"features": {"x": feature_summary(more_ones)}})[0]["psi"] > 0.25
    assert drift(ref, {"features": {"x": feature_summary(with_missing)}})[0]["psi"] > 0.25


def test_the_validate_stage_writes_a_self_contained_report_with_every_check(
    tmp_path: Path,
) -> None:
    folder = _validated(tmp_path)
    page = (folder / "report.html").read_text()
    doc = json.loads((folder / "validation.json").read_text())
    assert doc["report"]["file"] == "report.html" and doc["report"]["bytes"] > 10_000
    for check in doc["checks"]:
        assert f"<td>{check['name']}</td>" in page
    assert "passed" in page and "Confusion matrix" in page
    # Four curves and the importance, inline; nothing is fetched from anywhere.
    assert len(re.findall(r'<img src="data:image/svg\+xml;base64,', page)) == 5
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and "<script" not in page
    assert f"version {OLD}, deployed when this one was validated, on the same holdout" in page
    assert "significant" in page  # the old training set was shifted


def test_names_from_data_and_config_are_escaped(tmp_path: Path) -> None:
    names = ["<script>alert(1)</script>", *FEATURES[1:]]
    page = (_validated(tmp_path, names) / "report.html").read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_a_report_that_fails_is_recorded_and_the_verdict_stands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> str:
        raise RuntimeError("no fonts")

    monkeypatch.setattr(build, "render_report", broken)
    folder = _validated(tmp_path)
    doc = json.loads((folder / "validation.json").read_text())
    assert doc["passed"] is True
    assert doc["report"]["file"] is None and "no fonts" in doc["report"]["error"]
    assert not (folder / "report.html").exists()


def test_a_report_is_rebuilt_from_the_artifacts_after_the_data_is_gone(tmp_path: Path) -> None:
    folder = _validated(tmp_path)
    first = (folder / "report.html").read_text()
    (folder / "report.html").unlink()
    for path in (tmp_path / "data").iterdir():
        path.unlink()
    assert build.rebuild_report(folder) == folder / "report.html"
    assert (folder / "report.html").read_text() == first
    other = build.rebuild_report(folder, folder.parent / OLD)
    assert other.name == f"report-vs-{OLD}.html"
    assert f"version {OLD}" in other.read_text()


def test_a_version_validated_before_reports_still_gets_its_verdict(tmp_path: Path) -> None:
    folder = tmp_path / VERSION
    folder.mkdir()
    doc = {
        "organizationId": ORG_ID,
        "version": VERSION,
        "passed": False,
        "failures": ["recall 0.41 is below the threshold 0.70"],
        "checks": [],
    }
    (folder / "validation.json").write_text(json.dumps(doc))
    page = build.rebuild_report(folder).read_text()
    assert "rejected" in page and "recall 0.41 is below the threshold 0.70" in page
    assert "no curve data was recorded" in page
    with pytest.raises(build.ReportUnavailable, match="never validated"):
        build.rebuild_report(tmp_path / "missing")


def test_a_report_shows_the_failures_caught_how_early_and_the_false_alarms(
    tmp_path: Path,
) -> None:
    folder = tmp_path / VERSION
    folder.mkdir()
    events = {
        "eventRecall": 32 / 38,
        "eventsCaught": 32,
        "eventsTotal": 38,
        "medianLeadTimeH": 12.7,
        "falseAlarmsPerAssetDay": 0.063,
        "falseAlarms": 19,
        "assets": 20,
        "assetDays": 300.0,
    }
    doc = {"organizationId": ORG_ID, "version": VERSION, "passed": True, "events": events}
    (folder / "validation.json").write_text(json.dumps(doc))
    page = build.rebuild_report(folder).read_text()
    assert "32 of 38 holdout failures" in page
    assert "19 false alarms over 20 assets x 15.0 days" in page
    assert "12.7" in page
