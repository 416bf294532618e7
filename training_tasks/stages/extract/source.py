"""The source side of the extract stage: connect read-only, build the query, stream Arrow record
batches through the ADBC drivers.

Table and column names come from the organization's configuration, so every one is checked
against the live schema first (columns.py), and the query is built from `sqlalchemy.table`
and `column` constructs, which quote whatever needs quoting. Values are always bound:
on SQLite the two timestamps are parameters of the query; on PostgreSQL they are bound into two
session settings that the COPY query reads (see `stage.py` for why).
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import adbc_driver_postgresql.dbapi as adbc_pg
import adbc_driver_sqlite.dbapi as adbc_sqlite
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from training_tasks.config.org import SchemaConfig
from training_tasks.config.training import TrainingConfig
from training_tasks.errors import ExtractError
from training_tasks.redaction import mask_url
from training_tasks.stages.extract import labels as event_labels
from training_tasks.stages.extract.columns import checked_columns, textual
from training_tasks.stages.extract.errors import source_errors
from training_tasks.stages.extract.plan import (
    SourceColumn,
    SourcePlan,
)

# Rough bytes per row and column, to turn `batch_rows` into the PostgreSQL driver's size hint.
_BYTES_PER_VALUE = 12


def plan_source(
    source_url: str, schema: SchemaConfig, config: TrainingConfig, *, connect_timeout_s: float
) -> SourcePlan:
    """Check the configured names against the live schema and build the range query."""
    org = config.organization_id
    engine, backend, driver_uri = source_engine(source_url, org, connect_timeout_s)
    masked = mask_url(source_url)
    columns, types = checked_columns(engine, masked, schema, config)
    # A column may serve twice; the label is computed, not a column of the table.
    physical = dict.fromkeys(c.physical for c in columns if c.role != "label")
    table = sa.table(schema.table, *(sa.column(name) for name in physical), schema=schema.schema)
    if backend == "sqlite":
        sql, params = _sqlite_query(table, columns, config, types, schema)
    else:
        sql, params = _postgres_query(table, columns, config, types, schema)
    settings = _ALL_SETTINGS[: len(params)] if backend == "postgresql" else ()
    return SourcePlan(org, backend, sql, params, tuple(columns), driver_uri, masked, settings)


def source_engine(
    source_url: str, org: str, connect_timeout_s: float
) -> tuple[sa.Engine, Literal["postgresql", "sqlite"], str]:
    """A read-only engine without a pool on the SCADA database, its backend and driver URI."""
    url = _parse_url(source_url, org)
    name = url.get_backend_name()
    if name not in ("postgresql", "sqlite"):
        raise ExtractError(
            f"organization {org}: scadaDbConfig.url uses {name!r}; use postgresql or sqlite"
        )
    if name == "sqlite":
        driver_uri = _sqlite_uri(url, org)
        # A creator, not a URL: SQLAlchemy would decode the %-escapes that the file URI needs.
        engine = sa.create_engine(
            "sqlite://", creator=lambda: sqlite3.connect(driver_uri, uri=True), poolclass=NullPool
        )
        return engine, "sqlite", driver_uri
    driver_uri = _libpq_uri(url, connect_timeout_s)
    timeout = {"connect_timeout": max(1, round(connect_timeout_s)), "options": READ_ONLY}
    engine = sa.create_engine(
        url.set(drivername="postgresql+psycopg"), connect_args=timeout, poolclass=NullPool
    )
    return engine, "postgresql", driver_uri


def read_batches(plan: SourcePlan, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Stream the planned query as record batches with the output (logical) column names."""
    names = [c.logical for c in plan.columns]
    if plan.backend == "sqlite":
        yield from _read_sqlite(plan, batch_rows, names)
    else:
        yield from _read_postgres(plan, batch_rows, names)


def _parse_url(source_url: str, org: str) -> URL:
    try:
        return make_url(source_url)
    except sa.exc.ArgumentError:
        raise ExtractError(
            f"organization {org}: scadaDbConfig.url {mask_url(source_url)!r} is not a SQLAlchemy "
            "URL; fix it in the organization config (postgresql+psycopg://... or sqlite:///...)"
        ) from None


