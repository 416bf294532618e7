"""Window extracts (`mlModelConfig.windows`) against SQLite: buckets, gaps, labels, flags, files."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from training_tasks.config.org import SchemaConfig, parse_org_config
from training_tasks.config.training import EVENT_LABEL_COLUMN, TrainingConfig
from training_tasks.errors import ExtractError
from training_tasks.stages.extract.stage import ExtractResult, extract

T0 = datetime(2024, 3, 1, tzinfo=UTC)
END = T0 + timedelta(days=1)
MINUTE, HOUR = timedelta(minutes=1), timedelta(hours=1)
INTERVAL = 10 * MINUTE
INTERVAL_S, LENGTH, MAX_GAP_S = 600, 3, 1200
HORIZON, EXCLUDE = 2 * HOUR, 1 * HOUR
COLUMNS = ["vibration", "temperature"]
ASSETS = ("A", "B", "a")  # byte order: "A" < "B" < "a"
# Failures: A's label training and holdout rows; B's first one (before the range) excludes its
# first buckets; A's last one (after the range, within the horizon) labels its last buckets.
FAILURES = {
    "A": [T0 + 12 * HOUR, T0 + 21 * HOUR, END + HOUR],
    "B": [T0 - 20 * MINUTE, END + 3 * HOUR],
    "a": [T0 + 20 * HOUR],
}
LABELS = {
    "eventsTable": "failure_events",
    "assetColumn": "asset_id",
    "timestampColumn": "failed_at",
    "horizonHours": 2,
    "excludeAfterHours": 1,
}
WINDOWS = {"interval": "10min", "length": LENGTH, "columns": COLUMNS, "maxGap": "20min"}
FILE_COLUMNS = ["timestamp", "asset_id", *COLUMNS, EVENT_LABEL_COLUMN, "example"]


def org_doc(*, labels: bool = True, **windows: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"table": "readings", "timestampColumn": "ts", "assetColumn": "asset"}
    model: dict[str, Any] = {"windows": {**WINDOWS, **windows}}
    if labels:
        schema["labels"] = dict(LABELS)
    else:
        model["targetColumn"] = "failure"
    return {
        "mlModelConfig": model,
        "scadaDbConfig": {"url": "sqlite:///x.db"},
        "schemaConfig": schema,
    }


def window_setup(
    *, start: datetime = T0, end: datetime = END, split: float = 0.25, **windows: Any
) -> tuple[SchemaConfig, TrainingConfig]:
    org = parse_org_config(org_doc(**windows), "acme")
    request = {
        "dataRange": {"startDate": start.isoformat(), "endDate": end.isoformat()},
        "validationSplit": split,
    }
    return org.schema_config, org.training_config(request, T0)


def in_gap(asset: str, ts: datetime) -> bool:
    """Readings missing: A twice (20 min: filled; 50 min: a break), `a` most of the day."""
    hours = (ts - T0) / HOUR
    if asset == "A":
        return 3 <= hours < 3 + 20 / 60 or 6 <= hours < 6 + 50 / 60
    if asset == "a":
        return not (0 <= hours < 1 or 17 <= hours < 24)
    return False


def temperature_missing(asset: str, ts: datetime) -> bool:
    """A NULL temperature: one bucket of A (filled), an hour of B (a break)."""
    hours = (ts - T0) / HOUR
    return (asset == "A" and 9 <= hours < 9 + 10 / 60) or (asset == "B" and 14 <= hours < 15)


def source_rows() -> list[dict[str, Any]]:
    """A reading every 2 minutes (5 per bucket) of each asset, plus one on each side of the range."""
    rows = []
    for asset in ASSETS:
        for i in range(-1, 24 * 30 + 1):  # the first is before start, the last at end
            ts = T0 + 2 * i * MINUTE
            if in_gap(asset, ts):
                continue
            vibration = ((3 * i + ord(asset)) % 11) * 0.5  # halves: sums are exact in any order
            temperature = None if temperature_missing(asset, ts) else 20.0 + (i % 7) * 0.25
            failure = int(asset == "B" and i % 97 == 0)
            rows.append(
                {
                    "ts": ts,
                    "asset": asset,
                    "vibration": vibration,
                    "temperature": temperature,
                    "failure": failure,
                }
            )
    return rows


def write_source(url: str, *, zoned: bool = False) -> list[dict[str, Any]]:
    """The readings and failure events tables; the readings as written."""
    stamp = sa.DateTime(timezone=zoned)
    meta = sa.MetaData()
    readings = sa.Table(
        "readings",
        meta,
        sa.Column("ts", stamp),
        sa.Column("asset", sa.Text),
        sa.Column("vibration", sa.Float),
        sa.Column("temperature", sa.Float),
        sa.Column("failure", sa.Integer),
    )
    events = sa.Table(
        "failure_events", meta, sa.Column("asset_id", sa.Text), sa.Column("failed_at", stamp)
    )

    def stamp_of(moment: datetime) -> datetime:
        return moment if zoned else moment.replace(tzinfo=None)

    rows = source_rows()
    failures = [{"asset_id": a, "failed_at": stamp_of(t)} for a, ts in FAILURES.items() for t in ts]
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        meta.create_all(conn)
        conn.execute(readings.insert(), [{**r, "ts": stamp_of(r["ts"])} for r in rows])
        conn.execute(events.insert(), failures)
    engine.dispose()
    return rows


def expected_files(
    rows: list[dict[str, Any]], config: TrainingConfig, *, labels: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two files worked out bucket by bucket, as the contract words them."""
    frame = pd.DataFrame([r for r in rows if config.start <= r["ts"] < config.end])
    frame["k"] = [math.floor(ts.timestamp() / INTERVAL_S) for ts in frame["ts"]]
    written = [row for asset in sorted(set(frame.asset)) for row in _asset_rows(frame, asset)]
    table = pd.DataFrame(written)
    if labels:
        table["label"] = [_label(r) for r in written]
        table["excluded"] = [_excluded(r) for r in written]
    split_at = config.start + (config.end - config.start) * (1 - config.validation_split)
    train_end = split_at - timedelta(seconds=config.purge_gap_s)
    context = split_at - (LENGTH - 1) * INTERVAL_S * timedelta(seconds=1)
    parts = []
    for low, high, first in ((config.start, train_end, config.start), (context, END, split_at)):
        part = table[(table.timestamp >= low) & (table.timestamp < high)].copy()
        example = (part.run >= LENGTH) & ~part.excluded & (part.timestamp >= first)
        part[EVENT_LABEL_COLUMN if labels else "failure"] = np.where(example, part.label, 0)
        part["example"] = example.astype(int)
        parts.append(part.drop(columns=["run", "excluded", "label"]).reset_index(drop=True))
    return parts[0], parts[1]


