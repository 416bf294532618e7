"""What report.html shows, from validation.json and the report data of one or two versions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from training_tasks.reports import plots
from training_tasks.reports.page import number
from training_tasks.reports.profile import drift

BYTES_PER_MB = 1024 * 1024
RATES = ("accuracy", "precision", "recall", "f1")  # validation.json sorts its keys
RANKING = ("rocAuc", "prAuc", "positiveRate")


def page_context(
    validation: Mapping[str, Any],
    data: Mapping[str, Any] | None,
    reference: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The template's context; `reference` is the report data of the version compared with."""
    problems: list[str] = []
    size = validation.get("modelSizeBytes")
    context: dict[str, Any] = {
        "org": validation.get("organizationId", ""),
        "version": validation.get("version", ""),
        "passed": bool(validation.get("passed")),
        "verdict": "passed" if validation.get("passed") else "rejected",
        "threshold": validation.get("decisionThreshold"),
        "rows": validation.get("rows"),
        "size_mb": None if size is None else size / BYTES_PER_MB,
        "sha256": validation.get("modelSha256") or "",
        "failures": list(validation.get("failures") or []),
        "warnings": list(validation.get("warnings") or []),
        "checks": _checks(validation),
        "metrics": _metrics(validation),
        "confusion": validation.get("counts"),
        "duration_s": (validation.get("durationMs") or 0) / 1000,
        "problems": problems,
    }
    data = data or {}
    context.update(_curves(data, reference, problems))
    context.update(_importance(data, problems))
    context.update(_data(data, reference, problems))
    return context


def _checks(validation: Mapping[str, Any]) -> list[dict[str, Any]]:
    intervals = validation.get("intervals") or {}
    rows = []
    for check in validation.get("checks") or []:
        not_run = str(check.get("detail", "")).startswith(("not run", "skipped"))
        result = "passed" if check.get("passed") else "failed"
        result = "not run" if check.get("detail", "").startswith("not run") else result
        rows.append(
            {
                "name": check.get("name"),
                "result": result,
                "css": "skip" if not_run else ("ok" if check.get("passed") else "bad"),
                "value": check.get("value"),
                "limit": check.get("limit"),
                "interval": _interval(intervals.get(check.get("name"))),
                "detail": check.get("detail", ""),
            }
        )
    return rows


def _metrics(validation: Mapping[str, Any]) -> list[dict[str, Any]]:
    intervals, metrics = validation.get("intervals") or {}, validation.get("metrics") or {}
    rows = []
    for name in [*RATES, *sorted(set(intervals) - set(RATES))]:
        if name not in intervals:
            continue
        interval = intervals[name]
        evidence = (
            f"{interval.get('successes')} of {interval.get('trials')} {interval.get('trialsOf')}"
        )
        rows.append(
            {
                "name": name,
                "value": metrics.get(name),
                "interval": _interval(interval),
                "evidence": evidence,
            }
        )
    rows += [
        {"name": name, "value": metrics.get(name), "interval": "", "evidence": ""}
        for name in RANKING
        if name in metrics
    ]
    return rows + _event_rows(validation.get("events"))


def _event_rows(events: Any) -> list[dict[str, Any]]:
    """Events caught, median lead time and false alarms, with the counts behind them."""
    if not isinstance(events, Mapping) or events.get("eventsTotal") is None:
        return []
    days = events.get("assetDays") or 0
    per_asset = days / events["assets"] if events.get("assets") else 0
    evidence = {
        "eventRecall": f"{events.get('eventsCaught')} of {events['eventsTotal']} holdout failures",
        "medianLeadTimeH": "hours from the first alarm to a caught failure",
        "falseAlarmsPerAssetDay": (
            f"{events.get('falseAlarms')} false alarms over {events.get('assets')} assets x "
            f"{per_asset:.1f} days"
        ),
    }
    return [
        {"name": name, "value": events.get(name), "interval": "", "evidence": text}
        for name, text in evidence.items()
    ]


def _interval(interval: Mapping[str, Any] | None) -> str:
    if not interval or interval.get("low") is None:
        return ""
    return f"{number(interval['low'])}\u2013{number(interval['high'])}"


