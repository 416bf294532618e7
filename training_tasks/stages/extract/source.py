"""The source side of the extract stage: check names against the real schema, build the query,
stream Arrow record batches through the ADBC drivers.

Table and column names come from the organization's configuration, so every one is looked up
with SQLAlchemy's inspector before any query runs, and the query is built from `sqlalchemy.table`
and `column` constructs, which quote whatever needs quoting. Values are always bound:
on SQLite the two timestamps are parameters of the query; on PostgreSQL they are bound into two
session settings that the COPY query reads (see `stage.py` for why).
"""

from __future__ import annotations

import difflib
import sqlite3
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
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
from training_tasks.config.training import TrainingConfig, check_target_not_feature
from training_tasks.errors import ConfigError, ExtractError
from training_tasks.redaction import mask_url
from training_tasks.stages.extract import labels as event_labels
from training_tasks.stages.extract.errors import source_errors, translate_error
from training_tasks.stages.extract.plan import SourceColumn, SourcePlan

TIMESTAMP_FIELD = "timestamp"
ASSET_FIELD = "asset_id"
# Rough bytes per row and column, to turn `batch_rows` into the PostgreSQL driver's size hint.
_BYTES_PER_VALUE = 12


def plan_source(
    source_url: str, schema: SchemaConfig, config: TrainingConfig, *, connect_timeout_s: float
) -> SourcePlan:
    """Check the configured names against the live schema and build the range query."""
    org = config.organization_id
    engine, backend, driver_uri = source_engine(source_url, org, connect_timeout_s)
    masked = mask_url(source_url)
    columns, types = _checked_columns(engine, masked, schema, config)
    # A column may serve twice; the label is computed, not a column of the table.
    physical = dict.fromkeys(c.physical for c in columns if c.role != "label")
    table = sa.table(schema.table, *(sa.column(name) for name in physical), schema=schema.schema)
    if backend == "sqlite":
        sql, params = _sqlite_query(table, columns, config, types, schema)
    else:
        sql, params = _postgres_query(table, columns, config, types, schema)
    return SourcePlan(org, backend, sql, params, tuple(columns), driver_uri, masked)


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


def timestamp_column_type(
    conn: sa.Connection, schema: SchemaConfig, org: str
) -> sa.types.TypeEngine[Any]:
    """Check that the table and its timestamp column exist and hold timestamps; their type."""
    real = _real_columns(sa.inspect(conn), schema, org)
    col = SourceColumn(
        "schemaConfig.timestampColumn", TIMESTAMP_FIELD, schema.timestamp_column, "timestamp"
    )
    _check_name(col, real, schema, org)
    sql_type = real[col.physical]
    _check_type(col, sql_type, org, sqlite_source=conn.dialect.name == "sqlite")
    return sql_type


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


def _checked_columns(
    engine: sa.Engine, masked_url: str, schema: SchemaConfig, config: TrainingConfig
) -> tuple[list[SourceColumn], dict[str, sa.types.TypeEngine[Any]]]:
    org = config.organization_id
    backend = engine.dialect.name
    try:
        with engine.connect() as conn:
            real = _real_columns(sa.inspect(conn), schema, org)
            if schema.labels:
                events_ts = event_labels.check_events_table(
                    sa.inspect(conn), schema, schema.labels, org
                )
    except sa.exc.DBAPIError as exc:
        raise translate_error(exc.orig or exc, org, backend, masked_url) from exc
    finally:
        engine.dispose()
    wanted = _wanted_columns(schema, config)
    for col in wanted:
        _check_name(col, real, schema, org)
    if schema.labels:
        event_labels.check_same_zone(real[schema.timestamp_column], events_ts, org)
    for col in (c for c in wanted if c.role != "label"):
        _check_type(col, real[col.physical], org, sqlite_source=backend == "sqlite")
    return wanted, real


def _real_columns(
    inspector: sa.Inspector, schema: SchemaConfig, org: str
) -> dict[str, sa.types.TypeEngine[Any]]:
    if not inspector.has_table(schema.table, schema=schema.schema):
        tables = sorted(inspector.get_table_names(schema=schema.schema))
        where = f" in schema {schema.schema!r}" if schema.schema else ""
        raise ExtractError(
            f"organization {org}: schemaConfig.table {schema.table!r} does not exist{where} in "
            f"the SCADA database; tables there: {_listing(tables)}. Fix schemaConfig.table"
        )
    return {c["name"]: c["type"] for c in inspector.get_columns(schema.table, schema=schema.schema)}


def _wanted_columns(schema: SchemaConfig, config: TrainingConfig) -> list[SourceColumn]:
    ts, asset = schema.timestamp_column, schema.asset_column
    cols = [SourceColumn("schemaConfig.timestampColumn", TIMESTAMP_FIELD, ts, "timestamp")]
    if asset:
        cols.append(SourceColumn("schemaConfig.assetColumn", ASSET_FIELD, asset, "asset"))
    for i, name in enumerate(config.feature_columns):
        cols.append(SourceColumn(f"featureColumns[{i}]", name, schema.physical(name), "feature"))
    target = config.target_column
    if schema.labels:
        cols.append(SourceColumn("schemaConfig.labels", target, target, "label"))
    else:
        cols.append(SourceColumn("targetColumn", target, schema.physical(target), "target"))
    try:  # checked at submit too; the mappings may have changed since the run was queued
        check_target_not_feature(target, config.feature_columns, schema.column_mappings)
    except ConfigError as exc:
        raise ExtractError(
            f"organization {config.organization_id}: {exc.problem}. Fix the organization's "
            "schemaConfig.columnMappings or train with other columns"
        ) from None
    for col in cols:
        if col.role in ("feature", "target") and col.logical in (TIMESTAMP_FIELD, ASSET_FIELD):
            raise ExtractError(
                f"organization {config.organization_id}: {col.field} is named {col.logical!r}, "
                f"which the extracted files use for the {col.logical} column; rename it "
                "(the columnMappings entry can keep the physical column)"
            )
    return cols


