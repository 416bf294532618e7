"""Judging the scored holdout: enough failures, the model's own alarms, the gates with their
intervals, parity with the native booster, and the comparison with the deployed model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from training_tasks.protocol.decision import ALARM_NAME, THRESHOLD_KEY
from training_tasks.stages.validate.holdout import Scored
from training_tasks.stages.validate.metrics import Judged, decisions, ranking_metrics, straddle_note
from training_tasks.stages.validate.model_checks import OUTPUT_NAME, Check, not_run

MIN_POSITIVES_KEY = "minHoldoutPositives"
DEFAULT_MIN_POSITIVES = 30


def positives_check(scored: Scored | None, limits: Mapping[str, Any]) -> Check:
    """The holdout must hold at least `minHoldoutPositives` failures to judge the model by;
    `scored` is None when the holdout check failed."""
    name = "holdoutPositives"
    if scored is None:
        return not_run(name, "holdout")
    minimum = int(limits.get(MIN_POSITIVES_KEY, DEFAULT_MIN_POSITIVES))
    positives = int(np.count_nonzero(scored.labels))
    if positives >= minimum:
        detail = f"{positives} positive rows, at least the {minimum} of {MIN_POSITIVES_KEY}"
        return Check(name, True, positives, minimum, detail)
    detail = (
        f"the holdout has {positives} positive rows, fewer than thresholds.{MIN_POSITIVES_KEY} "
        f"{minimum}: precision and recall on so few failures say little about the model; widen "
        "the data range or validationSplit so the holdout holds more failures, or lower "
        f"{MIN_POSITIVES_KEY}"
    )
    return Check(name, False, positives, minimum, detail)


def decision_check(scored: Scored | None, threshold: float | None, blocker: str | None) -> Check:
    """A model's `failure_alarm` must be `failure_probability >= threshold` on every row."""
    name = "decision"
    if blocker is not None or scored is None:
        return not_run(name, blocker or "holdout")
    if threshold is None:  # the metadata check says why
        return not_run(name, "metadata")
    alarms = scored.alarms.get("model")
    if alarms is None:
        detail = f"skipped (no {ALARM_NAME} output): the decision is {OUTPUT_NAME} >= {threshold!r}"
        return Check(name, True, None, threshold, detail)
    scores = scored.scores["model"]
    expected = decisions(scores, threshold)
    wrong = np.flatnonzero(alarms != expected)
    if not len(wrong):
        detail = f"{ALARM_NAME} is {OUTPUT_NAME} >= {threshold!r} on all {len(alarms)} rows"
        return Check(name, True, 0, threshold, detail)
    row = int(wrong[0])
    detail = (
        f"the model's {ALARM_NAME} is {bool(alarms[row])} on holdout row {row} (counted from 0), "
        f"where {OUTPUT_NAME} {float(scores[row]):.9g} >= {THRESHOLD_KEY} {threshold!r} is "
        f"{bool(expected[row])} ({len(wrong)} of {len(alarms)} rows disagree): the graph's "
        "decision is not the threshold it records; export the model again"
    )
    return Check(name, False, len(wrong), threshold, detail)


def threshold_check(
    name: str, judged: Judged, limits: Mapping[str, Any], blocker: str | None
) -> tuple[Check, str | None]:
    """A check that the metric `name` reaches its gate, and the note when the gate lies inside
    the metric's 95% interval (the verdict still follows the point value)."""
    value = judged.metrics[name]
    if blocker is not None or value is None or judged.counts is None:
        return not_run(name, blocker or "scores"), None
    limit = float(limits[name])
    shown, shown_limit = _pair(value, limit)
    interval = judged.intervals[name]
    note = straddle_note(name, interval, limit, judged.counts)
    if note is not None:
        evidence = f"; {note}"
    elif interval["low"] is not None:
        evidence = (
            f" (95% CI {interval['low']:.2f}\u2013{interval['high']:.2f}: "
            f"{interval['successes']} of {interval['trials']})"
        )
    else:
        evidence = ""
    if value >= limit:
        detail = f"{name} {shown} meets the threshold {shown_limit}{evidence}"
        return Check(name, True, value, limit, detail), note
    detail = f"{name} {shown} is below the threshold {shown_limit}{evidence}"
    return Check(name, False, value, limit, detail), note