def _asset_rows(frame: pd.DataFrame, asset: str) -> Iterator[dict[str, Any]]:
    means = frame[frame.asset == asset].groupby("k")[[*COLUMNS, "failure"]]
    mean, most = means.mean(), means.max()
    last: dict[str, tuple[float, int]] = {}
    previous, run, target = None, 0, 0
    for k in range(int(mean.index.min()), int(mean.index.max()) + 1):
        values = {}
        for column in COLUMNS:
            value = mean[column].get(k, np.nan)
            if not np.isnan(value):
                last[column] = (value, k)
                values[column] = value
            elif column in last and (k - last[column][1]) * INTERVAL_S <= MAX_GAP_S:
                values[column] = last[column][0]
        target = int(most["failure"].get(k, target))
        if len(values) < len(COLUMNS):
            continue
        run = run + 1 if previous == k - 1 else 1
        previous = k
        t = datetime.fromtimestamp((k + 1) * INTERVAL_S, UTC)
        yield {
            "timestamp": t,
            "asset_id": asset,
            **values,
            "label": target,
            "run": run,
            "excluded": False,
        }


def _label(row: dict[str, Any]) -> int:
    t = row["timestamp"]
    return int(any(t < f <= t + HORIZON for f in FAILURES[row["asset_id"]]))


def _excluded(row: dict[str, Any]) -> bool:
    t = row["timestamp"]
    return any(t - EXCLUDE <= f <= t for f in FAILURES[row["asset_id"]])


