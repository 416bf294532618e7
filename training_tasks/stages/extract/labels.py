"""Targets computed from failure events inside the extract query (`schemaConfig.labels`).

A reading is positive when a failure of its asset falls in (ts, ts + horizon]; readings with a
failure in [ts - excludeAfter, ts] (repair, restart) are left out. Both are correlated EXISTS
subqueries on the events table, so the database does the work row by row while the result
streams; an index on the events table's (asset, timestamp) columns keeps each probe a range scan.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from training_tasks.config.org import EventLabels, SchemaConfig
from training_tasks.errors import ExtractError

# Fields of the label settings; their values are bound, never rendered into the query.
HORIZON_PARAM = "label_horizon"
EXCLUDE_PARAM = "label_exclude"
# On PostgreSQL the values travel in session settings, in this order (see source.py).
SETTINGS = ("training.label_horizon", "training.label_exclude")
Shift = Callable[[sa.ColumnElement[Any], str], sa.ColumnElement[Any]]


def check_events_table(
    inspector: sa.Inspector, schema: SchemaConfig, labels: EventLabels, org: str
) -> sa.types.TypeEngine[Any]:
    """Check the events table and its two columns exist; the type of its timestamp column."""
    where = "schemaConfig.labels"
    if not inspector.has_table(labels.events_table, schema=schema.schema):
        tables = sorted(inspector.get_table_names(schema=schema.schema))
        raise ExtractError(
            f"organization {org}: {where}.eventsTable {labels.events_table!r} does not exist in "
            f"the SCADA database; tables there: {', '.join(map(repr, tables[:30])) or '(none)'}. "
            f"Fix {where}.eventsTable"
        )
    real = {
        c["name"]: c["type"]
        for c in inspector.get_columns(labels.events_table, schema=schema.schema)
    }
    for key, column in (
        ("assetColumn", labels.asset_column),
        ("timestampColumn", labels.timestamp_column),
    ):
        if column not in real:
            raise ExtractError(
                f"organization {org}: {where}.{key} names column {column!r}, which table "
                f"{labels.events_table!r} does not have; its columns are "
                f"{', '.join(map(repr, sorted(real)))}. Fix {where}.{key}"
            )
    return real[labels.timestamp_column]


def check_same_zone(
    readings: sa.types.TypeEngine[Any], events: sa.types.TypeEngine[Any], org: str
) -> None:
    """Refuse comparing a zoned and a zoneless timestamp: PostgreSQL would use the session zone."""
    if bool(getattr(readings, "timezone", False)) != bool(getattr(events, "timezone", False)):
        raise ExtractError(
            f"organization {org}: schemaConfig.labels.timestampColumn is of type {events} but "
            f"schemaConfig.timestampColumn is of type {readings}; both must be with or both "
            "without a time zone, or failures would be matched to readings hours apart"
        )


def label_parts(
    readings: sa.TableClause, schema: SchemaConfig, shift: Shift
) -> tuple[sa.ColumnElement[Any] | None, list[sa.ColumnElement[bool]]]:
    """The 0/1 label and the clause leaving out readings just after a failure (if labelled).

    `shift(ts, param)` is the backend's `ts` moved by the signed interval bound as `param`.
    """
    labels = schema.labels
    if labels is None:
        return None, []
    asset, ts = readings.c[schema.asset_column or ""], readings.c[schema.timestamp_column]

    def failure_near(name: str, low: Any, high: Any, low_open: bool) -> sa.Exists:
        events = sa.table(
            labels.events_table,
            sa.column(labels.asset_column),
            sa.column(labels.timestamp_column),
            schema=schema.schema,
        ).alias(name)
        failed = events.c[labels.timestamp_column]
        after_low = failed > low if low_open else failed >= low
        return sa.exists().where(events.c[labels.asset_column] == asset, after_low, failed <= high)

    ahead = failure_near("failure_ahead", ts, shift(ts, HORIZON_PARAM), low_open=True)
    behind = failure_near("failure_behind", shift(ts, EXCLUDE_PARAM), ts, low_open=False)
    # Literal 1/0, not parameters: the PostgreSQL query runs through COPY, which takes none.
    one: sa.ColumnElement[int] = sa.literal_column("1")
    zero: sa.ColumnElement[int] = sa.literal_column("0")
    return sa.case((ahead, one), else_=zero), [sa.not_(behind)]


def label_values(schema: SchemaConfig) -> dict[str, str]:
    """The two windows as signed intervals in seconds, which both backends add to a time."""
    if schema.labels is None:
        return {}
    return {
        HORIZON_PARAM: f"+{_seconds(schema.labels.horizon_hours)} seconds",
        EXCLUDE_PARAM: f"-{_seconds(schema.labels.exclude_after_hours)} seconds",
    }


def sqlite_shift(ts: sa.ColumnElement[Any], param: str) -> sa.ColumnElement[Any]:
    """`ts` moved by the bound interval, as text in SQLAlchemy's SQLite timestamp format."""
    # SQLAlchemy stores microseconds; strftime gives milliseconds, so '000' restores the width
    # and text comparison stays time order.
    moved = sa.func.strftime(sa.literal_column("'%Y-%m-%d %H:%M:%f'"), ts, sa.bindparam(param))
    return moved.op("||")(sa.literal_column("'000'"))


def postgres_shift(ts: sa.ColumnElement[Any], param: str) -> sa.ColumnElement[Any]:
    """`ts` plus the interval held in the session setting that the parameter was bound into."""
    name = SETTINGS[(HORIZON_PARAM, EXCLUDE_PARAM).index(param)]
    setting = sa.func.current_setting(sa.literal_column(f"'{name}'"))
    return ts + sa.cast(setting, postgresql.INTERVAL)


def _seconds(hours: float) -> str:
    return repr(float(hours) * 3600.0)
