"""The extract stage: stream an organization's sensor rows for a date range into two Parquet
files, split by time into a training part and a holdout part.

Rows stream from the source as Arrow record batches (ADBC drivers) into `pyarrow.parquet`
writers, so memory stays flat whatever the row count. The output uses logical names:
`timestamp` (UTC), `asset_id` (text, when configured), each feature as float32 and the target as
int8 0/1. Rows at or after `split_at` go to the holdout, all others to training, each file in
source order.

How the range reaches PostgreSQL (measured on a 5M-row table, 2 cores, PostgreSQL 15, ADBC 1.13):
ADBC runs a query without parameters as `COPY (query) TO STDOUT (FORMAT binary)` and streams it,
about 3.2M rows/s with about 40 MB of extra memory. With bound parameters ($1, $2) it falls back to
a plain prepared execution: 1.5M rows/s, and libpq holds the whole result in memory before the
first batch arrives (1.5 GB for 5M rows). Binding the range into session settings with a small
parameterized `set_config()` call and reading them with `current_setting()` in the COPY query keeps
true binding and streaming, but the planner then prefers an index scan: 2.8M rows/s for a full-
table range, equal on short ranges. That way is used here, so every value reaches the server as a
bound parameter, at a cost of about 12% on a full-table range. On SQLite the bounds are plain bound
parameters (the driver has no COPY path to lose) and the ADBC SQLite driver reads about 4x faster
than `pandas.read_sql` in chunks. End to end (`tests/bench/bench_extract.py`, three runs on a busy
2-core machine), extract ran at 0.8-1.6x the speed of `psql \\copy (...) to /dev/null` (1.3-2.5M
rows/s) with 65-85 MB of extra memory for 1M and 5M rows alike, where `pandas.read_sql` took
0.13-0.2M rows/s and 0.8 GB (1M) and 3.9 GB (5M).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from training_tasks import fields as f
from training_tasks.config.org import SchemaConfig
from training_tasks.config.training import TrainingConfig
from training_tasks.errors import ExtractError, SourceUnavailableError
from training_tasks.stages.extract.bounds import table_time_span
from training_tasks.stages.extract.plan import SourceColumn, SourcePlan
from training_tasks.stages.extract.source import (
    ASSET_FIELD,
    TIMESTAMP_FIELD,
    plan_source,
    read_batches,
)

__all__ = ["ASSET_FIELD", "TIMESTAMP_FIELD", "ExtractResult", "extract"]

TRAIN_FILE = "train.parquet"
HOLDOUT_FILE = "holdout.parquet"
Progress = Callable[[dict[str, Any]], None]
_TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")
_BINARY_TEXT = pa.array(["0", "1", "0.0", "1.0", "false", "true"])
_BINARY_VALUE = pa.array([0, 1, 0, 1, 0, 1], pa.int8())


@dataclass(frozen=True)
class ExtractResult:
    """Where the extracted files are and what is in them; `as_dict` travels in Celery messages."""

    train_path: Path
    holdout_path: Path
    rows_train: int
    rows_holdout: int
    positives_train: int
    positives_holdout: int
    split_at: datetime
    data_hash: str
    elapsed_s: float
    # The holdout file's own sha256, checked before validation scores a model on it; None in
    # rows recorded before it was kept.
    holdout_sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON: paths as text, `split_at` as ISO 8601 UTC."""
        doc = asdict(self)
        doc.update(
            train_path=str(self.train_path),
            holdout_path=str(self.holdout_path),
            split_at=f.iso(self.split_at),
        )
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ExtractResult:
        """Rebuild a result from `as_dict` output."""
        return cls(
            train_path=Path(doc["train_path"]),
            holdout_path=Path(doc["holdout_path"]),
            rows_train=int(doc["rows_train"]),
            rows_holdout=int(doc["rows_holdout"]),
            positives_train=int(doc["positives_train"]),
            positives_holdout=int(doc["positives_holdout"]),
            split_at=f.timestamp(doc["split_at"], "split_at"),
            data_hash=str(doc["data_hash"]),
            elapsed_s=float(doc["elapsed_s"]),
            holdout_sha256=doc.get("holdout_sha256"),
        )


