"""The holdout of a window model: one row per (asset, bucket), read as the window of each example.

Rows come grouped by asset in bucket order, so the window of example row i is rows
[i - length + 1, i] of the file: a sliding view over each chunk (plus the rows the chunk before
left over) gives every example's window without per-asset logic. That an example's window is
`length` consecutive buckets of one asset is still checked, cheaply, on its first and last row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.lib.stride_tricks import sliding_window_view

from training_tasks.config.window_features import WindowSpec
from training_tasks.stages.validate.holdout import (
    CHUNK_ROWS,
    HoldoutFile,
    HoldoutProblem,
    Reader,
    is_number,
    labels_of,
    to_matrix,
)
from training_tasks.stages.validate.model_checks import BATCH_ROWS

TIMESTAMP_COLUMN = "timestamp"
ASSET_COLUMN = "asset_id"
EXAMPLE_COLUMN = "example"
# The windows of one chunk stay under this: a long window of many columns reads fewer rows at once.
WINDOW_BUDGET_BYTES = 32 * 1024 * 1024
MIN_CHUNK_ROWS = 64  # the widest spec (2000 buckets of 64 columns) still reads 32 MB at once
US_PER_S = 1_000_000


@dataclass(frozen=True)
class WindowHoldout:
    """An opened window holdout; its chunks are (windows [n, length, columns], labels [n])."""

    path: Path
    parquet: pq.ParquetFile
    spec: WindowSpec
    target: str
    sample: np.ndarray  # the first examples' windows, for warm-up and latency

    @property
    def features(self) -> list[str]:
        """The raw columns of each window, in its order."""
        return list(self.spec.columns)

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The windows and labels of the examples, in file order; HoldoutProblem if unreadable."""
        return _windows(self.parquet, self.path, self.spec, self.target)

    def close(self) -> None:
        """Close the file the holdout is read from."""
        self.parquet.close(force=True)


def window_reader(spec: WindowSpec, target: str) -> Reader:
    """Reads a verified holdout file as windows of `spec`."""

    def read(handle: BinaryIO, path: Path) -> tuple[HoldoutFile | None, str]:
        try:
            parquet = pq.ParquetFile(handle)
            problem = _schema_problem(parquet.schema_arrow, path, spec, target)
            if problem:
                return None, problem
            sample = _first_windows(_windows(parquet, path, spec, target), spec)
        except HoldoutProblem as exc:
            return None, str(exc)
        except (OSError, pa.ArrowException) as exc:
            return None, f"the holdout {path} cannot be read: {exc}"
        return WindowHoldout(path, parquet, spec, target, sample), ""

    return read


def _schema_problem(schema: pa.Schema, path: Path, spec: WindowSpec, target: str) -> str:
    numbers = [*spec.columns, target, EXAMPLE_COLUMN]
    wanted = [TIMESTAMP_COLUMN, ASSET_COLUMN, *numbers]
    missing = [name for name in wanted if name not in schema.names]
    if missing:
        return (
            f"the holdout {path} lacks the columns {missing} of a window holdout; train again "
            "to extract one for the run's windows"
        )
    for name in numbers:
        if not is_number(schema.field(name).type):
            return f"column {name!r} of the holdout is {schema.field(name).type}, not a number"
    if not pa.types.is_timestamp(schema.field(TIMESTAMP_COLUMN).type):
        return f"column {TIMESTAMP_COLUMN!r} of the holdout is not a timestamp"
    return ""