def _sqlite_uri(url: URL, org: str) -> str:
    path = Path(url.database or "").expanduser().resolve()
    if not url.database or not path.is_file():
        raise ExtractError(
            f"organization {org}: the SQLite database {str(path)!r} in scadaDbConfig.url does "
            "not exist; fix the path in the organization config"
        )
    # Read-only opens can neither create a missing file nor change the source.
    return f"file:{urllib.parse.quote(str(path))}?mode=ro"


def _libpq_uri(url: URL, connect_timeout_s: float) -> str:
    """The SQLAlchemy URL as a libpq URI: no `+driver` part, a connect timeout, read-only."""
    query = dict(url.query)
    query.setdefault("connect_timeout", str(max(1, round(connect_timeout_s))))
    query["options"] = _read_only_options(query.get("options"))
    base = url.set(drivername="postgresql", query={}).render_as_string(hide_password=False)
    # libpq decodes %20 but not `+`, which SQLAlchemy would write for a space.
    return f"{base}?{urllib.parse.urlencode(query, doseq=True, quote_via=urllib.parse.quote)}"


READ_ONLY = "--default_transaction_read_only=on"


def _read_only_options(given: object) -> str:
    """libpq `options` that make every transaction of the extract read-only (kept: the user's)."""
    text = given if isinstance(given, str) else " ".join(given) if isinstance(given, tuple) else ""
    return f"{text} {READ_ONLY}".strip()


def _sqlite_query(
    table: sa.TableClause,
    columns: list[SourceColumn],
    config: TrainingConfig,
    types: dict[str, sa.types.TypeEngine[Any]],
    schema: SchemaConfig,
) -> tuple[str, tuple[str, ...]]:
    # The SQLite driver takes each column's Arrow type from the first rows it reads, so a feature
    # that starts with NULLs or whole numbers would be typed int64 and then fail on 0.5. A first
    # row of the right types (flagged, dropped by the reader) fixes the types; SQLite runs a
    # UNION ALL left to right, and the reader checks the flag of every row.
    as_text = {c.logical for c in columns if c.role in ("timestamp", "asset")}
    as_text |= {c.logical for c in columns if c.role == "target" and textual(types[c.physical])}
    flag: sa.ColumnElement[Any] = sa.literal_column("1")
    typed: list[sa.ColumnElement[Any]] = [
        sa.literal_column("''" if c.logical in as_text else _TYPED.get(c.role, "0.5"))
        for c in columns
    ]
    label, keep = event_labels.label_parts(table, schema, event_labels.sqlite_shift)
    head = sa.select(flag, *typed)
    body: list[sa.ColumnElement[Any]] = [
        # CAST keeps numbers in text columns uniform ('1.0', not the driver's '1.000000e+00').
        label
        if label is not None and c.role == "label"
        else sa.cast(table.c[c.physical], sa.Text)
        if c.logical in as_text and c.role != "timestamp"
        else table.c[c.physical]
        for c in columns
    ]
    ts = table.c[columns[0].physical]
    start, end = (sqlite_stamp(m) for m in (config.start, config.end))
    rows = sa.select(sa.literal_column("0"), *body).where(
        ts >= sa.bindparam("range_start", start), ts < sa.bindparam("range_end", end), *keep
    )
    compiled = sa.union_all(head, rows).compile(dialect=sqlite.dialect())
    values = {**compiled.params, **event_labels.label_values(schema)}
    params = tuple(str(values[name]) for name in compiled.positiontup or ())
    return str(compiled), params


_TYPED = {"label": "0"}


def sqlite_stamp(moment: datetime) -> str:
    """UTC text as SQLAlchemy's DateTime stores it on SQLite, so text comparison is time order."""
    return utc(moment).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


# The range (and label windows) travel as bound parameters into session settings, and the COPY
# query reads them with current_setting(): a query with $1/$2 would lose ADBC's COPY path.
RANGE_SETTINGS = ("training.range_start", "training.range_end")
_ALL_SETTINGS = RANGE_SETTINGS + event_labels.SETTINGS


def _bind_settings(settings: tuple[str, ...]) -> str:
    """The statement that binds one parameter into each named session setting, in order."""
    sets = (f"set_config('{n}', ${i}::text, false)" for i, n in enumerate(settings, 1))
    return "SELECT " + ", ".join(sets)


def constant(text: str) -> sa.ColumnElement[Any]:
    """SQL text written in this package (a literal, a position), never a configured value."""
    return sa.literal_column(text)