def _curves(
    data: Mapping[str, Any], reference: Mapping[str, Any] | None, problems: list[str]
) -> dict[str, Any]:
    model = data.get("model")
    found: dict[str, Any] = {"figures": [], "comparison_note": ""}
    if not model:
        found["curves_missing"] = (
            "no curve data was recorded for this version (the holdout could not be scored, or "
            "it was validated before reports were kept)"
        )
        return found
    other, label, note = _other_curves(data, reference)
    found["comparison_note"] = note
    drawings: list[tuple[str, Callable[[], str]]] = [
        ("ROC curve", lambda: plots.roc_figure(model, other, label)),
        ("precision-recall curve", lambda: plots.pr_figure(model, other, label)),
        ("calibration", lambda: plots.calibration_figure(model, other, label)),
        ("score distribution by class", lambda: plots.distribution_figure(model)),
    ]
    found["figures"] = [
        {"caption": caption, "src": src}
        for caption, draw in drawings
        if (src := _drawn(caption, draw, problems))
    ]
    found["curves_missing"] = "" if found["figures"] else "no figure could be drawn"
    return found


def _other_curves(
    data: Mapping[str, Any], reference: Mapping[str, Any] | None
) -> tuple[Mapping[str, Any] | None, str, str]:
    """The curves drawn over the new ones: the deployed model on the same holdout, or the
    compared version on its own holdout."""
    deployed = data.get("deployed")
    if reference is not None:
        other = reference.get("version")
        if deployed and deployed.get("version") == other:
            note = f"Dashed: version {other}, deployed when this one was validated, on the same holdout rows."
            return deployed, f"deployed {other}", note
        note = (
            f"Dashed: version {other} on its own holdout, not the same rows; compare the "
            "shapes, not the points."
        )
        return reference.get("model"), f"{other} (own holdout)", note
    if deployed:
        version = deployed.get("version") or "the deployed model"
        return (
            deployed,
            f"deployed {version}",
            (f"Dashed: the deployed model ({version}) on the same holdout rows."),
        )
    return None, "", ""


def _drawn(caption: str, draw: Callable[[], str], problems: list[str]) -> str:
    try:
        return draw()
    except Exception as exc:  # one figure that fails must not lose the rest of the report
        problems.append(f"the {caption} could not be drawn: {exc}")
        return ""


def _importance(data: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    gains = data.get("importance")
    if not gains:
        missing = "no native LightGBM model (model.txt) was there to read the gain from"
        return {"importance": "", "importance_missing": missing}
    pairs = sorted(((str(name), float(gain)) for name, gain in gains), key=lambda p: -p[1])
    src = _drawn("feature importance", lambda: plots.importance_figure(pairs), problems)
    return {"importance": src, "importance_missing": "the figure could not be drawn"}


def _data(
    data: Mapping[str, Any], reference: Mapping[str, Any] | None, problems: list[str]
) -> dict[str, Any]:
    train, holdout = data.get("train"), data.get("holdout")
    sets = [
        {
            "name": name,
            "start": doc.get("start"),
            "end": doc.get("end"),
            "rows": doc.get("rows"),
            "positives": doc.get("positives"),
        }
        for name, doc in (("training set", train), ("holdout", holdout))
        if doc
    ]
    found: dict[str, Any] = {
        "data": sets,
        "drift": False,
        "drift_note": "",
        "features": [],
        "data_missing": "no training-set summary was recorded",
    }
    if not train:
        return found
    ref_profile, ref_name = _reference_profile(data, reference)
    by_feature = {}
    if ref_profile is not None:
        by_feature = {row["feature"]: row for row in drift(ref_profile, train)}
        found["drift"] = True
        found["drift_note"] = f"PSI of each feature's training data against {ref_name}'s."
    elif ref_name:
        found["drift_note"] = f"No drift: {ref_name} has no recorded training-set summary."
    summaries = train.get("features", {})
    for name in train.get("columns") or sorted(summaries):  # JSON keys come back sorted
        summary = summaries[name]
        points = summary.get("percentiles") or [None] * 101
        row = by_feature.get(name, {})
        found["features"].append(
            {
                "name": name,
                "missing": summary.get("missing"),
                "mean": summary.get("mean"),
                "std": summary.get("std"),
                "min": points[0],
                "median": points[50],
                "max": points[-1],
                "psi": row.get("psi"),
                "level": row.get("level", ""),
            }
        )
    return found


def _reference_profile(
    data: Mapping[str, Any], reference: Mapping[str, Any] | None
) -> tuple[Mapping[str, Any] | None, str]:
    if reference is not None:
        return reference.get("train"), f"version {reference.get('version')}"
    deployed = data.get("deployed") or {}
    if deployed.get("version"):
        # Its report data was not found, or it would have been passed as `reference`.
        return None, f"the deployed version {deployed['version']}"
    return None, ""