def chunk_rows(spec: WindowSpec) -> int:
    """Rows read at once, so that their windows stay within WINDOW_BUDGET_BYTES."""
    per_row = spec.length * len(spec.columns) * 4
    return int(min(CHUNK_ROWS, max(MIN_CHUNK_ROWS, WINDOW_BUDGET_BYTES // per_row)))


@dataclass(frozen=True)
class _Rows:
    """Consecutive rows of the file: bucket end (us), asset, the window columns."""

    times: np.ndarray
    assets: pa.Array
    values: np.ndarray

    def __add__(self, other: _Rows) -> _Rows:
        return _Rows(
            np.concatenate([self.times, other.times]),
            pa.concat_arrays([self.assets, other.assets]),
            np.concatenate([self.values, other.values]),
        )

    def tail(self, rows: int) -> _Rows:
        start = max(0, len(self.times) - rows)
        return _Rows(self.times[start:], self.assets[start:], self.values[start:])


def _windows(
    parquet: pq.ParquetFile, path: Path, spec: WindowSpec, target: str
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    names = [TIMESTAMP_COLUMN, ASSET_COLUMN, *spec.columns, target, EXAMPLE_COLUMN]
    batches = parquet.iter_batches(batch_size=chunk_rows(spec), columns=names)
    empty = np.empty(0, dtype=np.int64)
    carry = _Rows(empty, pa.array([], pa.string()), np.empty((0, len(spec.columns)), np.float32))
    read = 0  # rows of the file before the batch
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (OSError, pa.ArrowException) as exc:
            raise HoldoutProblem(f"the holdout {path} cannot be read: {exc}") from None
        rows = carry + _rows_of(batch, spec, path)
        examples = np.flatnonzero(_flags(batch.column(EXAMPLE_COLUMN))) + len(carry.times)
        if len(examples):
            first = _window_starts(rows, examples, spec, path, read - len(carry.times))
            view = sliding_window_view(rows.values, spec.length, axis=0)  # [M - L + 1, C, L]
            windows = np.ascontiguousarray(view[first].transpose(0, 2, 1))
            labels = labels_of(batch.column(target), target)[examples - len(carry.times)]
            yield windows, labels
        read += batch.num_rows
        carry = rows.tail(spec.length - 1)


def _rows_of(batch: pa.RecordBatch, spec: WindowSpec, path: Path) -> _Rows:
    values = to_matrix(batch, spec.columns)
    missing = ~np.isfinite(values)
    if missing.any():
        name = spec.columns[int(np.flatnonzero(missing.any(axis=0))[0])]
        raise HoldoutProblem(
            f"column {name!r} of the holdout {path} has missing values: the extraction "
            "forward-fills a window's gaps, so train again to extract it anew"
        )
    stamps = batch.column(TIMESTAMP_COLUMN).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    assets = batch.column(ASSET_COLUMN).cast(pa.string())
    return _Rows(stamps.to_numpy(zero_copy_only=False).astype(np.int64), assets, values)


def _flags(column: pa.Array) -> np.ndarray:
    return np.asarray(column.fill_null(0).to_numpy(zero_copy_only=False)) == 1


def _window_starts(
    rows: _Rows, examples: np.ndarray, spec: WindowSpec, path: Path, offset: int
) -> np.ndarray:
    """The first row of each example's window; HoldoutProblem where it is not `length`
    consecutive buckets of the example's asset. `offset`: file row of `rows`' first."""
    first = examples - (spec.length - 1)
    bad = first < 0
    inside = np.flatnonzero(~bad)
    span_us = (spec.length - 1) * spec.interval_s * US_PER_S
    late = rows.times[examples[inside]] - rows.times[first[inside]] != span_us
    same = pc.equal(rows.assets.take(examples[inside]), rows.assets.take(first[inside]))
    bad[inside] |= late | ~np.asarray(same.fill_null(False).to_numpy(zero_copy_only=False))
    if bad.any():
        row = offset + int(examples[np.flatnonzero(bad)[0]])
        raise HoldoutProblem(
            f"example row {row} of the holdout {path} (counted from 0) does not end {spec.length} "
            f"consecutive {spec.interval} buckets of one asset, so it has no window; train again "
            "to extract the holdout anew"
        )
    return first


def _first_windows(chunks: Iterator[tuple[np.ndarray, np.ndarray]], spec: WindowSpec) -> np.ndarray:
    """Up to BATCH_ROWS first windows, then the reading stops."""
    found, count = [], 0
    for windows, _ in chunks:
        found.append(windows)
        count += len(windows)
        if count >= BATCH_ROWS:
            break
    if hasattr(chunks, "close"):
        chunks.close()
    if not found:
        return np.empty((0, spec.length, len(spec.columns)), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(found)[:BATCH_ROWS])


def example_keys(holdout: HoldoutFile, window: bool) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """The asset and time of every example of the holdout, in the order it was scored."""
    names = [ASSET_COLUMN, TIMESTAMP_COLUMN, *([EXAMPLE_COLUMN] if window else [])]
    missing = [name for name in names if name not in holdout.parquet.schema_arrow.names]
    if missing:
        raise ValueError(
            f"the holdout {holdout.path} has no columns {missing}, which tell each example's "
            "asset and time; set schemaConfig.assetColumn and train again"
        )
    table = holdout.parquet.read(columns=names)
    if window:
        table = table.filter(pc.equal(table.column(EXAMPLE_COLUMN), 1))
    return table.column(ASSET_COLUMN), table.column(TIMESTAMP_COLUMN)
