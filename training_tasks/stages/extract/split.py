"""The time split with its purge gap: where training examples end and the holdout begins.

split_at = start + (end - start) * (1 - validationSplit). Holdout examples have time >= split_at;
training examples time < split_at - purge gap, where the gap is the label horizon plus one window,
so no training example's label or window reaches into the holdout's. A range that leaves no room
for a training example or a holdout example is refused before any row is read, with the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from training_tasks import fields as f
from training_tasks.config.org import SchemaConfig
from training_tasks.config.training import TrainingConfig
from training_tasks.errors import ExtractError


@dataclass(frozen=True)
class Split:
    """The holdout's first moment and the end (exclusive) of the training examples."""

    split_at: datetime
    train_end: datetime
    gap_s: float


def plan_split(config: TrainingConfig, schema: SchemaConfig) -> Split:
    """The split of `config`'s range, refused when a part could hold no example."""
    split_at = config.start + (config.end - config.start) * (1 - config.validation_split)
    gap_s = float(config.purge_gap_s)
    split = Split(split_at, split_at - timedelta(seconds=gap_s), gap_s)
    windows = config.windows
    if windows is None:
        first_train, first_holdout = config.start, split_at
        need = "no time at all for training readings"
    else:
        interval = windows.interval_s
        # The first bucket that can close a window: `length` buckets from the one holding start.
        buckets = math.floor(config.start.timestamp() / interval) + windows.length
        first_train = _moment(buckets * interval, config.start)
        first_holdout = _moment(math.ceil(split_at.timestamp() / interval) * interval, split_at)
        need = f"no room for one window of {_hours(windows.span_s)} from the range's start"
    if first_train >= split.train_end:
        raise ExtractError(_refusal(config, schema, split, f"which leaves {need}"))
    if first_holdout >= config.end:
        raise ExtractError(
            _refusal(config, schema, split, "and the holdout holds no whole bucket to test on")
        )
    return split


def _refusal(config: TrainingConfig, schema: SchemaConfig, split: Split, problem: str) -> str:
    span_s = (config.end - config.start).total_seconds()
    holdout_s = (config.end - split.split_at).total_seconds()
    return (
        f"organization {config.organization_id}: dataRange {f.iso(config.start)} to "
        f"{f.iso(config.end)} ({_hours(span_s)}) with validationSplit {config.validation_split} "
        f"starts the holdout at {f.iso(split.split_at)} ({_hours(holdout_s)} of holdout); the "
        f"purge gap before it is {_hours(split.gap_s)} ({_gap_parts(config, schema)}), so "
        f"training examples must end before {f.iso(split.train_end)}, {problem}. Widen "
        "dataRange, lower validationSplit, or shorten schemaConfig.labels.horizonHours or the "
        "window (windows.length x windows.interval)"
    )


def _gap_parts(config: TrainingConfig, schema: SchemaConfig) -> str:
    """How the gap is made: the label horizon and the window's span, each with its numbers."""
    parts = []
    if schema.labels is not None:
        parts.append(f"schemaConfig.labels.horizonHours {schema.labels.horizon_hours:g}")
    if config.windows is not None:
        w = config.windows
        parts.append(
            f"windows length {w.length} x interval {w.interval} = {_hours(w.span_s)} of window"
        )
    return " + ".join(parts) or "no labels horizon and no window"


def _moment(epoch_s: float, like: datetime) -> datetime:
    return datetime.fromtimestamp(epoch_s, like.tzinfo)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.4g} h"
