"""Synthetic SCADA sensor history, with drift before failures, for demos, tests and benchmarks.

Each asset has its own baselines, a daily load cycle and sensor noise. Failures arrive at random
(every couple of weeks on average); over the 2-3 days before each one, vibration, temperature and
motor current creep up while oil pressure drops. The label is 1 for rows within `horizon_h` before
a failure. After a failure the asset is offline for a few hours (maintenance, no rows) and comes
back with slightly different baselines and no drift.
"""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from psycopg import sql

FEATURES = ("temperature", "pressure", "vibration", "current")
TARGET = "failure"
TIMESTAMP = "ts"
ASSET = "asset_id"
HORIZON_H = 48.0

# Per-sensor shape: baseline mean and spread across assets, daily swing, noise, full drift.
_BASE_MEAN = np.array([62.0, 420.0, 2.2, 32.0])
_BASE_SD = np.array([3.0, 20.0, 0.25, 2.0])
_DAILY_SWING = np.array([3.0, 6.0, 0.15, 2.5])
_NOISE_SD = np.array([0.8, 5.0, 0.18, 0.8])
_DRIFT_LOW = np.array([12.0, -70.0, 2.8, 6.0])
_DRIFT_HIGH = np.array([18.0, -45.0, 4.0, 9.0])


@dataclass(frozen=True)
class ScadaLayout:
    """How one demo organization names its table and columns (`columns`: logical -> physical)."""

    table: str
    timestamp_column: str
    asset_column: str
    columns: Mapping[str, str]
    # None: the rows carry no label (failure events label them, see demo/events.py).
    target_column: str | None
    boolean_target: bool = False
    # Features stored as 4-byte floats instead of 8-byte ones.
    real_features: bool = False

    def physical_names(self) -> dict[str, str]:
        """Frame column -> physical column, for every column that is written."""
        names = {
            TIMESTAMP: self.timestamp_column,
            ASSET: self.asset_column,
            **{name: self.columns[name] for name in FEATURES},
        }
        if self.target_column is not None:
            names[TARGET] = self.target_column
        return names

    def value_columns(self) -> list[str]:
        """The frame columns written after the timestamp, in table order."""
        return list(self.physical_names())[1:]


ACME_LAYOUT = ScadaLayout(
    table="sensor_readings",
    timestamp_column="ts",
    asset_column="asset_id",
    columns={
        "temperature": "temperature_c",
        "pressure": "pressure_kpa",
        "vibration": "vibration_mm_s",
        "current": "current_a",
    },
    target_column="failure_within_48h",
)
GLOBEX_LAYOUT = ScadaLayout(
    table="plant_telemetry",
    timestamp_column="recorded_at",
    asset_column="MachineId",
    columns={
        "temperature": "bearing_temp",
        "pressure": "oil pressure",
        "vibration": "vib_rms",
        "current": "MotorCurrent",
    },
    target_column="FailsSoon",
    boolean_target=True,
    real_features=True,
)

# Rare failures that only `pressure / temperature` shows (iter_rare_failure_frames).
INITECH_LAYOUT = ScadaLayout(
    table="bearing_log",
    timestamp_column="logged_at",
    asset_column="bearing_id",
    columns={
        "temperature": "bearing_temp_c",
        "pressure": "oil_pressure_kpa",
        "vibration": "vibration_mm_s",
        "current": "motor_current_a",
    },
    target_column="failed",
)
# What an engineer adds for INITECH_LAYOUT's data: the ratio as a feature, a threshold for F1.
RARE_FAILURE_MODEL: dict[str, Any] = {
    "derivedFeatures": {"pressure_per_degree": "pressure / temperature"},
    "decisionPolicy": {"type": "maxF1"},
}


@dataclass(frozen=True)
class _Asset:
    """One asset's life: baselines per maintenance cycle and its failures."""

    base: np.ndarray  # (cycles, 4): baselines, re-drawn a little at each maintenance
    phase_h: float
    failures_h: np.ndarray  # hours since start, sorted
    drift_h: np.ndarray  # drift duration before each failure
    drift: np.ndarray  # (failures, 4): full drift reached at each failure
    downtime_h: np.ndarray  # offline time after each failure


def generate_sensor_frame(
    *,
    assets: int,
    days: int,
    interval_min: int,
    seed: int,
    start: datetime,
    mean_failure_interval_days: float = 14.0,
) -> pd.DataFrame:
    """Sensor rows for `assets` assets over `days` days, one row per asset every `interval_min`."""
    frames = iter_sensor_frames(
        assets=assets,
        days=days,
        interval_min=interval_min,
        seed=seed,
        start=start,
        mean_failure_interval_days=mean_failure_interval_days,
    )
    return pd.concat(list(frames), ignore_index=True)


