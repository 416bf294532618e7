"""The query of a window extract: one row per (asset, bucket), in asset and bucket order.

The database does the bucketing: bucket k of an asset holds its readings with
k * interval <= epoch seconds < (k + 1) * interval, and the query returns per bucket the number
of readings, the mean of each window column (NULL when it has no value), the largest 0/1 target
(when a target column labels the rows) and a check column naming the first column that holds a
value that is not a number or not 0/1. Rows come sorted by asset text in byte order
(`COLLATE "C"`), the same on both backends; grouping by that text first lets one sort serve the
grouping, the order and the window function.

Failure labels are not computed here: a bucket forward-filled over a gap has no row in this
result, yet needs the label at its end. So the first row of each asset carries the asset's
failures in the range (one index probe per asset), and window_stream.py labels every bucket,
holding no more than one asset's failures at a time.

The interval and the time bounds are bound values: parameters on SQLite, session settings read
by the COPY query on PostgreSQL (see source.py), there in scalar subqueries so that each is
read once, not once per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from training_tasks.config.org import EventLabels, SchemaConfig
from training_tasks.config.training import TrainingConfig
from training_tasks.errors import ExtractError
from training_tasks.redaction import mask_url
from training_tasks.stages.extract.columns import checked_columns, textual
from training_tasks.stages.extract.plan import SourceColumn, SourcePlan
from training_tasks.stages.extract.source import (
    RANGE_SETTINGS,
    constant,
    postgres_sql,
    postgres_stamp,
    setting_value,
    source_engine,
    sqlite_stamp,
)

BUCKET_FIELD = "bucket"
_INTERVAL_SETTING = "training.window_interval"
_EVENT_SETTINGS = ("training.events_low", "training.events_high")
_ONE, _ZERO = ("'1'", "'1.0'", "'true'"), ("'0'", "'0.0'", "'false'")


@dataclass(frozen=True)
class _Query:
    """What both backends' queries are built from."""

    table: sa.TableClause
    columns: list[SourceColumn]  # timestamp, asset, features, then the target or the label
    types: dict[str, sa.types.TypeEngine[Any]]
    schema: SchemaConfig
    config: TrainingConfig
    backend: str

    def col(self, role: str) -> sa.ColumnClause[Any]:
        """The table's column serving `role` (the first one)."""
        return self.table.c[next(c.physical for c in self.columns if c.role == role)]


def plan_window_source(
    source_url: str, schema: SchemaConfig, config: TrainingConfig, *, connect_timeout_s: float
) -> SourcePlan:
    """Check the names against the live schema and build the bucketing query."""
    org = config.organization_id
    if config.windows is None:
        raise ValueError("a window query needs config.windows")
    if schema.asset_column is None:
        raise ExtractError(
            f"organization {org}: mlModelConfig.windows builds windows per asset, but the "
            "organization's schemaConfig has no assetColumn; set schemaConfig.assetColumn to the "
            'column naming each machine, or train on single readings ("windows": null)'
        )
    engine, backend, driver_uri = source_engine(source_url, org, connect_timeout_s)
    masked = mask_url(source_url)
    columns, types = checked_columns(engine, masked, schema, config)
    physical = dict.fromkeys(c.physical for c in columns if c.role != "label")
    table = sa.table(schema.table, *(sa.column(name) for name in physical), schema=schema.schema)
    query = _Query(table, columns, types, schema, config, backend)
    out = _output_columns(columns, schema)
    if backend == "sqlite":
        sql, params = _sqlite_query(query, out)
        return SourcePlan(org, "sqlite", sql, params, out, driver_uri, masked)
    sql, params, settings = _postgres_query(query)
    return SourcePlan(org, "postgresql", sql, params, out, driver_uri, masked, settings)


def _output_columns(columns: list[SourceColumn], schema: SchemaConfig) -> tuple[SourceColumn, ...]:
    ts, asset = columns[0], columns[1]
    out = [
        asset,
        SourceColumn("windows.interval", BUCKET_FIELD, ts.physical, "bucket"),
        SourceColumn("readings", "readings", ts.physical, "count"),
        *(c for c in columns if c.role in ("feature", "target")),
        SourceColumn("windows.columns", "check", ts.physical, "check"),
    ]
    if schema.labels is not None:
        events = schema.labels.events_table
        out.append(SourceColumn("schemaConfig.labels", "failures", events, "events"))
    return tuple(out)


