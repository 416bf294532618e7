"""Checks a training request against the real schema of the organization's SCADA table.

Table and column names come from configuration, so before any query they are looked up in the
database's own catalog; a name that is not there is refused with the field that named it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, inspect
from sqlalchemy.exc import NoSuchTableError, OperationalError

from training_tasks.errors import ConfigError, SourceUnavailableError
from training_tasks.org_config import SchemaConfig, mask_url
from training_tasks.training_config import TrainingConfig


def check_source_schema(
    source_url: str, schema: SchemaConfig, config: TrainingConfig
) -> dict[str, str]:
    """Return {column: type} of the table; raise ConfigError for a table or column that is not there."""
    engine = _engine(source_url)
    try:
        columns = table_columns(engine, schema, source_url)
    finally:
        engine.dispose()
    wanted = [
        ("schemaConfig.timestampColumn", schema.timestamp_column),
        *([("schemaConfig.assetColumn", schema.asset_column)] if schema.asset_column else []),
        ("targetColumn", schema.physical(config.target_column)),
        *(
            (f"featureColumns[{i}]", schema.physical(name))
            for i, name in enumerate(config.feature_columns)
        ),
    ]
    for field, column in wanted:
        if column not in columns:
            raise ConfigError(
                field,
                f"column {column!r} does not exist in table {schema.table!r} of organization "
                f"{config.organization_id}; its columns are {', '.join(sorted(columns))}",
            )
    return columns


def table_columns(engine: Engine, schema: SchemaConfig, source_url: str) -> dict[str, str]:
    """The table's columns and their types, from the database catalog."""
    try:
        found = inspect(engine).get_columns(schema.table, schema=schema.schema)
    except NoSuchTableError:
        raise ConfigError(
            "schemaConfig.table",
            f"table {schema.table!r} does not exist in {mask_url(source_url)}",
        ) from None
    except OperationalError as exc:
        raise SourceUnavailableError(
            f"cannot reach the SCADA database {mask_url(source_url)} ({exc.orig}); "
            "the run is retried, check that the database is up"
        ) from None
    if not found:
        raise ConfigError(
            "schemaConfig.table", f"table {schema.table!r} does not exist in {mask_url(source_url)}"
        )
    return {col["name"]: str(col["type"]) for col in found}


def _engine(source_url: str) -> Any:
    from pathlib import Path

    from sqlalchemy.engine import make_url

    url = make_url(source_url)
    if url.get_backend_name() == "sqlite":
        # Open read-only, so a mistyped path is reported instead of created empty.
        path = Path(url.database or "")
        if not path.is_file():
            raise ConfigError("scadaDbConfig.url", f"SQLite file {path} does not exist")
        return create_engine(f"sqlite:///file:{path.resolve()}?mode=ro&uri=true")
    return create_engine(source_url)