def _pair(value: float, limit: float) -> tuple[str, str]:
    """Both numbers with just enough decimals that a failing value never prints as its limit."""
    for decimals in range(2, 7):
        shown, shown_limit = f"{value:.{decimals}f}", f"{limit:.{decimals}f}"
        if shown != shown_limit or value == limit:
            break
    return shown, shown_limit


def parity_with_native(
    native_check: Check | None, scored: Scored | None, limit: float, blocker: str | None
) -> tuple[Check, dict[str, Any]]:
    """Largest probability difference between the ONNX model and the native booster."""
    if native_check is not None:  # parity was skipped, or model.txt could not be loaded
        check = native_check
    elif blocker is not None or scored is None:
        check = not_run("parity", blocker or "holdout")
    else:
        check = _parity_check(scored, limit)
    rows = 0 if scored is None else scored.rows
    summary = {"status": _status(check), "maxAbsDiff": check.value, "limit": limit}
    return check, {**summary, "rows": rows}


def _parity_check(scored: Scored, limit: float) -> Check:
    if "native" in scored.errors:
        detail = f"the native model failed to score the holdout: {scored.errors['native']}"
        return Check("parity", False, None, limit, detail)
    diff = np.abs(scored.scores["model"].astype(np.float64) - scored.scores["native"])
    max_diff = float(diff.max())
    if max_diff < limit:
        detail = f"probabilities match the native LightGBM model within {max_diff:.4g}"
        return Check("parity", True, max_diff, limit, detail)
    detail = (
        f"the ONNX model's probabilities differ from the native LightGBM model (model.txt) by "
        f"up to {max_diff:.4g}, limit {limit:.4g}: the ONNX export does not match the booster"
    )
    return Check("parity", False, max_diff, limit, detail)


def compare_with_deployed(
    info: dict[str, Any],
    scored: Scored | None,
    metrics: Mapping[str, float | None],
    limits: Mapping[str, Any],
    blocker: str | None,
) -> tuple[Check, dict[str, Any]]:
    """The new model's ROC AUC against the deployed model's on the same holdout rows."""
    name, max_drop = "notWorseThanDeployed", float(limits["maxMetricDrop"])
    info = {**info, "metric": "rocAuc", "new": metrics["rocAuc"], "deployed": None}
    info["maxMetricDrop"] = max_drop
    if scored is not None and "deployed" in scored.errors:
        info["status"] = "skipped (deployed model failed on the holdout)"
        info["reason"] = scored.errors["deployed"]
    elif scored is not None and "deployed" in scored.scores:
        deployed = scored.scores["deployed"]
        if not np.all((deployed >= 0.0) & (deployed <= 1.0)):
            info["status"] = "skipped (deployed model failed on the holdout)"
            info["reason"] = "it returned probabilities that are not numbers within [0, 1]"
    if info["status"] != "compared":
        detail = info["status"] + (f": {info['reason']}" if "reason" in info else "")
        return Check(name, True, None, None, detail), info
    if blocker is not None or scored is None or metrics["rocAuc"] is None:
        return not_run(name, blocker or "holdout"), {**info, "status": "not run"}
    new_auc = float(metrics["rocAuc"])
    deployed_auc, _ = ranking_metrics(scored.labels, scored.scores["deployed"])
    floor = deployed_auc - max_drop
    info.update(deployed=deployed_auc, status="passed" if new_auc >= floor else "failed")
    if new_auc >= floor:
        detail = f"ROC AUC {new_auc:.4f}; the deployed model has {deployed_auc:.4f}"
        return Check(name, True, new_auc, floor, detail), info
    detail = (
        f"ROC AUC {new_auc:.3f} is {deployed_auc - new_auc:.3f} below the deployed model's "
        f"{deployed_auc:.3f} on the same holdout (allowed drop {max_drop:.4g})"
    )
    return Check(name, False, new_auc, floor, detail), info


def _status(check: Check) -> str:
    if check.blocked_by is not None:
        return "not run"
    if check.detail.startswith("skipped"):
        return check.detail
    return "passed" if check.passed else "failed"