def _grouped(q: _Query, bucket: sa.ColumnElement[Any], bounds: list[Any]) -> sa.Subquery:
    """Per (asset, bucket): readings, the mean of each column, the largest target, the check."""
    features = [c for c in q.columns if c.role == "feature"]
    target = next((c for c in q.columns if c.role == "target"), None)
    norm = None if target is None else _binary(q, q.table.c[target.physical], target)
    check = _check(q, features, norm)
    ts, asset = q.col("timestamp"), q.col("asset")
    key: sa.ColumnElement[Any] = sa.cast(asset, sa.Text)
    if q.backend == "postgresql":
        key = key.collate("C")  # byte order, as on SQLite; and one sort serves all below
    inner = (
        sa.select(
            key.label("key"),
            asset.label("asset"),
            bucket.label("k"),
            *(_number(q, q.table.c[c.physical], c).label(f"f{i}") for i, c in enumerate(features)),
            *([] if norm is None else [norm.label("t")]),
            check.label("chk"),
        )
        .where(ts >= bounds[0], ts < bounds[1])
        .subquery("r")
    )
    # Grouped by the text key first: the groups come out in the order of the output rows. The
    # asset as stored is kept only to match the events table's asset column (and its index).
    raw = [inner.c.asset] if q.schema.labels is not None else []
    return (
        sa.select(
            inner.c.key,
            inner.c.k,
            sa.func.count().label("n"),
            *(sa.func.avg(inner.c[f"f{i}"]).label(f"f{i}") for i in range(len(features))),
            *([] if norm is None else [sa.func.max(inner.c.t).label("t")]),
            sa.func.max(inner.c.chk).label("chk"),
            *raw,
        )
        .group_by(inner.c.key, inner.c.k, *raw)
        .subquery("g")
    )


def _check(
    q: _Query, features: list[SourceColumn], norm: sa.ColumnElement[Any] | None
) -> sa.ColumnElement[Any]:
    """0, or the position of a column whose value is not a number (features) or not 0/1."""
    # On PostgreSQL the schema's numeric types already make every window column a number.
    problems = (
        [(_not_number(q.table.c[c.physical]), _index(i + 1)) for i, c in enumerate(features)]
        if q.backend == "sqlite"
        else []
    )
    problems += [] if norm is None else [(norm.is_(None), _index(len(features) + 1))]
    return sa.case(*problems, else_=constant("0")) if problems else constant("0")


def _outer(g: sa.Subquery, failures: Any, *head: Any) -> sa.Select[Any]:
    """The grouped rows as output columns, with the asset's failures on its first row."""
    selected: list[sa.ColumnElement[Any]] = [*head, g.c.key.label("asset_id")]
    selected += [c for c in g.c if c.name not in ("key", "asset")]
    if failures is not None:
        first = sa.func.row_number().over(partition_by=g.c.key, order_by=g.c.k)
        selected.append(sa.case((first == constant("1"), failures)).label("failures"))
    return sa.select(*selected)


def _failures_subquery(
    q: _Query, g: sa.Subquery, value: Any, low: Any, high: Any
) -> sa.ScalarSelect[Any]:
    """The asset's failure times in [low, high], aggregated into one text by `value`."""
    labels: EventLabels | None = q.schema.labels
    assert labels is not None
    events = sa.table(
        labels.events_table,
        sa.column(labels.asset_column),
        sa.column(labels.timestamp_column),
        schema=q.schema.schema,
    ).alias("failure")
    failed = events.c[labels.timestamp_column]
    return (
        sa.select(value(failed))
        .where(events.c[labels.asset_column] == g.c.asset, failed >= low, failed <= high)
        .scalar_subquery()
    )


def events_range(config: TrainingConfig, labels: EventLabels) -> tuple[datetime, datetime]:
    """Failures that can label or exclude a bucket ending in (start, end]: both ends included."""
    return (
        config.start - timedelta(hours=labels.exclude_after_hours),
        config.end + timedelta(hours=labels.horizon_hours),
    )