def setting_value(name: str, sql_type: sa.types.TypeEngine[Any]) -> sa.ColumnElement[Any]:
    """A session setting (a name of this module, never user text) read as `sql_type`."""
    return sa.cast(sa.func.current_setting(sa.literal_column(f"'{name}'")), sql_type)


def postgres_stamp(moment: datetime, aware: bool) -> str:
    """A bound for a timestamp column with (`aware`) or without a zone: UTC text."""
    value = utc(moment) if aware else utc(moment).replace(tzinfo=None)
    return value.isoformat(sep=" ")


def _postgres_query(
    table: sa.TableClause,
    columns: list[SourceColumn],
    config: TrainingConfig,
    types: dict[str, sa.types.TypeEngine[Any]],
    schema: SchemaConfig,
) -> tuple[str, tuple[str, ...]]:
    label, keep = event_labels.label_parts(table, schema, event_labels.postgres_shift)
    selected = [
        label.label(c.logical)
        if label is not None and c.role == "label"
        else _postgres_column(table, c, types[c.physical])
        for c in columns
    ]
    aware = bool(getattr(types[columns[0].physical], "timezone", False))
    bound_type = sa.DateTime(timezone=aware)
    ts = table.c[columns[0].physical]
    query = sa.select(*selected).where(
        ts >= setting_value(RANGE_SETTINGS[0], bound_type),
        ts < setting_value(RANGE_SETTINGS[1], bound_type),
        *keep,
    )
    windows = event_labels.label_values(schema)
    bounds = (postgres_stamp(config.start, aware), postgres_stamp(config.end, aware))
    return postgres_sql(query), (*bounds, *windows.values())


def postgres_sql(query: sa.Select[Any]) -> str:
    """The query as PostgreSQL text without parameters (they travel in session settings)."""
    # `numeric_dollar` because the psycopg default doubles every % in names for its own
    # formatting, which the ADBC driver would take literally.
    return str(query.compile(dialect=postgresql.psycopg.dialect(paramstyle="numeric_dollar")))


def _postgres_column(
    table: sa.TableClause, col: SourceColumn, sql_type: sa.types.TypeEngine[Any]
) -> sa.ColumnElement[Any]:
    column: sa.ColumnElement[Any] = table.c[col.physical]
    if col.role == "asset":
        column = sa.cast(column, sa.Text)
    elif isinstance(sql_type, sa.Numeric) and not isinstance(sql_type, sa.Float):
        # The driver hands NUMERIC over as text; the server converts it faster than Python.
        column = sa.cast(column, postgresql.DOUBLE_PRECISION)
    return column.label(col.logical)


def utc(moment: datetime) -> datetime:
    # The one guard between a value and rendered SQL: only real, zone-aware datetimes pass.
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise TypeError(f"range bounds must be timezone-aware datetimes, got {moment!r}")
    return moment.astimezone(UTC)


def _read_sqlite(plan: SourcePlan, batch_rows: int, names: list[str]) -> Iterator[pa.RecordBatch]:
    first = True
    with source_errors(plan), adbc_sqlite.connect(plan.driver_uri) as conn, conn.cursor() as cur:
        cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(batch_rows)})
        cur.execute(plan.sql, parameters=plan.parameters)
        for batch in cur.fetch_record_batch():
            heads = batch.column(0).to_numpy().sum()
            if heads != (1 if first else 0) or (first and batch.column(0)[0].as_py() != 1):
                raise RuntimeError("SQLite returned the type-fixing first row out of place")
            rows = batch.slice(1) if first else batch
            first = False
            if rows.num_rows:
                yield pa.RecordBatch.from_arrays(rows.columns[1:], names=names)


def _read_postgres(plan: SourcePlan, batch_rows: int, names: list[str]) -> Iterator[pa.RecordBatch]:
    hint_bytes = max(1 << 20, batch_rows * _BYTES_PER_VALUE * len(names))
    with source_errors(plan), adbc_pg.connect(plan.driver_uri) as conn, conn.cursor() as cur:
        if plan.parameters:
            cur.execute(_bind_settings(plan.settings), parameters=plan.parameters)
            cur.fetchall()
        cur.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(hint_bytes)})
        cur.execute(plan.sql)
        for batch in cur.fetch_record_batch():
            if batch.num_rows:
                yield batch.rename_columns(names)
