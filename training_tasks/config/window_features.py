"""Per-asset windows (`mlModelConfig.windows`): the checked spec and the reference statistics.

A window model sees, for each example, the last `length` buckets of `interval` of its asset's
readings (the mean per bucket, gaps forward-filled up to `maxGap`), oldest first, and computes
per column the statistics `stats` in its own graph. `window_statistics` is the float64 reference
the graph is checked against; the training script holds the same arithmetic (it imports nothing
from the service).

The statistics are population ones: std divides by length, slope is the least-squares change
per bucket (0 for a window of one bucket), delta is last - first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from training_tasks import fields as f
from training_tasks.errors import ConfigError

WINDOW_KEYS = ("interval", "length", "columns", "stats", "maxGap")
WINDOW_STATS = ("mean", "std", "min", "max", "slope", "last", "delta")
MAX_LENGTH = 2000  # buckets; the graph's matrices grow with it
MAX_COLUMNS = 64
MAX_INTERVAL_S = 7 * 86400
DEFAULT_GAP_INTERVALS = 3
_UNITS = {"s": 1, "min": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^([1-9][0-9]{0,6})(s|min|h|d)$")


def parse_duration(value: object, field_name: str) -> int:
    """Whole seconds of a duration written as "30s", "10min", "2h" or "1d"."""
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(
            field_name,
            f'must be a duration such as "30s", "10min", "2h" or "1d", got {f.shown(value)}',
        )
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class WindowSpec:
    """A checked window spec; `*_s` in seconds, the texts kept as the user gave them."""

    interval: str
    interval_s: int
    length: int
    columns: tuple[str, ...]
    stats: tuple[str, ...]
    max_gap: str
    max_gap_s: int

    @property
    def span_s(self) -> int:
        """The time one window covers."""
        return self.length * self.interval_s

    def feature_names(self) -> list[str]:
        """The statistics' names in graph order: each column, then each statistic of it."""
        return [f"{column}__{stat}" for column in self.columns for stat in self.stats]

    def to_wire(self) -> dict[str, Any]:
        """The camelCase JSON shape, with the durations also in seconds."""
        return {
            "interval": self.interval,
            "intervalSeconds": self.interval_s,
            "length": self.length,
            "columns": list(self.columns),
            "stats": list(self.stats),
            "maxGap": self.max_gap,
            "maxGapSeconds": self.max_gap_s,
        }

    @classmethod
    def from_wire(cls, doc: Mapping[str, Any]) -> WindowSpec:
        """Rebuild a stored spec (the seconds are recomputed from the texts)."""
        return check_windows({k: doc[k] for k in WINDOW_KEYS if k in doc}, "windows")


def check_windows(value: object, field_name: str) -> WindowSpec:
    """Check a `windows` object: interval, length, columns, and optionally stats and maxGap."""
    spec = f.require_mapping(value, field_name)
    f.reject_unknown(spec, WINDOW_KEYS, field_name)
    for key in ("interval", "length", "columns"):
        if key not in spec:
            raise ConfigError(f"{field_name}.{key}", "is required")
    interval_s = parse_duration(spec["interval"], f"{field_name}.interval")
    if interval_s > MAX_INTERVAL_S:
        raise ConfigError(f"{field_name}.interval", "must be at most 7d")
    length = f.integer(spec["length"], f"{field_name}.length", 1, MAX_LENGTH)
    columns = _names(spec["columns"], f"{field_name}.columns", None)
    if len(columns) > MAX_COLUMNS:
        raise ConfigError(f"{field_name}.columns", f"names at most {MAX_COLUMNS} columns")
    stats = _names(spec.get("stats", list(WINDOW_STATS)), f"{field_name}.stats", WINDOW_STATS)
    gap = spec.get("maxGap")
    gap_s = (
        interval_s * DEFAULT_GAP_INTERVALS
        if gap is None
        else parse_duration(gap, f"{field_name}.maxGap")
    )
    return WindowSpec(
        interval=spec["interval"],
        interval_s=interval_s,
        length=length,
        columns=columns,
        stats=stats,
        max_gap=f"{gap_s}s" if gap is None else str(gap),
        max_gap_s=gap_s,
    )


def _names(value: object, field_name: str, allowed: Sequence[str] | None) -> tuple[str, ...]:
    names = f.string_list(value, field_name)
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(field_name, f"names {', '.join(map(f.shown, twice))} more than once")
    unknown = [n for n in names if allowed is not None and n not in allowed]
    if unknown:
        raise ConfigError(
            field_name,
            f"has unknown {', '.join(map(f.shown, unknown))}; known: {list(allowed or [])}",
        )
    for name in names:
        if "__" in name and allowed is None:
            raise ConfigError(
                field_name, f"{f.shown(name)}: a window column name may not contain '__'"
            )
    return names


def slope_weights(length: int) -> npt.NDArray[np.float64]:
    """w with w @ x = the least-squares slope of x per bucket (all zero for one bucket)."""
    centred = np.arange(length, dtype=np.float64) - (length - 1) / 2
    spread = float(centred @ centred)
    return centred / spread if spread else centred


def window_statistics(windows: npt.ArrayLike, spec: WindowSpec) -> npt.NDArray[np.float32]:
    """The statistics of each window [N, length, columns], as [N, columns * stats] float32.

    Computed in float64 and rounded once, the reference the in-graph features are checked against.
    """
    given = np.asarray(windows)
    shape = (spec.length, len(spec.columns))
    if given.ndim != 3 or given.shape[1:] != shape:
        raise ValueError(f"windows must be [N, {shape[0]}, {shape[1]}], not {list(given.shape)}")
    # [N, columns, length], contiguous: every reduction then runs over adjacent values (about
    # seven times faster than reducing across the middle axis of the given layout).
    x = np.ascontiguousarray(given.transpose(0, 2, 1), dtype=np.float64)
    finite = np.asarray(np.isfinite(x).all(axis=(0, 2)))
    bad = [c for j, c in enumerate(spec.columns) if not finite[j]]
    if bad:
        raise ValueError(f"windows of {bad} hold NaN or infinity: forward-fill gaps or leave out")
    mean = x.mean(axis=2)
    centred = x - mean[:, :, None]
    computed: dict[str, Callable[[], npt.NDArray[np.float64]]] = {
        "mean": lambda: mean,
        "std": lambda: np.sqrt((centred**2).mean(axis=2)),
        "min": lambda: x.min(axis=2),
        "max": lambda: x.max(axis=2),
        "slope": lambda: centred @ slope_weights(shape[0]),
        "last": lambda: x[:, :, -1],
        "delta": lambda: x[:, :, -1] - x[:, :, 0],
    }
    stats = np.stack([computed[stat]() for stat in spec.stats], axis=2)  # [N, C, S]
    return stats.reshape(len(x), -1).astype(np.float32)