def iter_sensor_frames(
    *,
    assets: int,
    days: int,
    interval_min: int,
    seed: int,
    start: datetime,
    chunk_days: int = 7,
    mean_failure_interval_days: float = 14.0,
) -> Iterator[pd.DataFrame]:
    """The same rows as `generate_sensor_frame`, in time order, `chunk_days` at a time."""
    if assets < 1 or days < 1 or not 1 <= interval_min <= 1440 or chunk_days < 1:
        raise ValueError("assets, days and chunk_days must be >= 1 and interval_min 1..1440")
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware (UTC)")
    rng = np.random.default_rng([seed, 0])
    life = [_asset_life(rng, days * 24.0, mean_failure_interval_days) for _ in range(assets)]
    names = np.array([f"pump-{i + 1:03d}" for i in range(assets)], dtype=object)
    steps_per_day = max(1, 1440 // interval_min)
    for first_day in range(0, days, chunk_days):
        parts = [
            _day_frame(life, names, start, day, steps_per_day, interval_min, seed)
            for day in range(first_day, min(days, first_day + chunk_days))
        ]
        yield pd.concat(parts, ignore_index=True)


def _asset_life(rng: np.random.Generator, span_h: float, mean_interval_days: float) -> _Asset:
    min_gap_h = 96.0
    mean_extra_h = max(1.0, mean_interval_days * 24.0 - min_gap_h)
    failures: list[float] = [rng.uniform(0.1, 1.0) * (min_gap_h + rng.exponential(mean_extra_h))]
    while failures[-1] < span_h:
        failures.append(failures[-1] + min_gap_h + rng.exponential(mean_extra_h))
    count = len(failures)
    base = _BASE_MEAN + rng.normal(0.0, 1.0, 4) * _BASE_SD
    cycles = base + rng.normal(0.0, 0.25, (count + 1, 4)) * _BASE_SD
    return _Asset(
        base=cycles,
        phase_h=float(rng.uniform(-2.0, 2.0)),
        failures_h=np.asarray(failures),
        drift_h=rng.uniform(54.0, 66.0, count),
        drift=rng.uniform(_DRIFT_LOW, _DRIFT_HIGH, (count, 4)),
        downtime_h=rng.uniform(4.0, 12.0, count),
    )


def _day_frame(
    life: list[_Asset],
    names: np.ndarray,
    start: datetime,
    day: int,
    steps: int,
    interval_min: int,
    seed: int,
) -> pd.DataFrame:
    # A generator per day keeps the rows identical whatever the chunk size.
    rng = np.random.default_rng([seed, day + 1])
    hours = day * 24.0 + np.arange(steps) * interval_min / 60.0
    blocks = [_asset_rows(asset, hours, rng) for asset in life]
    values = np.stack([b[0] for b in blocks], axis=1)  # (steps, assets, 4)
    labels = np.stack([b[1] for b in blocks], axis=1)
    online = np.stack([b[2] for b in blocks], axis=1)
    origin = np.datetime64(start.astimezone(UTC).replace(tzinfo=None), "us")
    stamps = origin + np.round(hours * 3_600_000_000).astype("timedelta64[us]")
    keep = online.ravel()
    frame = pd.DataFrame(
        {
            TIMESTAMP: pd.DatetimeIndex(np.repeat(stamps, len(life))[keep]).tz_localize(UTC),
            ASSET: np.tile(names, steps)[keep],
        }
    )
    flat = values.reshape(-1, 4)[keep]
    for i, name in enumerate(FEATURES):
        frame[name] = flat[:, i]
    frame[TARGET] = labels.ravel()[keep].astype(np.int8)
    return frame


def _asset_rows(
    asset: _Asset, hours: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nxt = np.searchsorted(asset.failures_h, hours, side="right")
    to_failure_h = asset.failures_h[nxt] - hours  # a failure always lies past the end
    since_h = np.where(nxt > 0, hours - asset.failures_h[nxt - 1], np.inf)
    downtime = np.where(nxt > 0, asset.downtime_h[nxt - 1], 0.0)
    load = np.sin(2 * np.pi * (hours % 24.0 - 8.0 + asset.phase_h) / 24.0)
    ramp = np.clip(1.0 - to_failure_h / asset.drift_h[nxt], 0.0, 1.0)
    values = (
        asset.base[nxt]
        + load[:, None] * _DAILY_SWING
        + ramp[:, None] * asset.drift[nxt]
        + rng.normal(0.0, 1.0, (len(hours), 4)) * _NOISE_SD
    )
    return values, to_failure_h <= HORIZON_H, since_h >= downtime


RATIO_MEAN = 6.8  # oil pressure (kPa) per degree of bearing temperature, healthy
RATIO_SD = 0.25
RATIO_FAILING = RATIO_MEAN - 1.881 * RATIO_SD  # the lowest ~3% of rows: oil film breaking down
LABEL_NOISE = 0.002  # share of rows whose label is wrong, as in any maintenance log


def iter_rare_failure_frames(
    *,
    assets: int,
    days: int,
    interval_min: int,
    seed: int,
    start: datetime,
    chunk_days: int = 7,
) -> Iterator[pd.DataFrame]:
    """Rows whose failures are rare (about 3%) and show only in the ratio of two sensors.

    The plant's operating point swings temperature and pressure up and down together over a wide
    range; a failing bearing is one whose oil pressure per degree (`pressure / temperature`) falls
    below RATIO_FAILING. Neither sensor alone tells, and a tree ensemble on the raw columns can
    only approximate the diagonal boundary: the case derived features (`pressure / temperature`)
    and a decision threshold chosen for rare failures are for. Same columns as
    `iter_sensor_frames`, in time order, `chunk_days` at a time.
    """
    if assets < 1 or days < 1 or not 1 <= interval_min <= 1440 or chunk_days < 1:
        raise ValueError("assets, days and chunk_days must be >= 1 and interval_min 1..1440")
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware (UTC)")
    names = np.array([f"bearing-{i + 1:03d}" for i in range(assets)], dtype=object)
    steps = max(1, 1440 // interval_min)
    origin = np.datetime64(start.astimezone(UTC).replace(tzinfo=None), "us")
    for first_day in range(0, days, chunk_days):
        frames = []
        for day in range(first_day, min(days, first_day + chunk_days)):
            rng = np.random.default_rng([seed, 1_000_000 + day])
            hours = day * 24.0 + np.arange(steps) * interval_min / 60.0
            shape = (steps, assets)
            operating = 2.0 * rng.normal(0.0, 1.0, shape)  # hot and high pressure together
            temperature = 62.0 + 15.0 * operating + rng.normal(0.0, 0.8, shape)
            ratio = RATIO_MEAN + rng.normal(0.0, RATIO_SD, shape)
            failing = ratio < RATIO_FAILING
            failing ^= rng.random(shape) < LABEL_NOISE
            values = np.stack(
                [
                    temperature,
                    temperature * ratio,
                    2.2 + rng.normal(0.0, 0.2, shape),
                    32.0 + 4.0 * operating + rng.normal(0.0, 0.8, shape),
                ],
                axis=-1,
            )
            stamps = origin + np.round(hours * 3_600_000_000).astype("timedelta64[us]")
            frame = pd.DataFrame(
                {
                    TIMESTAMP: pd.DatetimeIndex(np.repeat(stamps, assets)).tz_localize(UTC),
                    ASSET: np.tile(names, steps),
                }
            )
            flat = values.reshape(-1, 4)
            for i, name in enumerate(FEATURES):
                frame[name] = flat[:, i]
            frame[TARGET] = failing.ravel().astype(np.int8)
            frames.append(frame)
        yield pd.concat(frames, ignore_index=True)


def write_scada_sqlite(
    path: Path,
    frame: pd.DataFrame | Iterable[pd.DataFrame],
    layout: ScadaLayout,
    *,
    replace: bool = False,
) -> int:
    """Create `layout.table` in a SQLite file and load the rows; returns the row count.

    Timestamps are stored as SQLAlchemy's DateTime stores them on SQLite: UTC text
    'YYYY-MM-DD HH:MM:SS.ffffff'.
    """
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        table, index = _create_table(engine, layout, replace=replace)
        insert = str(sa.insert(table).compile(dialect=engine.dialect))
        total = 0
        with closing(sqlite3.connect(path)) as conn, conn:
            for chunk in _chunks(frame):
                stamps = pc.strftime(pa.array(chunk[TIMESTAMP]), "%Y-%m-%d %H:%M:%S")
                values = (chunk[c].tolist() for c in layout.value_columns())
                columns = [stamps.to_pylist(), *values]
                conn.executemany(insert, zip(*columns, strict=True))
                total += len(chunk)
        index.create(engine)
    finally:
        engine.dispose()
    return total


def write_scada_postgres(
    url: str,
    frame: pd.DataFrame | Iterable[pd.DataFrame],
    layout: ScadaLayout,
    *,
    replace: bool = False,
) -> int:
    """Create `layout.table` in PostgreSQL and bulk-load the rows with COPY; returns the count."""
    engine = sa.create_engine(url)
    try:
        table, index = _create_table(engine, layout, replace=replace)
        names = sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns)
        copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
            sql.Identifier(layout.table), names
        )
        total = 0
        conninfo = sa.make_url(url).set(drivername="postgresql").render_as_string(False)
        with psycopg.connect(conninfo) as conn:
            with conn.cursor() as cur, cur.copy(copy) as pipe:
                for chunk in _chunks(frame):
                    pipe.write(_csv_bytes(chunk, layout))
                    total += len(chunk)
            conn.commit()
            index.create(engine)
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(layout.table)))
    finally:
        engine.dispose()
    return total


