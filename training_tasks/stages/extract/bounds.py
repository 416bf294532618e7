"""The time span an organization's SCADA table holds: MIN and MAX of its timestamp column.

One aggregate query, built like the extract query from checked and quoted names. On PostgreSQL,
MIN and MAX of an indexed column are read from the two ends of the index, so the query stays
cheap whatever the table's size. A window with `windowEnd: "latestData"` ends at the newest row,
and an empty range's error names the span the table does hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from training_tasks import fields as f
from training_tasks.config.org import SchemaConfig
from training_tasks.errors import ExtractError
from training_tasks.redaction import mask_url
from training_tasks.stages.extract.columns import timestamp_column_type
from training_tasks.stages.extract.errors import translate_error
from training_tasks.stages.extract.source import source_engine


@dataclass(frozen=True)
class TimeSpan:
    """The oldest and newest timestamps in a table; both None when it has no rows."""

    first: datetime | None
    last: datetime | None

    def describe(self) -> str:
        """The span in words, for a message."""
        if self.first is None or self.last is None:
            return "the table holds no rows at all"
        return f"the table holds rows from {f.iso(self.first)} to {f.iso(self.last)}"


def table_time_span(
    source_url: str, schema: SchemaConfig, org: str, *, connect_timeout_s: float
) -> TimeSpan:
    """MIN and MAX of the organization's timestamp column, in UTC."""
    engine, backend, _ = source_engine(source_url, org, connect_timeout_s)
    ts: sa.ColumnClause[Any] = sa.column(schema.timestamp_column)
    table = sa.table(schema.table, ts, schema=schema.schema)
    query = sa.select(sa.func.min(ts), sa.func.max(ts)).select_from(table)
    try:
        with engine.connect() as conn:
            timestamp_column_type(conn, schema, org)
            first, last = conn.execute(query).one()
    except sa.exc.DBAPIError as exc:
        raise translate_error(exc.orig or exc, org, backend, mask_url(source_url)) from exc
    finally:
        engine.dispose()
    field = f"schemaConfig.timestampColumn {schema.timestamp_column!r}"
    return TimeSpan(_utc(first, field, org), _utc(last, field, org))


def latest_timestamp(
    source_url: str, schema: SchemaConfig, org: str, *, connect_timeout_s: float
) -> datetime | None:
    """The newest timestamp in the organization's table, or None when it has no rows."""
    return table_time_span(source_url, schema, org, connect_timeout_s=connect_timeout_s).last


def _utc(value: object, field: str, org: str) -> datetime | None:
    """A bound as an aware UTC datetime; SQLite keeps text, and a value without a zone is UTC."""
    if value is None:
        return None
    moment = value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            moment = None
    if not isinstance(moment, datetime):
        raise ExtractError(
            f"organization {org}: {field} holds {value!r}, which is not a timestamp; point "
            "schemaConfig.timestampColumn at a column of timestamps or fix the data"
        )
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
