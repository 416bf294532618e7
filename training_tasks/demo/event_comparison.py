"""A window model against a model on single readings, on the same failures and at the same
false-alarm rate, as `make run` shows it.

Each version's validation records its event metrics at the version's own decision threshold, and
one threshold gives two models different false-alarm rates: a model that alarms more also catches
more. So the single-reading model is also judged at the window model's rate: on its own holdout
scores, its threshold is lowered from the top for as long as it raises no more false alarms per
asset-day than the window model did. That is the planner's question: at the alarms a plant can
afford, which model warns of more failures, and how early.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from training_tasks import fields as f
from training_tasks.errors import ConfigError
from training_tasks.stages.validate.events import EventMetrics, event_metrics

VALIDATION_FILE = "validation.json"
CHUNK_ROWS = 65_536
MAX_THRESHOLDS = 400  # candidate thresholds tried: quantiles of the scores
# Per example: asset id, time, label and the model's probability.
Scored = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class EventScore:
    """Failures caught of those the holdout can judge, the median hours from the first alarm to
    the failure, and false alarms per asset-day, at a decision threshold."""

    caught: int
    total: int
    lead_h: float | None
    false_alarms_per_asset_day: float | None
    threshold: float | None


@dataclass(frozen=True)
class Scope:
    """The range a version's event metrics were measured in, as its validation recorded it."""

    events_path: Path
    split_at: datetime
    end: datetime
    horizon_s: float


def recorded_score(metrics: Mapping[str, Any]) -> EventScore | None:
    """The event metrics a version's validation recorded (camelCase), None when it has none."""
    if metrics.get("eventsTotal") is None:
        return None
    return EventScore(
        caught=int(metrics["eventsCaught"]),
        total=int(metrics["eventsTotal"]),
        lead_h=metrics.get("medianLeadTimeH"),
        false_alarms_per_asset_day=metrics.get("falseAlarmsPerAssetDay"),
        threshold=metrics.get("decisionThreshold"),
    )


def recorded_scope(artifacts: Path) -> Scope | None:
    """Where and over which range the version in `artifacts` was judged on events, from its
    validation.json; None when it was not (no failure events, or no validation)."""
    try:
        doc = json.loads((artifacts / VALIDATION_FILE).read_text(encoding="utf-8"))
        events = doc["events"]
        return Scope(
            events_path=Path(events["eventsPath"]),
            split_at=f.timestamp(events["splitAt"], "splitAt"),
            end=f.timestamp(events["end"], "end"),
            horizon_s=float(events["horizonHours"]) * 3600,
        )
    except (OSError, ValueError, KeyError, TypeError, ConfigError):
        return None


def at_false_alarm_rate(rate: float, scored: Scored, events: pa.Table, scope: Scope) -> EventScore:
    """The examples' scores judged at the lowest threshold reached, from the top, before the false
    alarms per asset-day pass `rate` (threshold None: the highest score already does)."""
    assets, times, labels, scores = scored

    def measure(threshold: float) -> EventMetrics:
        return event_metrics(
            assets,
            times,
            labels,
            scores >= threshold,
            events.column("asset_id"),
            events.column("timestamp"),
            split_at=scope.split_at,
            end=scope.end,
            horizon_s=scope.horizon_s,
        )

    # The threshold comes down from the top, as an engineer lowers it, until the false alarms
    # pass the rate: lower ones only catch more. Going on past that point would reach thresholds
    # where a machine alarms without pause, one episode that holds a failure and so counts as
    # no false alarm at all.
    best: tuple[float | None, EventMetrics] = (None, measure(np.inf))  # no alarm at all
    for threshold in _candidates(scores)[::-1]:
        found = measure(threshold)
        if (found.false_alarms_per_asset_day or 0.0) > rate:
            break
        best = (float(threshold), found)
    threshold, found = best
    return EventScore(
        caught=found.events_caught,
        total=found.events_total,
        lead_h=found.median_lead_time_h,
        false_alarms_per_asset_day=found.false_alarms_per_asset_day,
        threshold=threshold,
    )


def _candidates(scores: np.ndarray) -> np.ndarray:
    """Thresholds to try: quantiles of the scores, denser among the high ones, where the alarms
    a plant can afford are decided."""
    levels = 1.0 - np.geomspace(1.0, 1e-5, MAX_THRESHOLDS)
    return np.unique(np.quantile(scores, levels)) if len(scores) else np.empty(0)


@dataclass(frozen=True)
class Holdout:
    """A single-reading model's holdout file, the model, and the columns it reads."""

    path: Path
    model_path: Path
    features: Sequence[str]
    target: str

    def scored(self) -> Scored:
        """Asset ids, times, labels and the model's failure probabilities, row by row."""
        import onnxruntime as ort  # only when a comparison is shown

        session = ort.InferenceSession(str(self.model_path), providers=["CPUExecutionProvider"])
        columns: list[list[np.ndarray]] = [[], [], [], []]
        source = pq.ParquetFile(self.path)
        try:
            for batch in source.iter_batches(CHUNK_ROWS):
                values = [batch.column(c).to_numpy(zero_copy_only=False) for c in self.features]
                inputs = np.column_stack(values).astype(np.float32)
                (probability,) = session.run(["failure_probability"], {"input": inputs})
                for out, value in zip(columns, self._keys(batch, probability), strict=True):
                    out.append(value)
        finally:
            source.close()
        return tuple(np.concatenate(c) if c else np.empty(0) for c in columns)  # type: ignore[return-value]

    def _keys(self, batch: Any, probability: Any) -> tuple[np.ndarray, ...]:
        return (
            batch.column("asset_id").to_numpy(zero_copy_only=False),
            batch.column("timestamp").to_numpy(zero_copy_only=False),
            batch.column(self.target).to_numpy(zero_copy_only=False),
            np.asarray(probability, dtype=np.float64),
        )
