"""Window extracts against a real PostgreSQL: the same files as from SQLite, streamed by COPY."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from tests.unit.test_window_extract import (
    END,
    T0,
    assert_file,
    expected_files,
    read,
    window_setup,
    write_source,
)
from training_tasks.stages.extract.source import read_batches
from training_tasks.stages.extract.stage import extract
from training_tasks.stages.extract.window_query import plan_window_source

pytestmark = pytest.mark.integration


def conninfo(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(False)


@pytest.mark.parametrize("zoned", [True, False])
def test_postgres_and_sqlite_write_the_same_window_files(
    postgres_url: str, tmp_path: Path, zoned: bool
) -> None:
    rows = write_source(postgres_url, zoned=zoned)
    with psycopg.connect(conninfo(postgres_url), autocommit=True) as conn:
        # Neither the session's zone nor a collation that sorts "a" first may change a file.
        name = sa.make_url(postgres_url).database
        conn.execute(f"ALTER DATABASE \"{name}\" SET timezone = 'America/New_York'")
        conn.execute('ALTER TABLE readings ALTER asset TYPE text COLLATE "und-x-icu"')
        conn.execute('ALTER TABLE failure_events ALTER asset_id TYPE text COLLATE "und-x-icu"')
    lite = f"sqlite:///{tmp_path / 'scada.db'}"
    write_source(lite)
    schema, config = window_setup()
    from_pg = extract(postgres_url, schema, config, tmp_path / "pg", batch_rows=64)
    from_lite = extract(lite, schema, config, tmp_path / "lite", batch_rows=64)
    want_train, want_holdout = expected_files(rows, config)
    assert_file(from_pg.train_path, want_train)
    assert_file(from_pg.holdout_path, want_holdout)
    assert from_pg.data_hash == from_lite.data_hash
    assert from_pg.holdout_sha256 == from_lite.holdout_sha256
    assert from_pg.readings == from_lite.readings
    assert from_pg.events_path is not None and from_lite.events_path is not None
    assert read(from_pg.events_path).equals(read(from_lite.events_path))
    assert pq.read_schema(from_pg.train_path) == pq.read_schema(from_lite.train_path)


def test_the_window_query_streams_through_copy_with_every_value_bound(postgres_url: str) -> None:
    rows = write_source(postgres_url, zoned=True)
    schema, config = window_setup()
    plan = plan_window_source(postgres_url, schema, config, connect_timeout_s=5)
    # No value is written into the query: the range, interval and events bounds are settings.
    for text in ("2024-03-01", "600", "7200"):
        assert text not in plan.sql
    assert "$1" not in plan.sql and len(plan.settings) == len(plan.parameters) == 5
    batches = list(read_batches(plan, 50))
    buckets = {(r["asset"], r["ts"].timestamp() // 600) for r in rows if T0 <= r["ts"] < END}
    assert sum(b.num_rows for b in batches) == len(buckets)  # one row per bucket with readings
    assert {b.schema.names[0] for b in batches} == {"asset_id"}


def test_numeric_and_integer_window_columns_are_averaged_as_numbers(
    postgres_url: str, tmp_path: Path
) -> None:
    write_source(postgres_url, zoned=True)
    with psycopg.connect(conninfo(postgres_url), autocommit=True) as conn:
        conn.execute("ALTER TABLE readings ALTER vibration TYPE numeric(10, 3)")
        conn.execute("ALTER TABLE readings ALTER temperature TYPE integer USING temperature::int")
    schema, config = window_setup()
    result = extract(postgres_url, schema, config, tmp_path / "out")
    train = read(result.train_path)
    assert train.vibration.dtype.name == "float32" and train.temperature.notna().all()
    assert result.rows_train > 0 and train.timestamp.min() > T0 and train.timestamp.max() < END
