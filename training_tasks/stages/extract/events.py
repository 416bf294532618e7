"""events.parquet: the failures that label a run's rows, for the event-level metrics.

Every failure of the events table (`schemaConfig.labels`) with time in [start, end + horizon):
`asset_id` (text) and `timestamp` (UTC), sorted by asset in byte order, then time, the same on
both backends. Streamed like the readings; the bounds are bound values (see source.py).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from training_tasks.config.org import EventLabels, SchemaConfig
from training_tasks.config.training import TrainingConfig
from training_tasks.errors import ExtractError
from training_tasks.redaction import mask_url
from training_tasks.stages.extract import labels as event_labels
from training_tasks.stages.extract.errors import translate_error
from training_tasks.stages.extract.plan import (
    ASSET_FIELD,
    TIMESTAMP_FIELD,
    SourceColumn,
    SourcePlan,
)
from training_tasks.stages.extract.source import (
    RANGE_SETTINGS,
    constant,
    postgres_sql,
    postgres_stamp,
    read_batches,
    setting_value,
    source_engine,
    sqlite_stamp,
)
from training_tasks.stages.extract.values import TIMESTAMP_TYPE, utc_stamps

EVENTS_FILE = "events.parquet"
EVENTS_SCHEMA = pa.schema(
    [pa.field(ASSET_FIELD, pa.string()), pa.field("timestamp", TIMESTAMP_TYPE)]
)


def write_events(
    source_url: str,
    schema: SchemaConfig,
    config: TrainingConfig,
    out_dir: Path,
    batch_rows: int,
    connect_timeout_s: float,
) -> Path:
    """Write `events.parquet` into `out_dir` (under a hidden name until complete); its path."""
    plan = _plan(source_url, schema, config, connect_timeout_s)
    path = out_dir / EVENTS_FILE
    partial = path.with_name(f".{path.name}.partial")
    writer = pq.ParquetWriter(partial, EVENTS_SCHEMA, compression="snappy")
    try:
        for raw in read_batches(plan, batch_rows):
            writer.write_batch(_normalize(raw, plan))
        writer.close()
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    partial.replace(path)
    return path


def _normalize(raw: pa.RecordBatch, plan: SourcePlan) -> pa.RecordBatch:
    try:
        stamps = utc_stamps(raw.column(1))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        sample = next((v for v in raw.column(1).to_pylist() if v is not None), None)
        raise ExtractError(
            f"organization {plan.organization_id}: schemaConfig.labels.timestampColumn "
            f"{plan.columns[1].physical!r} holds {sample!r}, which is not a timestamp; point it "
            "at a column of timestamps or fix the data"
        ) from None
    asset = raw.column(0).cast(pa.string())
    return pa.RecordBatch.from_arrays([asset, stamps], schema=EVENTS_SCHEMA)


def _plan(
    source_url: str, schema: SchemaConfig, config: TrainingConfig, connect_timeout_s: float
) -> SourcePlan:
    labels = schema.labels
    assert labels is not None
    org = config.organization_id
    engine, backend, driver_uri = source_engine(source_url, org, connect_timeout_s)
    masked = mask_url(source_url)
    ts_type = _time_type(engine, schema, labels, org, masked)
    columns = (
        SourceColumn("schemaConfig.labels.assetColumn", ASSET_FIELD, labels.asset_column, "asset"),
        SourceColumn(
            "schemaConfig.labels.timestampColumn",
            TIMESTAMP_FIELD,
            labels.timestamp_column,
            "timestamp",
        ),
    )
    events = sa.table(
        labels.events_table,
        sa.column(labels.asset_column),
        sa.column(labels.timestamp_column),
        schema=schema.schema,
    )
    asset, failed = events.c[labels.asset_column], events.c[labels.timestamp_column]
    low, high = config.start, config.end + timedelta(hours=labels.horizon_hours)
    if backend == "sqlite":
        sql, params = _sqlite(asset, failed, sqlite_stamp(low), sqlite_stamp(high))
        return SourcePlan(org, "sqlite", sql, params, columns, driver_uri, masked)
    aware = bool(getattr(ts_type, "timezone", False))
    bound = sa.DateTime(timezone=aware)
    key = sa.cast(asset, sa.Text).collate("C")
    query = (
        sa.select(sa.cast(asset, sa.Text), failed)
        .where(failed >= setting_value(RANGE_SETTINGS[0], bound))
        .where(failed < setting_value(RANGE_SETTINGS[1], bound))
        .order_by(key, failed)
    )
    params = (postgres_stamp(low, aware), postgres_stamp(high, aware))
    return SourcePlan(
        org, "postgresql", postgres_sql(query), params, columns, driver_uri, masked, RANGE_SETTINGS
    )


def _time_type(
    engine: sa.Engine, schema: SchemaConfig, labels: EventLabels, org: str, masked_url: str
) -> sa.types.TypeEngine[Any]:
    """The type of the events table's timestamp column (the table checked again)."""
    try:
        with engine.connect() as conn:
            return event_labels.check_events_table(sa.inspect(conn), schema, labels, org)
    except sa.exc.DBAPIError as exc:
        raise translate_error(exc.orig or exc, org, engine.dialect.name, masked_url) from exc
    finally:
        engine.dispose()


def _sqlite(asset: Any, failed: Any, low: str, high: str) -> tuple[str, tuple[str, ...]]:
    # A typed first row, flagged and dropped by the reader: see source._sqlite_query.
    head = sa.select(constant("1"), constant("''"), constant("''"))
    body = sa.select(constant("0"), sa.cast(asset, sa.Text), sa.cast(failed, sa.Text)).where(
        failed >= sa.bindparam("events_low", low), failed < sa.bindparam("events_high", high)
    )
    order = (constant("1").desc(), constant("2"), constant("3"))
    compiled = sa.union_all(head, body).order_by(*order).compile(dialect=sqlite.dialect())
    return str(compiled), tuple(str(compiled.params[n]) for n in compiled.positiontup or ())