def _check_name(
    col: SourceColumn, real: dict[str, sa.types.TypeEngine[Any]], schema: SchemaConfig, org: str
) -> None:
    if col.physical in real or col.role == "label":
        return
    via = "" if col.physical == col.logical else f" (via schemaConfig.columnMappings.{col.logical})"
    close = difflib.get_close_matches(col.physical, list(real), n=1, cutoff=0.6)
    case = [n for n in real if n.lower() == col.physical.lower()]
    hint = f" Did you mean {(case or close)[0]!r}?" if case or close else ""
    raise ExtractError(
        f"organization {org}: {col.field} names column {col.physical!r}{via}, which table "
        f"{schema.table!r} does not have; its columns are {_listing(sorted(real))}.{hint} "
        "Fix the organization's schemaConfig.columnMappings or the training config"
    )


def _check_type(
    col: SourceColumn, sql_type: sa.types.TypeEngine[Any], org: str, *, sqlite_source: bool
) -> None:
    if col.role == "asset":
        return  # any type: asset ids are read as text
    try:
        python_type = None if isinstance(sql_type, sa.types.NullType) else sql_type.python_type
    except NotImplementedError:
        python_type = None
    # A type SQLAlchemy does not know (or none, on SQLite) is checked value by value instead.
    allowed, need = {
        "timestamp": ((datetime, str) if sqlite_source else (datetime,), "a timestamp column"),
        "feature": ((float, int, Decimal, bool), "a numeric column"),
        "target": ((float, int, Decimal, bool, str), "a 0/1, boolean or 'true'/'false' column"),
    }[col.role]
    if python_type is None or issubclass(python_type, allowed):
        return
    raise ExtractError(
        f"organization {org}: {col.field} names column {col.physical!r} of type {sql_type}, "
        f"but it must be {need}; point {col.field} at another column"
    )


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
    as_text |= {c.logical for c in columns if c.role == "target" and _textual(types[c.physical])}
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
    start, end = (_sqlite_stamp(m) for m in (config.start, config.end))
    rows = sa.select(sa.literal_column("0"), *body).where(
        ts >= sa.bindparam("range_start", start), ts < sa.bindparam("range_end", end), *keep
    )
    compiled = sa.union_all(head, rows).compile(dialect=sqlite.dialect())
    values = {**compiled.params, **event_labels.label_values(schema)}
    params = tuple(str(values[name]) for name in compiled.positiontup or ())
    return str(compiled), params


_TYPED = {"label": "0"}


def _textual(sql_type: sa.types.TypeEngine[Any]) -> bool:
    try:
        return issubclass(sql_type.python_type, str)
    except NotImplementedError:
        return False


def _sqlite_stamp(moment: datetime) -> str:
    """UTC text as SQLAlchemy's DateTime stores it on SQLite, so text comparison is time order."""
    return _utc(moment).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


# The range (and label windows) travel as bound parameters into session settings, and the COPY
# query reads them with current_setting(): a query with $1/$2 would lose ADBC's COPY path.
_RANGE_SETTINGS = ("training.range_start", "training.range_end")
_ALL_SETTINGS = _RANGE_SETTINGS + event_labels.SETTINGS


def _bind_settings(count: int) -> str:
    """The statement that binds `count` parameters into the first `count` session settings."""
    sets = (f"set_config('{n}', ${i}::text, false)" for i, n in enumerate(_ALL_SETTINGS, 1))
    return "SELECT " + ", ".join(list(sets)[:count])


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

    def setting(name: str) -> sa.ColumnElement[Any]:
        return sa.cast(sa.func.current_setting(sa.literal_column(f"'{name}'")), bound_type)

    def stamp(moment: datetime) -> str:
        value = _utc(moment) if aware else _utc(moment).replace(tzinfo=None)
        return value.isoformat(sep=" ")

    ts = table.c[columns[0].physical]
    query = sa.select(*selected).where(
        ts >= setting(_RANGE_SETTINGS[0]), ts < setting(_RANGE_SETTINGS[1]), *keep
    )
    # `numeric_dollar` because the psycopg default doubles every % in names for its own
    # formatting, which the ADBC driver would take literally.
    dialect = postgresql.psycopg.dialect(paramstyle="numeric_dollar")
    compiled = query.compile(dialect=dialect)
    windows = event_labels.label_values(schema)
    return str(compiled), (stamp(config.start), stamp(config.end), *windows.values())


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


def _utc(moment: datetime) -> datetime:
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
        cur.execute(_bind_settings(len(plan.parameters)), parameters=plan.parameters)
        cur.fetchall()
        cur.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(hint_bytes)})
        cur.execute(plan.sql)
        for batch in cur.fetch_record_batch():
            if batch.num_rows:
                yield batch.rename_columns(names)


def _listing(names: list[str], limit: int = 30) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return (shown + more) or "(none)"