def _csv_bytes(chunk: pd.DataFrame, layout: ScadaLayout) -> memoryview:
    columns = [TIMESTAMP, *layout.value_columns()]
    table = pa.Table.from_pandas(chunk[columns], preserve_index=False)
    buffer = io.BytesIO()
    pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(include_header=False))
    return buffer.getbuffer()


def _create_table(
    engine: sa.Engine, layout: ScadaLayout, *, replace: bool
) -> tuple[sa.Table, sa.Index]:
    number: type[sa.types.TypeEngine[Any]] = sa.REAL if layout.real_features else sa.Float
    columns: list[sa.Column[Any]] = [
        sa.Column(layout.timestamp_column, sa.DateTime(timezone=True), nullable=False),
        sa.Column(layout.asset_column, sa.String(32), nullable=False),
        *(sa.Column(layout.columns[name], number) for name in FEATURES),
    ]
    if layout.target_column is not None:
        label = sa.Boolean() if layout.boolean_target else sa.SmallInteger()
        columns.append(sa.Column(layout.target_column, label, nullable=False))
    table = sa.Table(layout.table, sa.MetaData(), *columns)
    if replace:
        table.drop(engine, checkfirst=True)
    table.create(engine)
    # Made after CREATE TABLE so that the caller builds it once, after the load.
    return table, sa.Index(f"ix_{layout.table}_time", table.c[layout.timestamp_column])


