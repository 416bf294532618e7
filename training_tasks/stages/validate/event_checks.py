"""Event metrics in the validate stage: the holdout examples' alarms against the failure events
extract wrote (events.parquet), recorded beside the row metrics, and the gates on them
(thresholds.minEventRecall, thresholds.maxFalseAlarmsPerAssetDay)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from training_tasks import fields as f
from training_tasks.files import UnsafeFile, open_regular
from training_tasks.stages.validate.events import NO_EVENT_METRICS, EventMetrics, event_metrics
from training_tasks.stages.validate.holdout import HoldoutFile, Scored
from training_tasks.stages.validate.metrics import decisions
from training_tasks.stages.validate.model_checks import Check, not_run
from training_tasks.stages.validate.windows import ASSET_COLUMN, TIMESTAMP_COLUMN, example_keys

MIN_RECALL = "minEventRecall"
MAX_FALSE_ALARMS = "maxFalseAlarmsPerAssetDay"
EVENT_GATES = {MIN_RECALL: "eventRecall", MAX_FALSE_ALARMS: "falseAlarms"}
MAX_EVENTS_BYTES = 1 << 34  # written by extract, one row per failure: no practical cap


@dataclass(frozen=True)
class EventScope:
    """The run's failure events (events.parquet) and the holdout range they are judged in."""

    events_path: Path
    split_at: datetime
    end: datetime
    horizon_s: float

    def as_dict(self) -> dict[str, Any]:
        """The scope as the report records it."""
        return {
            "eventsPath": str(self.events_path),
            "splitAt": f.iso(self.split_at),
            "end": f.iso(self.end),
            "horizonHours": self.horizon_s / 3600,
        }


@dataclass(frozen=True)
class EventVerdict:
    """The event metrics (camelCase, None without events), the gates, and the report's block."""

    metrics: dict[str, Any]
    checks: list[Check]
    summary: dict[str, Any] | None


def judge_events(
    scope: EventScope | None,
    holdout: HoldoutFile | None,
    scored: Scored | None,
    threshold: float | None,
    window: bool,
    limits: Mapping[str, Any],
    blocker: str | None,
) -> EventVerdict:
    """The event metrics of the model's alarms at `threshold` on the holdout, and the gates set
    in `limits`; `window`: the holdout's examples are its rows with example = 1."""
    gates = [key for key in EVENT_GATES if limits.get(key) is not None]
    if scope is None:
        return EventVerdict(dict(NO_EVENT_METRICS), [_no_events(key) for key in gates], None)
    unusable = blocker or ("scores" if scored is None or "model" not in scored.scores else None)
    if unusable is not None or holdout is None or scored is None or threshold is None:
        checks = [not_run(EVENT_GATES[key], unusable or "metadata") for key in gates]
        return EventVerdict(dict(NO_EVENT_METRICS), checks, None)
    try:
        found = _measure(scope, holdout, scored, threshold, window)
    except (OSError, UnsafeFile, pa.ArrowException, ValueError) as exc:
        problem = f"the event metrics cannot be computed: {exc}"
        checks = [Check(EVENT_GATES[key], False, None, limits[key], problem) for key in gates]
        return EventVerdict(dict(NO_EVENT_METRICS), checks or [_failed(problem)], None)
    summary = {
        **found.recorded(),
        "falseAlarms": found.false_alarms,
        "assets": found.assets,
        "assetDays": found.asset_days,
        **scope.as_dict(),
    }
    checks = [_gate(key, found, float(limits[key])) for key in gates]
    return EventVerdict(found.recorded(), checks, summary)


def _measure(
    scope: EventScope, holdout: HoldoutFile, scored: Scored, threshold: float, window: bool
) -> EventMetrics:
    assets, times = example_keys(holdout, window)
    if len(assets) != scored.rows:
        raise ValueError(f"the holdout has {len(assets)} examples but {scored.rows} were scored")
    events = read_events(scope.events_path)
    return event_metrics(
        assets,
        times,
        scored.labels,
        alarms_of(scored, threshold),
        events.column(ASSET_COLUMN),
        events.column(TIMESTAMP_COLUMN),
        split_at=scope.split_at,
        end=scope.end,
        horizon_s=scope.horizon_s,
    )


def read_events(path: Path) -> pa.Table:
    """The failure events extract wrote: asset_id and timestamp."""
    fd = open_regular(Path(path), MAX_EVENTS_BYTES, "the failure events")
    with os.fdopen(fd, "rb") as handle:
        return pq.read_table(handle, columns=[ASSET_COLUMN, TIMESTAMP_COLUMN])


def _gate(key: str, found: EventMetrics, limit: float) -> Check:
    name = EVENT_GATES[key]
    if key == MIN_RECALL:
        value = found.event_recall
        if value is None:
            detail = (
                f"no failure of the holdout's {found.assets} assets has its whole horizon inside "
                f"the holdout, so event recall cannot be judged against thresholds.{MIN_RECALL} "
                f"{limit:g}; widen the data range or validationSplit"
            )
            return Check(name, False, None, limit, detail)
        counts = f"{found.events_caught} of {found.events_total} holdout failures caught"
        if value >= limit:
            return Check(name, True, value, limit, f"event recall {value:.3f} ({counts})")
        detail = f"event recall {value:.3f} ({counts}) is below thresholds.{MIN_RECALL} {limit:g}"
        return Check(name, False, value, limit, detail)
    rate = found.false_alarms_per_asset_day
    counts = (
        f"{found.false_alarms} false alarms over {found.assets} assets x "
        f"{found.asset_days / max(found.assets, 1):.1f} days"
    )
    if rate is not None and rate <= limit:
        return Check(name, True, rate, limit, f"{rate:.3g} false alarms per asset-day ({counts})")
    shown = "undefined" if rate is None else f"{rate:.3g}"
    detail = (
        f"{shown} false alarms per asset-day ({counts}) is above "
        f"thresholds.{MAX_FALSE_ALARMS} {limit:g}"
    )
    return Check(name, False, rate, limit, detail)


def _no_events(key: str) -> Check:
    detail = (
        f"thresholds.{key} is set but the run has no failure events (events.parquet, written "
        "by extract when schemaConfig.labels is set); train again with labels, or remove the gate"
    )
    return Check(EVENT_GATES[key], False, None, None, detail)


def _failed(problem: str) -> Check:
    return Check("events", False, None, None, problem)


def alarms_of(scored: Scored, threshold: float) -> np.ndarray:
    """The model's own alarms, or its probabilities at `threshold` where it has no alarm."""
    alarms = scored.alarms.get("model")
    return alarms if alarms is not None else decisions(scored.scores["model"], threshold)