def extract(
    source_url: str,
    schema: SchemaConfig,
    config: TrainingConfig,
    out_dir: Path,
    *,
    progress: Progress | None = None,
    batch_rows: int = 100_000,
    connect_timeout_s: float = 10.0,
) -> ExtractResult:
    """Read rows with start <= timestamp < end into `train.parquet` and `holdout.parquet`."""
    started = time.perf_counter()
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    plan = plan_source(source_url, schema, config, connect_timeout_s=connect_timeout_s)
    split_at = config.start + (config.end - config.start) * (1 - config.validation_split)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_schema = _output_schema(plan.columns)
    train = _Part(out_dir / TRAIN_FILE, out_schema, batch_rows, config.target_column)
    holdout = _Part(out_dir / HOLDOUT_FILE, out_schema, batch_rows, config.target_column)
    try:
        _stream(plan, batch_rows, split_at, train, holdout, _progress(progress, started))
        train.close()
        holdout.close()
        if train.rows + holdout.rows == 0:
            _no_rows(source_url, schema, config, connect_timeout_s)
        _check_parts(train, holdout, config, split_at)
    except BaseException:
        train.discard()
        holdout.discard()
        raise
    train.publish()
    holdout.publish()
    data_hash, holdout_sha256 = _digests(train.path, holdout.path)
    return ExtractResult(
        train_path=train.path,
        holdout_path=holdout.path,
        rows_train=train.rows,
        rows_holdout=holdout.rows,
        positives_train=train.positives,
        positives_holdout=holdout.positives,
        split_at=split_at,
        data_hash=data_hash,
        elapsed_s=round(time.perf_counter() - started, 3),
        holdout_sha256=holdout_sha256,
    )


def _stream(
    plan: SourcePlan,
    batch_rows: int,
    split_at: datetime,
    train: _Part,
    holdout: _Part,
    report: Callable[[int, int], None],
) -> None:
    split = pa.scalar(split_at, _TIMESTAMP_TYPE)
    for raw in read_batches(plan, batch_rows):
        batch = _normalize(raw, plan, train.schema)
        later = pc.greater_equal(batch.column(TIMESTAMP_FIELD), split)
        train.add(batch.filter(pc.invert(later)))
        holdout.add(batch.filter(later))
        report(train.rows, holdout.rows)