def read(path: Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


def assert_file(path: Path, want: pd.DataFrame) -> None:
    got = read(path)
    assert list(got.columns) == list(want.columns)
    assert got.timestamp.dt.tz is not None
    pd.testing.assert_frame_equal(
        got.astype({"timestamp": "datetime64[ns, UTC]"}),
        want.astype({"timestamp": "datetime64[ns, UTC]"}),
        check_dtype=False,
        rtol=1e-6,
    )


@pytest.fixture
def source(tmp_path: Path) -> tuple[str, list[dict[str, Any]]]:
    url = f"sqlite:///{tmp_path / 'scada.db'}"
    return url, write_source(url)


def test_the_files_hold_each_asset_bucket_as_the_contract_words_it(
    source: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, rows = source
    schema, config = window_setup()
    result = extract(url, schema, config, tmp_path / "out", batch_rows=64)
    want_train, want_holdout = expected_files(rows, config)
    assert_file(result.train_path, want_train)
    assert_file(result.holdout_path, want_holdout)
    assert result.window and result.purge_gap_s == 2 * 3600 + 30 * 60
    assert result.rows_train == want_train.example.sum()
    assert result.positives_holdout == want_holdout[EVENT_LABEL_COLUMN].sum() > 0
    in_range = [r for r in rows if T0 <= r["ts"] < END]
    assert result.readings == len(in_range)


@pytest.mark.parametrize("batch_rows", [1, 13, 100_000])
def test_the_files_do_not_depend_on_the_batch_size(
    source: tuple[str, list[dict[str, Any]]], tmp_path: Path, batch_rows: int
) -> None:
    url, rows = source
    schema, config = window_setup()
    result = extract(url, schema, config, tmp_path / "out", batch_rows=batch_rows)
    want_train, want_holdout = expected_files(rows, config)
    assert_file(result.train_path, want_train)
    assert_file(result.holdout_path, want_holdout)


def test_a_max_gap_shorter_than_the_interval_fills_nothing(
    source: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, _ = source
    schema, config = window_setup(maxGap="5min")
    train = read(extract(url, schema, config, tmp_path / "out", batch_rows=16).train_path)
    a = train[train.asset_id == "A"].set_index("timestamp")
    assert T0 + 3 * HOUR + 10 * MINUTE not in a.index  # the 20-minute gap now breaks
    assert T0 + 9 * HOUR + 10 * MINUTE not in a.index  # and so does one NULL temperature
    assert a.loc[T0 + 3 * HOUR + 50 * MINUTE, "example"] == 1  # three buckets after it


def test_a_bucket_holds_the_mean_of_its_readings(
    source: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, rows = source
    schema, config = window_setup()
    train = read(extract(url, schema, config, tmp_path / "out").train_path)
    bucket = [r for r in rows if r["asset"] == "B" and T0 + HOUR <= r["ts"] < T0 + 70 * MINUTE]
    assert len(bucket) == 5
    row = train[(train.asset_id == "B") & (train.timestamp == T0 + 70 * MINUTE)].iloc[0]
    assert row.vibration == pytest.approx(np.mean([r["vibration"] for r in bucket]))
    assert row.temperature == pytest.approx(np.mean([r["temperature"] for r in bucket]))
    assert train.vibration.dtype == np.float32 and train[EVENT_LABEL_COLUMN].dtype == np.int8


def test_short_gaps_are_forward_filled_and_long_ones_break_the_series(
    source: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, _ = source
    schema, config = window_setup()
    train = read(extract(url, schema, config, tmp_path / "out").train_path)
    a = train[train.asset_id == "A"].set_index("timestamp")
    # 03:00-03:20 has no reading: two buckets, filled with the 02:50 bucket's values.
    before = a.loc[T0 + 3 * HOUR]
    for end in (T0 + 3 * HOUR + 10 * MINUTE, T0 + 3 * HOUR + 20 * MINUTE):
        assert a.loc[end, COLUMNS].tolist() == before[COLUMNS].tolist()
        assert a.loc[end, "example"] == 1  # a filled bucket still closes a window
    # 06:00-06:50: the first two buckets are within maxGap, the next three are not written.
    ends = [T0 + 6 * HOUR + m * MINUTE for m in range(10, 70, 10)]
    assert [e in a.index for e in ends] == [True, True, False, False, False, True]
    # A NULL temperature for one bucket takes the bucket before's; vibration stays its own.
    assert a.loc[T0 + 9 * HOUR + 10 * MINUTE, "temperature"] == a.loc[T0 + 9 * HOUR, "temperature"]
    b = train[train.asset_id == "B"].set_index("timestamp")
    after = [T0 + 14 * HOUR + m * MINUTE for m in range(10, 80, 10)]
    assert [e in b.index for e in after] == [True, True, False, False, False, False, True]
    assert not train[COLUMNS].isna().any().any()


def test_examples_need_a_whole_window_since_the_asset_start_or_a_break(
    source: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, _ = source
    schema, config = window_setup()
    train = read(extract(url, schema, config, tmp_path / "out").train_path)
    a = train[train.asset_id == "A"].set_index("timestamp")["example"]
    assert a.iloc[:3].tolist() == [0, 0, 1]  # the first length-1 buckets are context
    resumed = T0 + 7 * HOUR  # the first bucket after the break ends at 07:00
    assert a.loc[resumed : resumed + 20 * MINUTE].tolist() == [0, 0, 1]
    # Every example closes `length` consecutive buckets of one asset in the file.
    closes = pd.Series(True, index=train.index)
    for lag in range(1, LENGTH):
        step = train.timestamp - train.timestamp.shift(lag)
        closes &= train.asset_id.shift(lag).eq(train.asset_id) & step.eq(lag * INTERVAL)
    assert (train.example[~closes] == 0).all() and train.example[closes].sum() > 0


def test_buckets_just_after_a_failure_are_context_not_examples(
    source: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, _ = source
    schema, config = window_setup()
    result = extract(url, schema, config, tmp_path / "out")
    train = read(result.train_path)
    a = train[train.asset_id == "A"].set_index("timestamp")
    failure = FAILURES["A"][0]
    excluded = [failure + m * MINUTE for m in range(0, 70, 10)]  # [t - 1 h, t] holds it
    assert a.loc[excluded, "example"].tolist() == [0] * 7
    assert a.loc[failure + 70 * MINUTE, "example"] == 1
    b = train[train.asset_id == "B"].set_index("timestamp")["example"]
    # B failed 20 minutes before the range: its buckets ending by 00:40 are left out too.
    assert b.loc[T0 + 30 * MINUTE] == 0 and b.loc[T0 + 40 * MINUTE] == 0
    assert b.loc[T0 + 50 * MINUTE] == 1


def test_labels_are_taken_at_the_bucket_end(
    source: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, _ = source
    schema, config = window_setup()
    result = extract(url, schema, config, tmp_path / "out")
    train = read(result.train_path)
    a = train[train.asset_id == "A"].set_index("timestamp")[EVENT_LABEL_COLUMN]
    failure = FAILURES["A"][0]
    assert a.loc[failure - HORIZON] == 1  # the failure is exactly horizonHours ahead
    assert a.loc[failure - HORIZON - 10 * MINUTE] == 0
    assert a.loc[failure - 10 * MINUTE] == 1
    holdout = read(result.holdout_path)
    last = holdout[holdout.asset_id == "A"].iloc[-1]
    # A's failure an hour after the range's end labels its last buckets.
    assert last.timestamp == END - 10 * MINUTE and last[EVENT_LABEL_COLUMN] == 1


def test_files_are_grouped_by_asset_in_bucket_order(
    source: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, _ = source
    schema, config = window_setup()
    result = extract(url, schema, config, tmp_path / "out", batch_rows=7)
    for path in (result.train_path, result.holdout_path):
        frame = read(path)
        blocks = frame.asset_id.ne(frame.asset_id.shift()).cumsum()
        assert blocks.max() == frame.asset_id.nunique()  # each asset in one block
        assert frame.asset_id.drop_duplicates().tolist() == sorted(frame.asset_id.unique())
        assert frame.groupby("asset_id").timestamp.is_monotonic_increasing.all()
        assert list(frame.columns) == FILE_COLUMNS


def test_the_purge_gap_lies_between_training_and_holdout_examples(
    source: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, _ = source
    schema, config = window_setup()
    result = extract(url, schema, config, tmp_path / "out")
    split_at = T0 + 18 * HOUR
    assert result.split_at == split_at
    train, holdout = read(result.train_path), read(result.holdout_path)
    assert train.timestamp.max() < split_at - timedelta(hours=2, minutes=30)
    examples = holdout[holdout.example == 1]
    assert examples.timestamp.min() == split_at
    # The holdout carries the length-1 buckets before split_at as context of its first windows.
    b = holdout[holdout.asset_id == "B"]
    assert b.timestamp.iloc[:3].tolist() == [
        split_at - 20 * MINUTE,
        split_at - 10 * MINUTE,
        split_at,
    ]
    assert b.example.iloc[:3].tolist() == [0, 0, 1]
    assert (holdout[holdout.timestamp < split_at][EVENT_LABEL_COLUMN] == 0).all()


def test_a_range_too_short_for_the_gap_is_refused_with_the_numbers(
    source: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, _ = source
    schema, config = window_setup(end=T0 + 5 * HOUR, split=0.5)
    with pytest.raises(ExtractError) as err:
        extract(url, schema, config, tmp_path / "out")
    message = str(err.value)
    for words in (
        "dataRange 2024-03-01T00:00:00Z to 2024-03-01T05:00:00Z",
        "validationSplit 0.5",
        "purge gap before it is 2.5 h",
        "horizonHours 2",
        "length 3 x interval 10min",
        "before 2024-03-01T00:00:00Z",
    ):
        assert words in message
    assert not (tmp_path / "out" / "train.parquet").exists()


def test_a_window_model_needs_an_asset_column(
    source: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, _ = source
    _, config = window_setup()
    no_assets = SchemaConfig(table="readings", timestamp_column="ts")
    with pytest.raises(ExtractError, match=r"schemaConfig has no assetColumn"):
        extract(url, no_assets, config, tmp_path / "out")


def test_events_parquet_lists_the_failures_that_can_label_the_range(
    source: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, _ = source
    schema, config = window_setup()
    result = extract(url, schema, config, tmp_path / "out")
    assert result.events_path == tmp_path / "out" / "events.parquet"
    events = read(result.events_path)
    assert list(events.columns) == ["asset_id", "timestamp"]
    want = sorted((a, t) for a, ts in FAILURES.items() for t in ts if T0 <= t < END + HORIZON)
    assert list(zip(events.asset_id, events.timestamp, strict=True)) == want
    assert str(events.timestamp.dt.tz) == "UTC"


def test_a_target_column_gives_each_bucket_its_largest_target(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'scada.db'}"
    rows = write_source(url)
    org = parse_org_config(org_doc(labels=False), "acme")
    request = {
        "dataRange": {"startDate": T0.isoformat(), "endDate": END.isoformat()},
        "validationSplit": 0.25,
    }
    config = org.training_config(request, T0)
    assert config.purge_gap_s == LENGTH * INTERVAL_S
    result = extract(url, org.schema_config, config, tmp_path / "out")
    want_train, want_holdout = expected_files(rows, config, labels=False)
    assert_file(result.train_path, want_train)
    assert_file(result.holdout_path, want_holdout)
    assert result.events_path is None and result.positives_train > 0


def test_a_text_value_in_a_window_column_is_refused_by_name(
    source: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, _ = source
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE readings SET temperature = 'hot' WHERE asset = 'B'"))
    engine.dispose()
    schema, config = window_setup()
    with pytest.raises(ExtractError, match=r"windows.columns\[1\] 'temperature'.*asset 'B'"):
        extract(url, schema, config, tmp_path / "out")


def test_progress_counts_the_readings_read(
    source: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, _ = source
    schema, config = window_setup()
    events: list[dict[str, Any]] = []
    result = extract(url, schema, config, tmp_path / "out", progress=events.append, batch_rows=50)
    assert len(events) > 3
    counts = [e["rows"] for e in events]
    assert counts == sorted(counts) and counts[-1] == result.readings
    assert events[-1]["rows_train"] == result.rows_train


def test_a_result_recorded_before_windows_reads_back_with_defaults(tmp_path: Path) -> None:
    old = {
        "train_path": str(tmp_path / "train.parquet"),
        "holdout_path": str(tmp_path / "holdout.parquet"),
        "rows_train": 10,
        "rows_holdout": 2,
        "positives_train": 1,
        "positives_holdout": 1,
        "split_at": "2024-03-01T00:00:00Z",
        "data_hash": "ab",
        "elapsed_s": 1.0,
    }
    result = ExtractResult.from_dict(old)
    assert (result.purge_gap_s, result.readings, result.events_path, result.window) == (
        0.0,
        None,
        None,
        False,
    )
    assert ExtractResult.from_dict(result.as_dict()) == result
