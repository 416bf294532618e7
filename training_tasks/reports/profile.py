"""A training set's profile (rows, positives, time range, per-feature summary and percentiles)
and the population stability index (PSI) of each feature between two profiles.

Profiles are kept in the artifacts, so drift against a version whose data is long deleted is
still measured: each feature keeps its 101 percentiles, from which the share of rows in any bin
is read back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PERCENTILES = np.linspace(0.0, 100.0, 101)
# Percentiles of this many evenly spaced rows are within a fraction of a percent of the whole.
MAX_PROFILE_ROWS = 50_000
PSI_BINS = 10
# An empty bin would make PSI infinite; this share stands in for it (the usual convention).
PSI_FLOOR = 1e-4
PSI_MODERATE, PSI_SIGNIFICANT = 0.1, 0.25
TIME_COLUMN = "timestamp"


def profile_parquet(path: Path, features: Sequence[str], target: str) -> dict[str, Any]:
    """Rows, positives, time range and a per-feature summary of a Parquet data set."""
    parquet = pq.ParquetFile(path)
    try:
        rows = parquet.metadata.num_rows
        step = max(1, math.ceil(rows / MAX_PROFILE_ROWS))
        names = set(parquet.schema_arrow.names)
        doc: dict[str, Any] = {"rows": rows, "features": {}, "columns": []}
        for name in features:  # one column at a time: memory stays one column's
            if name in names:
                doc["features"][name] = feature_summary(_column(parquet, name), step)
                doc["columns"].append(name)
        if target in names:
            labels = pc.cast(_column(parquet, target), pa.int64())
            doc["positives"] = int(pc.sum(labels).as_py() or 0)
        if TIME_COLUMN in names:
            doc.update(time_range(_column(parquet, TIME_COLUMN)))
    finally:
        parquet.close()
    return doc


def _column(parquet: pq.ParquetFile, name: str) -> pa.ChunkedArray:
    return parquet.read(columns=[name]).column(name)


def time_range(column: pa.ChunkedArray) -> dict[str, str | None]:
    """The first and last timestamp of a column, as ISO 8601 text."""
    bounds = pc.min_max(column).as_py()
    start, end = bounds["min"], bounds["max"]
    return {
        "start": None if start is None else start.isoformat(),
        "end": None if end is None else end.isoformat(),
    }


def feature_summary(column: pa.ChunkedArray, step: int = 1) -> dict[str, Any]:
    """Count, missing values, mean, standard deviation and percentiles of one numeric column."""
    values = pc.cast(column, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    present = values[np.isfinite(values)]
    summary: dict[str, Any] = {"rows": len(values), "missing": int(len(values) - len(present))}
    if not len(present):
        return {**summary, "mean": None, "std": None, "percentiles": None}
    sample = np.sort(present[::step])
    return {
        **summary,
        "mean": float(present.mean()),
        "std": float(present.std()),
        "percentiles": [float(v) for v in np.percentile(sample, PERCENTILES, method="linear")],
    }


def psi(reference: Mapping[str, Any], current: Mapping[str, Any]) -> float | None:
    """PSI of a feature between two summaries, on the reference's deciles plus a missing bin."""
    if reference.get("percentiles") is None or current.get("percentiles") is None:
        return None
    ref_q = np.asarray(reference["percentiles"], dtype=np.float64)
    edges = np.unique(ref_q[np.arange(1, PSI_BINS) * (len(ref_q) - 1) // PSI_BINS])
    expected = _shares(reference, edges)
    actual = _shares(current, edges)
    expected, actual = np.maximum(expected, PSI_FLOOR), np.maximum(actual, PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def drift_level(value: float | None) -> str:
    """The usual reading of a PSI value."""
    if value is None:
        return "unknown"
    if value < PSI_MODERATE:
        return "stable"
    return "moderate" if value < PSI_SIGNIFICANT else "significant"


def drift(reference: Mapping[str, Any], current: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per feature of the current profile: its PSI against the reference and how to read it."""
    ref_features = reference.get("features", {})
    found = []
    for name, summary in current.get("features", {}).items():
        value = psi(ref_features[name], summary) if name in ref_features else None
        level = drift_level(value) if name in ref_features else "new feature"
        found.append({"feature": name, "psi": value, "level": level})
    return sorted(found, key=lambda row: -1.0 if row["psi"] is None else -row["psi"])


def _shares(summary: Mapping[str, Any], edges: np.ndarray) -> np.ndarray:
    """Shares of rows in (-inf, e1], (e1, e2], ..., (ek, inf) and missing, from percentiles."""
    points = np.asarray(summary["percentiles"], dtype=np.float64)
    levels = PERCENTILES / 100.0
    # For tied percentiles keep the highest level: the CDF is right-continuous at a repeated value.
    values, last = np.unique(points[::-1], return_index=True)
    below = levels[len(points) - 1 - last]
    cdf = np.where(
        edges < values[0], 0.0, np.where(edges >= values[-1], 1.0, np.interp(edges, values, below))
    )
    bins = np.diff(np.r_[0.0, cdf, 1.0])
    rows = max(1, int(summary["rows"]))
    missing = int(summary["missing"]) / rows
    return np.r_[bins * (1.0 - missing), missing]