def demo_org_config(
    org_id: str, scada_url: str, layout: ScadaLayout, *, window_days: int = 90
) -> dict[str, Any]:
    """A camelCase organization config for demo data in `layout`, as `parse_org_config` takes it."""
    if layout.target_column is None:
        raise ValueError(f"{layout.table} has no target column: see events.event_org_config")
    config = base_org_config(org_id, scada_url, layout, window_days=window_days)
    config["mlModelConfig"].update(featureColumns=list(FEATURES), targetColumn=TARGET)
    config["schemaConfig"]["columnMappings"][TARGET] = layout.target_column
    return config


def base_org_config(
    org_id: str, scada_url: str, layout: ScadaLayout, *, window_days: int
) -> dict[str, Any]:
    """What every demo organization's config holds: the model defaults, an idle schedule, the
    SCADA URL and `layout`'s table; the caller adds its features and target."""
    return {
        "name": f"{org_id} demo plant",
        "mlModelConfig": {
            "validationSplit": 0.2,
            "hyperparameters": {
                "numLeaves": 31,
                "learningRate": 0.05,
                "numIterations": 100,
                "objective": "binary",
                "metric": "auc",
            },
            "dataWindowDays": window_days,
            # The demo's history ends on a fixed day: a window ending now would hold no rows.
            "windowEnd": "latestData",
        },
        "trainingSchedule": {"pattern": "0 2 * * 0", "timezone": "UTC", "enabled": False},
        "scadaDbConfig": {"url": scada_url},
        "schemaConfig": {
            "table": layout.table,
            "timestampColumn": layout.timestamp_column,
            "assetColumn": layout.asset_column,
            "columnMappings": dict(layout.columns),
        },
    }


def _chunks(frame: pd.DataFrame | Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    if isinstance(frame, pd.DataFrame):
        yield frame
    else:
        yield from frame


def default_start(days: int, now: datetime) -> datetime:
    """Midnight UTC `days` days before `now`, so that demo data generated from it ends today."""
    moment = now.astimezone(UTC)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days)
