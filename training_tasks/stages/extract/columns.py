"""The configured columns of the extract, checked against the live SCADA schema.

Every table and column name comes from the organization's configuration, so each is looked up
with SQLAlchemy's inspector before any query runs; a missing or mistyped one is refused with the
field that names it, the columns the table does have and a close match.
"""

from __future__ import annotations

import difflib
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from training_tasks.config.org import SchemaConfig
from training_tasks.config.training import TrainingConfig, check_target_not_feature
from training_tasks.errors import ConfigError, ExtractError
from training_tasks.stages.extract import labels as event_labels
from training_tasks.stages.extract.errors import translate_error
from training_tasks.stages.extract.plan import ASSET_FIELD, TIMESTAMP_FIELD, SourceColumn


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


def checked_columns(
    engine: sa.Engine, masked_url: str, schema: SchemaConfig, config: TrainingConfig
) -> tuple[list[SourceColumn], dict[str, sa.types.TypeEngine[Any]]]:
    """The columns the config reads, checked against the live schema, and the table's types."""
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
    where = "windows.columns" if config.windows is not None else "featureColumns"
    for i, name in enumerate(config.feature_columns):
        cols.append(SourceColumn(f"{where}[{i}]", name, schema.physical(name), "feature"))
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


def textual(sql_type: sa.types.TypeEngine[Any]) -> bool:
    """Whether a column type holds text (its values are compared as text)."""
    try:
        return issubclass(sql_type.python_type, str)
    except NotImplementedError:
        return False


def _listing(names: list[str], limit: int = 30) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return (shown + more) or "(none)"