def _sqlite_query(q: _Query, out: tuple[SourceColumn, ...]) -> tuple[str, tuple[str, ...]]:
    assert q.config.windows is not None
    interval = sa.cast(sa.bindparam("window_interval", str(q.config.windows.interval_s)), sa.Float)
    seconds = sa.cast(sa.func.strftime(constant("'%s'"), q.col("timestamp")), sa.Integer)
    bucket = sa.cast(sa.func.floor(seconds.op("/")(interval)), sa.Integer)
    start, end = (sqlite_stamp(m) for m in (q.config.start, q.config.end))
    bounds: list[Any] = [sa.bindparam("range_start", start), sa.bindparam("range_end", end)]
    g = _grouped(q, bucket, bounds)
    failures = None
    if q.schema.labels is not None:
        low, high = (sqlite_stamp(m) for m in events_range(q.config, q.schema.labels))
        failures = _failures_subquery(
            q,
            g,
            lambda ts: sa.func.group_concat(sa.cast(ts, sa.Text), constant("','")),
            sa.bindparam("events_low", low),
            sa.bindparam("events_high", high),
        )
    body = _outer(g, failures, constant("0"))
    # A typed first row, flagged and dropped by the reader: see source._sqlite_query.
    typed = {"asset": "''", "feature": "0.5", "events": "''"}
    head = sa.select(constant("1"), *(constant(typed.get(c.role, "0")) for c in out))
    order = (constant("1").desc(), constant("2"), constant("3"))
    compiled = sa.union_all(head, body).order_by(*order).compile(dialect=sqlite.dialect())
    params = tuple(str(compiled.params[name]) for name in compiled.positiontup or ())
    return str(compiled), params


def _postgres_query(q: _Query) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    windows = q.config.windows
    assert windows is not None
    interval = sa.select(setting_value(_INTERVAL_SETTING, sa.Double())).scalar_subquery()
    epoch = sa.func.date_part(constant("'epoch'"), q.col("timestamp"))
    bucket = sa.cast(sa.func.floor(epoch.op("/")(interval)), sa.BigInteger)
    aware = bool(getattr(q.types[q.col("timestamp").name], "timezone", False))
    stamp_type = sa.DateTime(timezone=aware)
    # Scalar subqueries: read once, where a bare current_setting() is called for every row.
    bounds = [sa.select(setting_value(n, stamp_type)).scalar_subquery() for n in RANGE_SETTINGS]
    g = _grouped(q, bucket, bounds)
    values = [postgres_stamp(m, aware) for m in (q.config.start, q.config.end)]
    values.append(str(windows.interval_s))
    settings: tuple[str, ...] = (*RANGE_SETTINGS, _INTERVAL_SETTING)
    failures = None
    if q.schema.labels is not None:
        failures = _failures_subquery(
            q,
            g,
            lambda ts: sa.func.string_agg(_micros(ts), constant("','")),
            setting_value(_EVENT_SETTINGS[0], stamp_type),
            setting_value(_EVENT_SETTINGS[1], stamp_type),
        )
        values += [postgres_stamp(m, aware) for m in events_range(q.config, q.schema.labels)]
        settings += _EVENT_SETTINGS
    query = _outer(g, failures).order_by(g.c.key, g.c.k)
    return postgres_sql(query), tuple(values), settings


def _index(position: int) -> sa.ColumnElement[int]:
    """A column's position in the check column: a constant of this module, not a value."""
    return constant(str(int(position)))


def _micros(ts: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """Microseconds since the epoch as text; a zoneless time counts as UTC."""
    return sa.cast(sa.cast(sa.extract("epoch", ts) * constant("1000000"), sa.BigInteger), sa.Text)


def _number(q: _Query, column: sa.ColumnElement[Any], col: SourceColumn) -> sa.ColumnElement[Any]:
    """A window column as a double (PostgreSQL's AVG of an integer would be NUMERIC)."""
    if q.backend == "sqlite":
        return column
    if isinstance(q.types[col.physical], sa.Boolean):
        column = sa.cast(column, sa.Integer)
    return sa.cast(column, postgresql.DOUBLE_PRECISION)


def _not_number(column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """SQLite: a value stored as text or bytes, which AVG would silently count as 0."""
    kinds = (constant("'text'"), constant("'blob'"))
    return sa.func.typeof(column).in_(kinds)


def _binary(q: _Query, column: sa.ColumnElement[Any], col: SourceColumn) -> sa.ColumnElement[Any]:
    """A target reading as 1 or 0, NULL when it is neither (or NULL)."""
    one, zero = constant("1"), constant("0")
    sql_type = q.types[col.physical]
    if q.backend == "postgresql" and isinstance(sql_type, sa.Boolean):
        return sa.case((column.is_(True), one), (column.is_(False), zero))
    if q.backend == "postgresql" and not textual(sql_type):
        return sa.case((column == one, one), (column == zero, zero))
    # SQLite keeps any kind in any column: 1, 1.0, '1' and 'TRUE' all read as text here.
    text = sa.func.lower(sa.func.trim(sa.cast(column, sa.Text)))
    return sa.case(
        (text.in_([constant(v) for v in _ONE]), one),
        (text.in_([constant(v) for v in _ZERO]), zero),
    )
