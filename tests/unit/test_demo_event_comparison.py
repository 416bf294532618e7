"""The demo's comparison of two models on failure events: the single-reading model is judged at
the threshold that catches the most failures without more false alarms than the window model."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from training_tasks.demo.event_comparison import (
    Scope,
    at_false_alarm_rate,
    recorded_scope,
    recorded_score,
)

SPLIT_AT = datetime(2026, 3, 1, tzinfo=UTC)
END = SPLIT_AT + timedelta(days=10)
FAILURES = {"press-001": SPLIT_AT + timedelta(days=5), "press-002": SPLIT_AT + timedelta(days=8)}


def hourly_scores() -> tuple[np.ndarray, ...]:
    """Two machines, hourly: press-001 scores 0.9 over the 10 h before its failure, press-002
    only 0.6 over the 5 h before its own, each has three lone 0.7 blips far from any, and below
    0.5 the scores are noise."""
    rng = np.random.default_rng(3)
    hours = np.arange(10 * 24)
    times = np.datetime64(SPLIT_AT.replace(tzinfo=None), "us") + hours * np.timedelta64(1, "h")
    assets, stamps, labels, scores = [], [], [], []
    for asset, failed_at in FAILURES.items():
        to_failure = (np.datetime64(failed_at.replace(tzinfo=None), "us") - times) / np.timedelta64(
            1, "h"
        )
        before = (to_failure > 0) & (to_failure <= 24)
        high = 0.9 if asset == "press-001" else 0.6
        warned = 10 if asset == "press-001" else 5
        noise = rng.uniform(0.0, 0.5, len(hours))
        score = np.where((to_failure > 0) & (to_failure <= warned), high, noise)
        score[[20, 70, 200]] = 0.7  # false alarms: far from the failure
        assets += [asset] * len(hours)
        stamps.append(times)
        labels.append(before.astype(np.int8))
        scores.append(score)
    return np.array(assets), np.concatenate(stamps), np.concatenate(labels), np.concatenate(scores)


EVENTS = pa.table(
    {
        "asset_id": list(FAILURES),
        "timestamp": pa.array(list(FAILURES.values()), pa.timestamp("us", tz="UTC")),
    }
)
SCOPE = Scope(Path("events.parquet"), SPLIT_AT, END, horizon_s=24 * 3600)


def test_without_false_alarms_to_spare_only_the_clearest_warning_is_caught() -> None:
    score = at_false_alarm_rate(0.0, hourly_scores(), EVENTS, SCOPE)
    assert (score.caught, score.total) == (1, 2)
    assert score.lead_h == 10.0
    assert score.false_alarms_per_asset_day == 0.0
    assert score.threshold is not None and 0.7 < score.threshold <= 0.9


def test_with_the_blips_false_alarms_allowed_both_failures_are_caught_but_not_the_noise() -> None:
    rate = 6 / (2 * 10)  # six blips over two machines and ten days
    score = at_false_alarm_rate(rate, hourly_scores(), EVENTS, SCOPE)
    assert (score.caught, score.total) == (2, 2)
    assert score.false_alarms_per_asset_day == rate
    assert score.lead_h == 7.5  # the median of 10 h and 5 h
    assert score.threshold is not None and score.threshold >= 0.5


def test_no_alarm_at_all_is_the_answer_when_even_one_alarm_is_too_many() -> None:
    assets, times, labels, scores = hourly_scores()
    scores = np.where(labels == 1, 0.1, scores)  # no sign of the failures; the blips remain
    score = at_false_alarm_rate(0.0, (assets, times, labels, scores), EVENTS, SCOPE)
    assert (score.caught, score.threshold, score.false_alarms_per_asset_day) == (0, None, 0.0)


def test_what_validation_recorded_is_read_back_for_the_comparison(tmp_path: Path) -> None:
    scope = {"eventsPath": "/data/events.parquet", "splitAt": "2026-03-01T00:00:00Z"}
    doc = {"events": {**scope, "end": "2026-03-11T00:00:00Z", "horizonHours": 24}}
    (tmp_path / "validation.json").write_text(json.dumps(doc))
    assert recorded_scope(tmp_path) == Scope(
        Path("/data/events.parquet"), SPLIT_AT, END, 24 * 3600.0
    )
    assert recorded_scope(tmp_path / "missing") is None
    metrics = {
        "eventsCaught": 30,
        "eventsTotal": 38,
        "medianLeadTimeH": 12.5,
        "falseAlarmsPerAssetDay": 0.06,
        "decisionThreshold": 0.8,
    }
    recorded = recorded_score(metrics)
    assert recorded is not None and (recorded.caught, recorded.total) == (30, 38)
    assert recorded_score({"eventsTotal": None}) is None
