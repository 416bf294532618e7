"""The extract stage against SQLite files: range, time split, names, quoting, bad input, streaming."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training_tasks.config.org import SchemaConfig, parse_org_config
from training_tasks.config.training import TrainingConfig
from training_tasks.demo.scada import (
    ACME_LAYOUT,
    FEATURES,
    demo_org_config,
    generate_sensor_frame,
    write_scada_sqlite,
)
from training_tasks.errors import ExtractError
from training_tasks.stages.extract.stage import ExtractResult, extract

ORG = "acme"
T0 = datetime(2024, 3, 1, tzinfo=UTC)
ACME_SCHEMA = SchemaConfig(
    table="sensor_readings",
    timestamp_column="ts",
    asset_column="asset_id",
    column_mappings={**ACME_LAYOUT.columns, "failure": "failure_within_48h"},
)


def config(
    start: datetime = T0,
    end: datetime = T0 + timedelta(days=20),
    *,
    features: Sequence[str] = FEATURES,
    target: str = "failure",
    split: float = 0.2,
) -> TrainingConfig:
    return TrainingConfig(
        organization_id=ORG,
        start=start,
        end=end,
        hyperparameters={},
        validation_split=split,
        target_column=target,
        feature_columns=tuple(features),
    )


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate_sensor_frame(assets=4, days=20, interval_min=30, seed=7, start=T0)


@pytest.fixture
def acme_db(tmp_path: Path, frame: pd.DataFrame) -> str:
    path = tmp_path / "scada.db"
    write_scada_sqlite(path, frame, ACME_LAYOUT)
    return f"sqlite:///{path}"


def sa_stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def make_table(path: Path, table: str, columns: dict[str, str], rows: list[tuple[Any, ...]]) -> str:
    """A SQLite table with exactly these (quoted) column names and declared types."""
    names = ", ".join(f"{quote(name)} {kind}" for name, kind in columns.items())
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE {quote(table)} ({names})")
        marks = ", ".join("?" for _ in columns)
        conn.executemany(f"INSERT INTO {quote(table)} VALUES ({marks})", rows)
    return f"sqlite:///{path}"


def hourly(hours: int, target: Any = lambda i: int(i % 10 == 0)) -> list[tuple[Any, ...]]:
    """`hours` rows of (timestamp, value, target) starting at T0."""
    return [(sa_stamp(T0 + timedelta(hours=i)), float(i), target(i)) for i in range(hours)]


SIMPLE = {"ts": "DATETIME", "value": "FLOAT", "label": "INTEGER"}
SIMPLE_SCHEMA = SchemaConfig(table="readings", timestamp_column="ts")


def simple_config(hours: int = 100, **kwargs: Any) -> TrainingConfig:
    end = T0 + timedelta(hours=hours)
    return config(end=end, features=("value",), target="label", **kwargs)


def read(path: Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


def test_extract_reads_exactly_the_rows_in_the_range(
    acme_db: str, frame: pd.DataFrame, tmp_path: Path
) -> None:
    start, end = T0 + timedelta(days=2, minutes=10), T0 + timedelta(days=15, minutes=30)
    result = extract(acme_db, ACME_SCHEMA, config(start, end), tmp_path / "out")
    rows = pd.concat([read(result.train_path), read(result.holdout_path)])
    expected = frame[(frame.ts >= start) & (frame.ts < end)]
    assert len(rows) == len(expected) == result.rows_train + result.rows_holdout
    assert rows["timestamp"].min() == expected.ts.min() >= start
    assert rows["timestamp"].max() == expected.ts.max() < end
    assert rows["failure"].sum() == expected.failure.sum()


def test_rows_from_the_split_time_on_form_the_holdout(acme_db: str, tmp_path: Path) -> None:
    result = extract(acme_db, ACME_SCHEMA, config(split=0.25), tmp_path / "out")
    train, holdout = read(result.train_path), read(result.holdout_path)
    assert result.split_at == T0 + timedelta(days=15)
    assert train["timestamp"].max() < result.split_at <= holdout["timestamp"].min()
    assert (len(train), len(holdout)) == (result.rows_train, result.rows_holdout)
    assert result.positives_train == train["failure"].sum() > 0
    assert result.positives_holdout == holdout["failure"].sum() > 0


def test_each_file_keeps_the_source_order(
    acme_db: str, frame: pd.DataFrame, tmp_path: Path
) -> None:
    result = extract(acme_db, ACME_SCHEMA, config(), tmp_path / "out", batch_rows=333)
    train = read(result.train_path)
    expected = frame[frame.ts < result.split_at]
    assert list(train["asset_id"]) == list(expected.asset_id)
    assert list(train["temperature"]) == list(expected.temperature.astype("float32"))


def test_files_use_logical_names_float32_features_and_an_int8_target(
    acme_db: str, tmp_path: Path
) -> None:
    result = extract(acme_db, ACME_SCHEMA, config(), tmp_path / "out")
    schema = pq.read_schema(result.train_path)
    assert schema.names == ["timestamp", "asset_id", *FEATURES, "failure"]
    assert schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert {schema.field(name).type for name in FEATURES} == {pa.float32()}
    assert schema.field("failure").type == pa.int8()


def test_the_demo_org_config_extracts_as_it_is(acme_db: str, tmp_path: Path) -> None:
    org = parse_org_config(demo_org_config(ORG, acme_db, ACME_LAYOUT), ORG)
    result = extract(acme_db, org.schema_config, config(), tmp_path / "out")
    assert result.rows_train > 0 and result.positives_holdout > 0


def test_odd_table_and_column_names_are_quoted(tmp_path: Path) -> None:
    columns = {
        "when": "DATETIME",
        "select": "REAL",
        "Motor Current": "REAL",
        "pct%": "REAL",
        "Failed?": "INTEGER",
    }
    rows = [
        (sa_stamp(T0 + timedelta(hours=i)), i, 2.0 * i, 0.5, int(i % 4 == 0)) for i in range(40)
    ]
    url = make_table(tmp_path / "odd.db", 'Order "Items"', columns, rows)
    schema = SchemaConfig(
        table='Order "Items"',
        timestamp_column="when",
        column_mappings={
            "load": "select",
            "current": "Motor Current",
            "share": "pct%",
            "failed": "Failed?",
        },
    )
    cfg = config(
        end=T0 + timedelta(hours=40), features=("load", "current", "share"), target="failed"
    )
    result = extract(url, schema, cfg, tmp_path / "out")
    train = read(result.train_path)
    assert list(train.columns) == ["timestamp", "load", "current", "share", "failed"]
    assert list(train["current"][:3]) == [0.0, 2.0, 4.0]
    assert result.rows_train + result.rows_holdout == 40


def test_a_table_name_carrying_sql_is_refused_and_the_table_survives(
    acme_db: str, tmp_path: Path
) -> None:
    schema = SchemaConfig(table="x; DROP TABLE sensor_readings", timestamp_column="ts")
    with pytest.raises(ExtractError) as caught:
        extract(acme_db, schema, config(), tmp_path / "out")
    message = str(caught.value)
    assert "organization acme" in message and "schemaConfig.table" in message
    assert "'sensor_readings'" in message  # the tables that do exist
    with sqlite3.connect(acme_db.removeprefix("sqlite:///")) as conn:
        assert conn.execute("SELECT count(*) FROM sensor_readings").fetchone()[0] > 0


@pytest.mark.parametrize(
    ("schema", "features", "field"),
    [
        (ACME_SCHEMA, ("temperature", "pressure", "humidity"), "featureColumns[2]"),
        (SchemaConfig("sensor_readings", "time"), FEATURES, "schemaConfig.timestampColumn"),
        (
            SchemaConfig("sensor_readings", "ts", asset_column="asset"),
            FEATURES,
            "schemaConfig.assetColumn",
        ),
    ],
)
def test_an_unknown_column_names_the_org_the_field_and_the_real_columns(
    acme_db: str, tmp_path: Path, schema: SchemaConfig, features: Sequence[str], field: str
) -> None:
    with pytest.raises(ExtractError) as caught:
        extract(acme_db, schema, config(features=features), tmp_path / "out")
    message = str(caught.value)
    assert "organization acme" in message and field in message
    assert "'temperature_c'" in message and "'failure_within_48h'" in message
    assert not (tmp_path / "out").exists()


def test_an_unknown_column_that_differs_only_in_case_gets_a_hint(
    acme_db: str, tmp_path: Path
) -> None:
    schema = SchemaConfig("sensor_readings", "TS", column_mappings=ACME_SCHEMA.column_mappings)
    with pytest.raises(ExtractError, match="Did you mean 'ts'"):
        extract(acme_db, schema, config(), tmp_path / "out")


def test_an_empty_range_is_an_error_naming_the_range(acme_db: str, tmp_path: Path) -> None:
    start = T0 + timedelta(days=100)
    with pytest.raises(ExtractError, match=r"organization acme: .*no rows in dataRange 2024-06-09"):
        extract(acme_db, ACME_SCHEMA, config(start, start + timedelta(days=5)), tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


def test_a_target_with_other_values_than_0_and_1_is_refused_with_an_example(tmp_path: Path) -> None:
    url = make_table(tmp_path / "s.db", "readings", SIMPLE, hourly(100, lambda i: i % 3))
    with pytest.raises(ExtractError, match=r"targetColumn 'label'.* not binary: it holds 2"):
        extract(url, SIMPLE_SCHEMA, simple_config(), tmp_path / "out")


def test_a_null_in_the_target_is_refused(tmp_path: Path) -> None:
    url = make_table(
        tmp_path / "s.db", "readings", SIMPLE, hourly(100, lambda i: None if i == 50 else i % 2)
    )
    with pytest.raises(
        ExtractError, match=r"organization acme: targetColumn 'label'.* is NULL in 1 rows"
    ):
        extract(url, SIMPLE_SCHEMA, simple_config(), tmp_path / "out")


def test_a_range_with_one_class_only_is_refused(tmp_path: Path) -> None:
    url = make_table(tmp_path / "s.db", "readings", SIMPLE, hourly(100, lambda i: 0))
    with pytest.raises(ExtractError, match=r"all 100 rows .* have target 0 \(no failure\)"):
        extract(url, SIMPLE_SCHEMA, simple_config(), tmp_path / "out")


def test_a_holdout_with_one_class_suggests_changing_the_range_or_split(tmp_path: Path) -> None:
    url = make_table(tmp_path / "s.db", "readings", SIMPLE, hourly(100, lambda i: int(i in (5, 6))))
    with pytest.raises(ExtractError) as caught:
        extract(url, SIMPLE_SCHEMA, simple_config(), tmp_path / "out")
    message = str(caught.value)
    assert "holdout part" in message and "only one class" in message
    assert "dataRange" in message and "validationSplit" in message
    assert not list((tmp_path / "out").iterdir())  # no partial files are left behind


def test_an_empty_training_part_is_refused(tmp_path: Path) -> None:
    rows = [r for r in hourly(100) if r[0] >= sa_stamp(T0 + timedelta(hours=85))]
    url = make_table(tmp_path / "s.db", "readings", SIMPLE, rows)
    with pytest.raises(
        ExtractError, match=r"the training part .* is empty; change dataRange or validationSplit"
    ):
        extract(url, SIMPLE_SCHEMA, simple_config(), tmp_path / "out")


def test_text_targets_true_and_false_are_read_as_1_and_0(tmp_path: Path) -> None:
    columns = {**SIMPLE, "label": "TEXT"}
    url = make_table(
        tmp_path / "s.db",
        "readings",
        columns,
        hourly(100, lambda i: " True" if i % 5 == 0 else "false"),
    )
    result = extract(url, SIMPLE_SCHEMA, simple_config(), tmp_path / "out")
    assert result.positives_train + result.positives_holdout == 20


def test_null_features_stay_missing_even_at_the_start_of_the_table(tmp_path: Path) -> None:
    # NULLs over the first thousands of rows and whole numbers later must not trip the driver.
    rows = [
        (ts, None if i < 3000 else int(i), label) for i, (ts, _, label) in enumerate(hourly(5000))
    ]
    url = make_table(tmp_path / "s.db", "readings", {**SIMPLE, "value": "NUMERIC"}, rows)
    result = extract(url, SIMPLE_SCHEMA, simple_config(5000), tmp_path / "out", batch_rows=700)
    values = read(result.train_path)["value"]
    assert values[:3000].isna().all() and values[3000] == 3000.0


def test_text_in_a_feature_column_is_an_error_naming_the_feature(tmp_path: Path) -> None:
    rows = [(ts, "broken" if i == 30 else v, label) for i, (ts, v, label) in enumerate(hourly(100))]
    url = make_table(tmp_path / "s.db", "readings", {**SIMPLE, "value": ""}, rows)
    with pytest.raises(
        ExtractError, match=r"organization acme: featureColumns\[0\] \(column 'value'\)"
    ):
        extract(url, SIMPLE_SCHEMA, simple_config(), tmp_path / "out")


def test_a_missing_sqlite_file_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    with pytest.raises(ExtractError, match="does not exist"):
        extract(f"sqlite:///{missing}", SIMPLE_SCHEMA, simple_config(), tmp_path / "out")
    assert not missing.exists()


def test_small_batches_stream_with_progress_and_flat_memory(tmp_path: Path) -> None:
    url = make_table(tmp_path / "s.db", "readings", SIMPLE, hourly(20_000))
    events: list[dict[str, Any]] = []
    arrow_bytes: list[int] = []

    def progress(event: dict[str, Any]) -> None:
        events.append(event)
        arrow_bytes.append(pa.total_allocated_bytes())

    before = pa.total_allocated_bytes()
    result = extract(
        url,
        SIMPLE_SCHEMA,
        simple_config(20_000),
        tmp_path / "out",
        progress=progress,
        batch_rows=500,
    )
    assert len(events) >= 40 and {e["stage"] for e in events} == {"extract"}
    assert [e["rows"] for e in events] == sorted(e["rows"] for e in events)
    assert events[-1]["rows"] == 20_000
    groups = pq.ParquetFile(result.train_path).metadata
    assert max(groups.row_group(i).num_rows for i in range(groups.num_row_groups)) == 500
    # Holding all 20,000 rows takes about 500 kB of Arrow memory; a stream holds a few batches.
    assert max(arrow_bytes) - before < 100_000


def test_batch_size_changes_neither_the_rows_nor_the_counts(acme_db: str, tmp_path: Path) -> None:
    small = extract(acme_db, ACME_SCHEMA, config(), tmp_path / "a", batch_rows=97)
    large = extract(acme_db, ACME_SCHEMA, config(), tmp_path / "b")
    assert read(small.train_path).equals(read(large.train_path))
    assert (small.rows_holdout, small.positives_train) == (
        large.rows_holdout,
        large.positives_train,
    )


def test_the_data_hash_follows_the_data(acme_db: str, tmp_path: Path) -> None:
    first = extract(acme_db, ACME_SCHEMA, config(), tmp_path / "a")
    again = extract(acme_db, ACME_SCHEMA, config(), tmp_path / "b")
    shorter = extract(acme_db, ACME_SCHEMA, config(end=T0 + timedelta(days=19)), tmp_path / "c")
    assert first.data_hash == again.data_hash != shorter.data_hash
    assert len(first.data_hash) == 64


def test_the_result_round_trips_through_json(acme_db: str, tmp_path: Path) -> None:
    result = extract(acme_db, ACME_SCHEMA, config(), tmp_path / "out")
    wire = json.loads(json.dumps(result.as_dict()))
    assert wire["split_at"] == "2024-03-17T00:00:00Z"
    assert ExtractResult.from_dict(wire) == result


def test_a_feature_named_like_an_output_column_is_refused(acme_db: str, tmp_path: Path) -> None:
    schema = SchemaConfig("sensor_readings", "ts", column_mappings={"timestamp": "temperature_c"})
    with pytest.raises(ExtractError, match=r"featureColumns\[0\] is named 'timestamp'"):
        extract(
            acme_db,
            schema,
            config(features=("timestamp",), target="failure_within_48h"),
            tmp_path / "o",
        )


def test_a_sqlite_path_with_spaces_and_a_hash_opens_that_file_read_only(
    tmp_path: Path, frame: pd.DataFrame
) -> None:
    folder = tmp_path / "plant #2 data"
    folder.mkdir()
    write_scada_sqlite(folder / "scada 2024.db", frame, ACME_LAYOUT)
    result = extract(f"sqlite:///{folder / 'scada 2024.db'}", ACME_SCHEMA, config(), tmp_path / "o")
    assert result.rows_train > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "plant #2 data"]