class _Part:
    """One output file: rows are buffered into row groups of `batch_rows` and counted."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int, target: str) -> None:
        self.path = path
        self.schema = schema
        self.partial = path.with_name(f".{path.name}.partial")
        self.batch_rows = batch_rows
        self.target = target
        self.rows = 0
        self.positives = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        dictionary = [ASSET_FIELD] if ASSET_FIELD in schema.names else False
        self._writer = pq.ParquetWriter(
            self.partial, schema, compression="snappy", use_dictionary=dictionary
        )

    def add(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self.rows += batch.num_rows
        self.positives += int(pc.sum(batch.column(self.target)).as_py() or 0)
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        if self._pending_rows >= self.batch_rows:
            self._flush(self._pending_rows - self._pending_rows % self.batch_rows)

    def _flush(self, rows: int) -> None:
        # Whole row groups of `batch_rows`, so the file does not depend on the driver's batches.
        table = pa.Table.from_batches(self._pending)
        self._writer.write_table(table.slice(0, rows), row_group_size=self.batch_rows)
        self._pending = table.slice(rows).to_batches()
        self._pending_rows -= rows

    def close(self) -> None:
        if self._pending_rows:
            self._flush(self._pending_rows)
        self._writer.close()

    def discard(self) -> None:
        try:
            self._writer.close()
        finally:
            self.partial.unlink(missing_ok=True)

    def publish(self) -> None:
        self.partial.replace(self.path)


def _output_schema(columns: tuple[SourceColumn, ...]) -> pa.Schema:
    kinds = {"timestamp": _TIMESTAMP_TYPE, "asset": pa.string(), "feature": pa.float32()}
    return pa.schema([pa.field(c.logical, kinds.get(c.role, pa.int8())) for c in columns])


def _normalize(raw: pa.RecordBatch, plan: SourcePlan, schema: pa.Schema) -> pa.RecordBatch:
    org = plan.organization_id
    arrays: list[pa.Array] = []
    for col, values, field in zip(plan.columns, raw.columns, schema, strict=True):
        if col.role == "target":
            arrays.append(_binary_target(values, arrays[0], col, org))
            continue
        try:
            if col.role == "timestamp":
                arrays.append(_utc_stamps(values))
            else:
                arrays.append(values.cast(field.type, safe=False))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise _bad_values(col, values, field.type, org, exc) from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _utc_stamps(values: pa.Array) -> pa.Array:
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        try:
            # SQLite keeps timestamps as text, as SQLAlchemy writes them: UTC without a zone.
            return values.cast(pa.timestamp("us")).cast(_TIMESTAMP_TYPE)
        except pa.ArrowInvalid:
            return values.cast(_TIMESTAMP_TYPE)  # text with explicit offsets
    # A column without a zone holds UTC by this service's convention.
    return values.cast(_TIMESTAMP_TYPE)


def _binary_target(values: pa.Array, stamps: pa.Array, col: SourceColumn, org: str) -> pa.Array:
    where = f"organization {org}: targetColumn {col.logical!r} (column {col.physical!r})"
    if values.null_count:
        first = stamps.filter(values.is_null())[0].as_py()
        raise ExtractError(
            f"{where} is NULL in {values.null_count} rows of a batch, the first at "
            f"{f.iso(first)}; fill or filter those rows in the source, or choose another "
            "targetColumn"
        )
    kind = values.type
    if pa.types.is_boolean(kind):
        return values.cast(pa.int8())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        index = pc.index_in(pc.utf8_lower(pc.utf8_trim_whitespace(values)), _BINARY_TEXT)
        valid = index.is_valid()
        if pc.all(valid).as_py():
            return pc.take(_BINARY_VALUE, index)
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
        valid = pc.is_in(values, pa.array([0, 1]).cast(kind))
        if pc.all(valid).as_py():
            return values.cast(pa.int8())
    else:
        raise ExtractError(f"{where} has type {kind}; it must hold 0/1 or true/false values")
    example = values.filter(pc.invert(valid))[0].as_py()
    raise ExtractError(
        f"{where} is not binary: it holds {example!r} besides 0/1 (true/false); the target "
        "must mark failures with 1 and normal rows with 0: choose or build such a column"
    )


def _bad_values(
    col: SourceColumn, values: pa.Array, kind: pa.DataType, org: str, exc: Exception
) -> ExtractError:
    sample = next((v for v in values.slice(0, 1000).to_pylist() if v is not None), None)
    what = "timestamps" if col.role == "timestamp" else f"{kind} values"
    return ExtractError(
        f"organization {org}: {col.field} (column {col.physical!r}) holds values that are not "
        f"{what}, such as {sample!r} ({str(exc).splitlines()[0]}); point {col.field} at "
        "another column or fix the data"
    )


def _no_rows(
    source_url: str, schema: SchemaConfig, config: TrainingConfig, connect_timeout_s: float
) -> None:
    """Refuse an empty range, naming the span the table does hold (one MIN/MAX query)."""
    org = config.organization_id
    span = f"{f.iso(config.start)} to {f.iso(config.end)}"
    try:
        held = table_time_span(source_url, schema, org, connect_timeout_s=connect_timeout_s)
    except (ExtractError, SourceUnavailableError) as exc:
        where = f"(its span could not be read: {exc})"
    else:
        where = f"({held.describe()})"
    raise ExtractError(
        f"organization {org}: table {schema.table!r} has no rows in dataRange {span} {where}; "
        'widen dataRange or use "windowEnd": "latestData" (the window then ends at the newest '
        "row), and check schemaConfig.timestampColumn"
    )


def _check_parts(train: _Part, holdout: _Part, config: TrainingConfig, split_at: datetime) -> None:
    org = config.organization_id
    span = f"{f.iso(config.start)} to {f.iso(config.end)}"
    rows, positives = train.rows + holdout.rows, train.positives + holdout.positives
    if positives in (0, rows):
        label = "1 (failure)" if positives else "0 (no failure)"
        raise ExtractError(
            f"organization {org}: all {rows} rows in dataRange {span} have target {label}; "
            "a classifier needs both classes: widen dataRange or choose another targetColumn"
        )
    for name, part, before in (("training", train, "before"), ("holdout", holdout, "from")):
        if part.rows == 0 or part.positives in (0, part.rows):
            problem = "is empty" if part.rows == 0 else f"has only one class ({part.rows} rows)"
            raise ExtractError(
                f"organization {org}: the {name} part (rows {before} {f.iso(split_at)}) "
                f"{problem}; change dataRange or validationSplit "
                f"(now {config.validation_split}) so that both parts hold failures and normal rows"
            )


def _progress(progress: Progress | None, started: float) -> Callable[[int, int], None]:
    def report(rows_train: int, rows_holdout: int) -> None:
        if progress is not None:
            progress(
                {
                    "stage": "extract",
                    "rows": rows_train + rows_holdout,
                    "rows_train": rows_train,
                    "rows_holdout": rows_holdout,
                    "elapsed_s": round(time.perf_counter() - started, 3),
                }
            )

    return report


def _digests(train_path: Path, holdout_path: Path) -> tuple[str, str]:
    """The data hash (training split, then holdout) and the holdout's own sha256, in one read."""
    data, holdout = hashlib.sha256(), hashlib.sha256()
    for path, digests in ((train_path, (data,)), (holdout_path, (data, holdout))):
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                for digest in digests:
                    digest.update(chunk)
    return data.hexdigest(), holdout.hexdigest()
