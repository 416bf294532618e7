"""The validate stage: judge a trained ONNX model on the holdout before anything is deployed."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training_tasks.config.org import THRESHOLD_DEFAULTS
from training_tasks.config.window_features import WindowSpec
from training_tasks.protocol.decision import DEFAULT_THRESHOLD
from training_tasks.stages.validate.deployed import open_deployed
from training_tasks.stages.validate.event_checks import EventScope, judge_events
from training_tasks.stages.validate.for_report import report_inputs
from training_tasks.stages.validate.holdout import (
    HoldoutFile,
    Scored,
    open_holdout,
    sample_rows,
    score_and_check,
)
from training_tasks.stages.validate.loading import Expected, Loaded, load_model
from training_tasks.stages.validate.metrics import GATED_METRICS, Judged, judge_scores, no_scores
from training_tasks.stages.validate.model_checks import (
    Check,
    at_most,
    measure_latency,
    not_run,
)
from training_tasks.stages.validate.recorded import DerivedFeature, ModelDecision, RunRecord
from training_tasks.stages.validate.report import ValidationReport, failures_of
from training_tasks.stages.validate.scorers import (
    WindowSide,
    native_scorer,
    predictors,
    window_side,
    with_deployed_columns,
)
from training_tasks.stages.validate.verdicts import (
    compare_with_deployed,
    decision_check,
    parity_with_native,
    positives_check,
    threshold_check,
)
from training_tasks.stages.validate.window_checks import CHECK_NAME
from training_tasks.stages.validate.windows import window_reader

__all__ = ["EventScope", "ValidationReport", "validate"]

# A failure of one of these leaves nothing to measure, so the checks after them are not run.
PREREQUISITES = ("load", "contract", "holdout", "scores")


@dataclass(frozen=True)
class _Elsewhere:
    """What the checks are held against besides the model and the holdout."""

    native_model_path: Path | None
    deployed_model_path: Path | None
    target: str
    train_path: Path | None
    events: EventScope | None


def validate(
    *,
    org_id: str,
    version: str,
    model_path: Path,
    holdout_path: Path,
    feature_columns: Sequence[str],
    target_column: str,
    thresholds: Mapping[str, Any],
    native_model_path: Path | None = None,
    deployed_model_path: Path | None = None,
    script_metrics: Mapping[str, Any] | None = None,
    holdout_sha256: str | None = None,
    derived_features: Sequence[DerivedFeature] | None = None,
    recorded_thresholds: Mapping[str, object] | None = None,
    train_path: Path | None = None,
    windows: WindowSpec | None = None,
    events: EventScope | None = None,
    purge_gap_s: float = 0.0,
) -> ValidationReport:
    """Run every check on the model and report; a bad model is a verdict here, not an error.

    With `holdout_sha256` (recorded by extract) a holdout changed since is refused unscored.
    `derived_features` ([{name, expression, ast}]) and `recorded_thresholds` (where the run
    recorded its decision threshold: the value, or None where one is missing) are what the run
    recorded; the model's metadata must repeat them. Without a run (None) the model's own
    metadata is taken. `train_path` (default: train.parquet beside the holdout) is summarized
    in the report, for drift against the deployed version. `windows`: the run trained a window
    model, and the holdout holds windows of `feature_columns` (its columns). `events`: the
    run's failure events, for the event metrics and their gates. `purge_gap_s` is recorded.
    """
    started_ns = time.perf_counter_ns()
    features = list(feature_columns)
    read = None if windows is None else window_reader(windows, target_column)
    holdout = open_holdout(Path(holdout_path), features, target_column, holdout_sha256, read)
    expected = Expected(
        org_id, version, features, RunRecord(derived_features, recorded_thresholds or {}), windows
    )
    elsewhere = _Elsewhere(
        native_model_path, deployed_model_path, target_column, train_path, events
    )
    try:
        limits = {**THRESHOLD_DEFAULTS, **thresholds}
        checks, found = _judge(expected, Path(model_path), holdout, limits, elsewhere)
    finally:
        if holdout[0] is not None:
            holdout[0].close()
    return ValidationReport(
        organization_id=org_id,
        version=version,
        passed=all(check.passed for check in checks),
        failures=failures_of(checks),
        checks=checks,
        script_metrics=None if script_metrics is None else dict(script_metrics),
        duration_ms=(time.perf_counter_ns() - started_ns) / 1e6,
        purge_gap_s=purge_gap_s,
        **found,
    )


def _judge(
    expected: Expected,
    model_path: Path,
    holdout: tuple[HoldoutFile | None, str],
    limits: Mapping[str, Any],
    elsewhere: _Elsewhere,
) -> tuple[list[Check], dict[str, Any]]:
    """Every check, in order, and the measurements the report carries besides them."""
    opened = holdout[0]
    sample = sample_rows(opened, expected.shape)
    loaded = load_model(model_path, expected, sample, limits)
    latency = measure_latency(loaded.model, sample) if loaded.model else {}
    window = expected.window is not None
    checks = [*loaded.checks, _latency_check(latency, limits, _blocker(loaded.checks), window)]
    side = window_side(expected.window, loaded)
    opened, scored, pending, importance = _score(
        expected, loaded, holdout, limits, elsewhere, side, checks
    )
    threshold = loaded.decision.threshold if loaded.decision else None
    verdicts, found = _verdicts(scored, checks, threshold, limits, pending)
    events = judge_events(
        elsewhere.events, opened, scored, threshold, window, limits, _blocker(checks)
    )
    found["metrics"] = {**found["metrics"], **events.metrics}
    paths = (opened.path if opened is not None else Path(), elsewhere.train_path)
    columns = (expected.features, elsewhere.target)
    evidence = report_inputs(scored, checks, found, importance, paths, columns)
    return checks + verdicts + events.checks, {
        **found,
        "evidence": evidence,
        "latency": latency,
        "memory": loaded.memory,
        "model_sha256": loaded.sha256,
        "model_size_bytes": loaded.size_bytes,
        "rows": 0 if scored is None else scored.rows,
        "events": events.summary,
        "window": _window_summary(expected.window, side),
    }


def _score(
    expected: Expected,
    loaded: Loaded,
    holdout: tuple[HoldoutFile | None, str],
    limits: Mapping[str, Any],
    elsewhere: _Elsewhere,
    side: WindowSide | None,
    checks: list[Check],
) -> tuple[HoldoutFile | None, Scored | None, tuple[Check | None, dict[str, Any]], Any]:
    """Score the holdout with every model in one pass; appends the checks of the holdout and
    the scores (and of a window model's features) to `checks`. Returns the holdout as read,
    its scores, what parity and the comparison still need, and the native model's gains."""
    opened, problem = holdout
    derived = _derived(expected.run, loaded.decision)
    native, parity_check, importance = native_scorer(
        elsewhere.native_model_path,
        expected.features,
        derived,
        float(limits["maxParityDiff"]),
        side,
    )
    enabled = bool(limits["notWorseThanDeployed"])
    other, comparison = open_deployed(
        elsewhere.deployed_model_path, enabled, org_id=expected.org_id, target=elsewhere.target
    )
    opened, other, comparison = with_deployed_columns(opened, other, comparison, expected.window)
    scorers = predictors(loaded.model, native, other, opened, expected.features)
    observers = side.observers if side is not None else None
    scored, scoring_checks = score_and_check(opened, problem, scorers, _blocker(checks), observers)
    checks += scoring_checks
    holdout_ok = next(check.passed for check in scoring_checks if check.name == "holdout")
    checks.append(positives_check(scored if holdout_ok else None, limits))
    if side is not None:
        checks.append(_feature_check(side, scored, _blocker(checks)))
    return opened, scored, (parity_check, comparison), importance


def _feature_check(side: WindowSide, scored: Scored | None, blocker: str | None) -> Check:
    """The window model's in-graph statistics against the reference, over the whole holdout."""
    if side.failed is not None:
        return side.failed
    if side.check is None or scored is None:
        return not_run(CHECK_NAME, blocker or "load")
    return side.check.verdict(scored.errors.get(CHECK_NAME), blocker)


def _window_summary(spec: WindowSpec | None, side: WindowSide | None) -> dict[str, Any] | None:
    """The report's `window`: the spec and what the feature check found."""
    if spec is None:
        return None
    found = side.check.summary() if side is not None and side.check is not None else None
    return {**spec.to_wire(), "featureCheck": found}


def _verdicts(
    scored: Scored | None,
    checks: list[Check],
    threshold: float | None,
    limits: Mapping[str, Any],
    pending: tuple[Check | None, dict[str, Any]],
) -> tuple[list[Check], dict[str, Any]]:
    """The checks of the scores (after `checks`), and the metrics and findings behind them."""
    blocker = _blocker(checks)
    judged = _judge_scores(scored, threshold, blocker)
    gates = [threshold_check(name, judged, limits, blocker) for name in GATED_METRICS]
    parity_limit, metrics = float(limits["maxParityDiff"]), judged.metrics
    parity_check, parity = parity_with_native(pending[0], scored, parity_limit, blocker)
    compare_check, comparison = compare_with_deployed(pending[1], scored, metrics, limits, blocker)
    verdicts = [
        decision_check(scored, threshold, blocker),
        *(check for check, _ in gates),
        parity_check,
        compare_check,
    ]
    return verdicts, {
        "metrics": metrics,
        "parity": parity,
        "comparison": comparison,
        "decision_threshold": metrics["decisionThreshold"],
        "counts": None if judged.counts is None else judged.counts.as_dict(),
        "intervals": judged.intervals,
        "warnings": [note for _, note in gates if note is not None],
    }


def _derived(run: RunRecord, decision: ModelDecision | None) -> list[DerivedFeature]:
    """The derived features the native model is fed: the run's, else the model's own."""
    if run.derived_features is not None:
        return list(run.derived_features)
    return decision.derived_features if decision is not None else []


def _judge_scores(scored: Scored | None, threshold: float | None, blocker: str | None) -> Judged:
    """The model's metrics at its threshold (0.5 where its metadata's cannot be read)."""
    if scored is None or blocker is not None:
        return no_scores(threshold)
    at = DEFAULT_THRESHOLD if threshold is None else threshold
    return judge_scores(scored.labels, scored.scores["model"], at)


def _latency_check(
    latency: Mapping[str, float], limits: Mapping[str, Any], blocker: str | None, window: bool
) -> Check:
    if blocker is not None or not latency:
        return not_run("latency", blocker or "contract")
    limit_ms = float(limits["maxLatencyMs"])
    what = f"single-{'window' if window else 'row'} inference p99"
    return at_most("latency", what, latency["singleRowP99Ms"], limit_ms, "ms")


def _blocker(checks: Sequence[Check]) -> str | None:
    """The first failed check that leaves nothing to measure."""
    failed = {check.name for check in checks if not check.passed and check.blocked_by is None}
    return next((name for name in PREREQUISITES if name in failed), None)
