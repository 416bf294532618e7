"""The extract stage against a real PostgreSQL through the ADBC driver."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import psycopg
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from psycopg import sql

from training_tasks.config.org import SchemaConfig
from training_tasks.config.training import TrainingConfig
from training_tasks.demo.scada import (
    ACME_LAYOUT,
    FEATURES,
    GLOBEX_LAYOUT,
    ScadaLayout,
    generate_sensor_frame,
    write_scada_postgres,
    write_scada_sqlite,
)
from training_tasks.errors import ExtractError, SourceUnavailableError
from training_tasks.stages.extract.stage import extract

pytestmark = pytest.mark.integration
ORG = "globex"
T0 = datetime(2024, 3, 1, tzinfo=UTC)


def config(
    start: datetime = T0, end: datetime = T0 + timedelta(days=20), **changes: object
) -> TrainingConfig:
    base = TrainingConfig(
        organization_id=ORG,
        start=start,
        end=end,
        hyperparameters={},
        validation_split=0.2,
        target_column="failure",
        feature_columns=FEATURES,
    )
    return base if not changes else TrainingConfig(**{**base.__dict__, **changes})


def schema_for(layout: ScadaLayout) -> SchemaConfig:
    return SchemaConfig(
        table=layout.table,
        timestamp_column=layout.timestamp_column,
        asset_column=layout.asset_column,
        column_mappings={**layout.columns, "failure": layout.target_column},
    )


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate_sensor_frame(assets=4, days=20, interval_min=30, seed=3, start=T0)


def conninfo(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(False)


def new_york_sessions(url: str) -> None:
    """Make New York the session time zone of the database, which must not shift any row."""
    database = sql.Identifier(sa.make_url(url).database or "")
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET timezone = 'America/New_York'").format(database)
        )


def read(path: Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


def test_extract_reads_the_range_from_postgres_split_by_time(
    postgres_url: str, frame: pd.DataFrame, tmp_path: Path
) -> None:
    new_york_sessions(postgres_url)
    write_scada_postgres(postgres_url, frame, ACME_LAYOUT)
    start, end = T0 + timedelta(days=1, minutes=5), T0 + timedelta(days=19)
    result = extract(postgres_url, schema_for(ACME_LAYOUT), config(start, end), tmp_path / "out")
    train, holdout = read(result.train_path), read(result.holdout_path)
    expected = frame[(frame.ts >= start) & (frame.ts < end)]
    assert len(train) + len(holdout) == len(expected)
    assert start <= train["timestamp"].min() and holdout["timestamp"].max() < end
    assert train["timestamp"].max() < result.split_at <= holdout["timestamp"].min()
    assert result.positives_train + result.positives_holdout == expected.failure.sum()


def test_mixed_case_and_spaced_columns_and_a_boolean_target_work_on_postgres(
    postgres_url: str, frame: pd.DataFrame, tmp_path: Path
) -> None:
    write_scada_postgres(postgres_url, frame, GLOBEX_LAYOUT)  # "MotorCurrent", "oil pressure"
    result = extract(postgres_url, schema_for(GLOBEX_LAYOUT), config(), tmp_path / "out")
    train = read(result.train_path)
    expected = frame[frame.ts < result.split_at]
    assert list(train.columns) == ["timestamp", "asset_id", *FEATURES, "failure"]
    assert list(train["current"]) == list(expected.current.astype("float32"))
    assert list(train["failure"]) == list(expected.failure)


def test_postgres_and_sqlite_sources_give_identical_files(
    postgres_url: str, frame: pd.DataFrame, tmp_path: Path
) -> None:
    write_scada_postgres(postgres_url, frame, GLOBEX_LAYOUT)
    write_scada_sqlite(tmp_path / "scada.db", frame, GLOBEX_LAYOUT)
    schema = schema_for(GLOBEX_LAYOUT)
    from_pg = extract(postgres_url, schema, config(), tmp_path / "pg", batch_rows=1000)
    from_sqlite = extract(
        f"sqlite:///{tmp_path / 'scada.db'}", schema, config(), tmp_path / "lite", batch_rows=1000
    )
    assert from_pg.data_hash == from_sqlite.data_hash
    assert from_pg.rows_holdout == from_sqlite.rows_holdout > 0


def test_an_unknown_column_on_postgres_names_the_field_and_the_real_columns(
    postgres_url: str, frame: pd.DataFrame, tmp_path: Path
) -> None:
    write_scada_postgres(postgres_url, frame, GLOBEX_LAYOUT)
    schema = schema_for(GLOBEX_LAYOUT)
    wrong = SchemaConfig(
        **{
            **schema.__dict__,
            "column_mappings": {**schema.column_mappings, "current": "motorcurrent"},
        }
    )
    with pytest.raises(ExtractError) as caught:
        extract(postgres_url, wrong, config(), tmp_path / "out")
    message = str(caught.value)
    assert "organization globex" in message and "featureColumns[3]" in message
    assert "'MotorCurrent'" in message and "Did you mean 'MotorCurrent'?" in message


def test_a_table_name_carrying_sql_is_refused_on_postgres_and_the_table_survives(
    postgres_url: str, frame: pd.DataFrame, tmp_path: Path
) -> None:
    write_scada_postgres(postgres_url, frame, ACME_LAYOUT)
    schema = SchemaConfig(
        table="sensor_readings; DROP TABLE sensor_readings", timestamp_column="ts"
    )
    with pytest.raises(ExtractError, match=r"schemaConfig\.table"):
        extract(postgres_url, schema, config(), tmp_path / "out")
    with psycopg.connect(conninfo(postgres_url)) as conn:
        assert conn.execute("SELECT count(*) FROM sensor_readings").fetchone() == (len(frame),)


def test_a_naive_timestamp_column_and_numeric_values_are_read_as_utc_floats(
    postgres_url: str, tmp_path: Path
) -> None:
    new_york_sessions(postgres_url)
    with psycopg.connect(conninfo(postgres_url)) as conn:
        conn.execute('CREATE TABLE "Readings" (at timestamp, "Load" numeric(8,3), hit integer)')
        conn.execute(
            """INSERT INTO "Readings" SELECT timestamp '2024-03-01' + i * interval '1 hour',
               i / 4.0, (i % 5 = 0)::int FROM generate_series(0, 99) i"""
        )
    schema = SchemaConfig("Readings", "at", column_mappings={"load": "Load", "failure": "hit"})
    cfg = config(T0 + timedelta(hours=10), T0 + timedelta(hours=60), feature_columns=("load",))
    result = extract(postgres_url, schema, cfg, tmp_path / "out")
    train = read(result.train_path)
    assert train["timestamp"].iloc[0] == T0 + timedelta(hours=10)
    assert train["load"].iloc[0] == 2.5 and str(train["load"].dtype) == "float32"
    assert result.rows_train + result.rows_holdout == 50


def test_a_non_binary_target_on_postgres_is_refused_with_an_example(
    postgres_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(conninfo(postgres_url)) as conn:
        conn.execute("CREATE TABLE r (ts timestamptz, v real, label smallint)")
        conn.execute(
            """INSERT INTO r SELECT timestamptz '2024-03-01 00:00Z' + i * interval '1 hour',
               i, i % 3 FROM generate_series(0, 99) i"""
        )
    schema = SchemaConfig("r", "ts", column_mappings={"failure": "label"})
    with pytest.raises(ExtractError, match=r"organization globex: targetColumn .* it holds 2"):
        extract(postgres_url, schema, config(feature_columns=("v",)), tmp_path / "out")


def test_an_unreachable_database_is_a_transient_error_with_the_password_masked(
    tmp_path: Path,
) -> None:
    url = "postgresql+psycopg://scada:s3cret-pw@127.0.0.1:1/plant"
    with pytest.raises(SourceUnavailableError) as caught:
        extract(url, schema_for(ACME_LAYOUT), config(), tmp_path / "out", connect_timeout_s=2)
    message = str(caught.value)
    assert caught.value.transient
    assert "organization globex" in message and "scada:***@127.0.0.1:1" in message
    assert "s3cret-pw" not in message
