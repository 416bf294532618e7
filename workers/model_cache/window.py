"""The window a window model takes: read from its metadata, checked against its input, and the
check of the windows a caller sends.

A window model's input is `window`, float32 [N, length, columns]: for each example the last
`length` buckets of `interval` of one asset, oldest first, the columns in the order of its
metadata `window`. The graph computes the statistics itself, so a caller sends raw buckets.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from workers.model_cache.errors import ModelRejected

WINDOW_INPUT = "window"
WINDOW_KEY = (
    "window"  # metadata: JSON {"interval", "intervalSeconds", "length", "columns", "stats"}
)
WINDOW_FEATURES_KEY = "window_feature_columns"  # metadata: JSON names the trees see first
# Values in one window (4 MiB of float32), far above any trained one (2,000 buckets x 64 columns):
# a larger claim in the metadata would make the warm-up allocate it.
MAX_WINDOW_VALUES = 1 << 20


@dataclass(frozen=True)
class WindowInput:
    """What one window of a window model holds: `length` buckets of `interval`, `columns`."""

    interval: str
    interval_s: int
    length: int
    columns: tuple[str, ...]
    stats: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, int]:
        """The shape of one window: (length, columns)."""
        return self.length, len(self.columns)

    def feature_names(self) -> list[str]:
        """The statistics the graph computes, in its order: `<column>__<stat>`."""
        return [f"{column}__{stat}" for column in self.columns for stat in self.stats]

    def to_wire(self) -> dict[str, Any]:
        """The camelCase JSON a caller reads to know what to send (as in the model's metadata)."""
        return {
            "interval": self.interval,
            "intervalSeconds": self.interval_s,
            "length": self.length,
            "columns": list(self.columns),
            "stats": list(self.stats),
        }

    def describe(self) -> str:
        """One line saying what a window is, for error messages."""
        return (
            f"{self.length} buckets of {self.interval}, oldest first, each with the columns "
            f"{list(self.columns)}"
        )


def window_of(metadata: Mapping[str, str], path: Path) -> WindowInput | None:
    """The window of a model's metadata, None for a model on single readings; ModelRejected if
    the metadata is malformed."""
    raw = metadata.get(WINDOW_KEY)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        doc = None
    bad = f"model file {path} has malformed metadata {WINDOW_KEY}"
    hint = (
        'it must be JSON {"interval", "intervalSeconds", "length", "columns", "stats"}; export '
        "the model again with the training script"
    )
    if not isinstance(doc, dict):
        raise ModelRejected(f"{bad} ({raw[:80]!r}); {hint}")
    length, interval_s = doc.get("length"), doc.get("intervalSeconds")
    columns, stats = _names(doc.get("columns")), _names(doc.get("stats"))
    if (
        not _whole(length)
        or not _whole(interval_s)
        or not isinstance(doc.get("interval"), str)
        or columns is None
        or stats is None
    ):
        raise ModelRejected(f"{bad} ({raw[:200]}); {hint}")
    if length * len(columns) > MAX_WINDOW_VALUES:
        raise ModelRejected(
            f"model file {path} takes windows of {length} x {len(columns)} values, more than the "
            f"{MAX_WINDOW_VALUES} this cache takes; train it on a shorter window or fewer columns"
        )
    return WindowInput(doc["interval"], interval_s, length, columns, stats)


def check_window_model(
    window: WindowInput | None,
    input_name: str,
    shape: Sequence[Any],
    metadata: Mapping[str, str],
    feature_columns: tuple[str, ...],
    path: Path,
) -> None:
    """Refuse a model whose input and metadata disagree on taking windows, or on their shape."""
    takes_window = input_name == WINDOW_INPUT or len(shape) == 3
    if window is None:
        if takes_window:
            raise ModelRejected(
                f"model file {path} takes input {input_name!r} of shape {list(shape)}, a window, "
                f"but has no {WINDOW_KEY} metadata saying its length and columns; export the "
                "model again with the training script"
            )
        return
    fits = len(shape) == 3 and all(
        not isinstance(got, int) or got == want
        for got, want in zip(shape[1:], window.shape, strict=True)
    )
    if not fits:
        raise ModelRejected(
            f"model file {path} has metadata {WINDOW_KEY} for windows [N, {window.length}, "
            f"{len(window.columns)}], but takes input {input_name!r} of shape {list(shape)}; "
            f"export the model again (input {WINDOW_INPUT!r} [N, {window.length}, "
            f"{len(window.columns)}])"
        )
    if feature_columns != window.columns:
        raise ModelRejected(
            f"model file {path} has feature_columns {list(feature_columns)}, but its window "
            f"holds the columns {list(window.columns)}; export the model again"
        )
    _check_feature_names(window, metadata, path)


def _check_feature_names(window: WindowInput, metadata: Mapping[str, str], path: Path) -> None:
    raw = metadata.get(WINDOW_FEATURES_KEY)
    if raw is None:
        return
    try:
        names = json.loads(raw)
    except (ValueError, RecursionError):
        names = None
    if names != window.feature_names():
        raise ModelRejected(
            f"model file {path} has metadata {WINDOW_FEATURES_KEY} {raw[:200]}, not the "
            f"statistics of its window {window.feature_names()}; export the model again"
        )


def as_windows(
    values: np.ndarray, window: WindowInput, organization_id: str, version: str
) -> np.ndarray:
    """`values` as windows [N, length, columns] (one window [length, columns] gets N = 1);
    ValueError naming the expected shape, or the window holding NaN or infinity."""
    if values.shape == window.shape:
        values = values[np.newaxis]
    elif values.ndim != 3 or values.shape[1:] != window.shape:
        raise ValueError(
            f"windows must be [n_windows, {window.length}, {len(window.columns)}] "
            f"({window.describe()}; organization {organization_id}, version {version}); got "
            f"shape {list(values.shape)}"
        )
    # NaN * 0 and inf * 0 are NaN, any other value * 0 is 0: one dot product with zeros finds a
    # gap in about a third of the time np.isfinite(values).all() takes.
    if not math.isfinite(np.vdot(values, np.zeros(values.size, np.float32))):
        raise ValueError(_not_finite(values, window, organization_id, version))
    return values


def _not_finite(values: np.ndarray, window: WindowInput, organization_id: str, version: str) -> str:
    bad = ~np.isfinite(values)
    index = int(np.flatnonzero(bad.any(axis=(1, 2)))[0])
    columns = [c for j, c in enumerate(window.columns) if bad[index, :, j].any()]
    return (
        f"window {index} holds NaN or infinity in {columns} (organization {organization_id}, "
        f"version {version}); the model was trained on windows without gaps: forward-fill a "
        "short gap with the last value, or skip the asset until it has a whole window"
    )


def _whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _names(value: object) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        return None
    return tuple(value)
