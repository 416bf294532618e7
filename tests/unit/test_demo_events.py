"""The demo fleet labelled by failure events: a `failure_events` table, drift over the hours
before a failure that a window shows and one reading does not, the same data from the same seed."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sklearn.metrics import roc_auc_score

from training_tasks.config.org import parse_org_config
from training_tasks.demo.events import (
    EVENTS_TABLE,
    VANDELAY_LAYOUT,
    DriftFleet,
    drift_fleet,
    event_org_config,
    write_failure_events,
)
from training_tasks.demo.scada import TIMESTAMP, write_scada_sqlite

START = datetime(2024, 1, 1, tzinfo=UTC)
WINDOW = 36  # six hours of 10-minute readings
FEATURES_THAT_DRIFT = ("vibration", "temperature")


@pytest.fixture(scope="module")
def fleet() -> DriftFleet:
    return drift_fleet(assets=12, days=40, seed=4, start=START)


@pytest.fixture(scope="module")
def readings(fleet: DriftFleet) -> pd.DataFrame:
    return pd.concat(list(fleet.readings()), ignore_index=True)


def slopes(values: np.ndarray) -> np.ndarray:
    """The least-squares slope per 10-minute step of each run of WINDOW values."""
    steps = np.arange(WINDOW) - (WINDOW - 1) / 2
    return np.lib.stride_tricks.sliding_window_view(values, WINDOW) @ (steps / (steps @ steps))


def naive(stamps: pd.Series) -> np.ndarray:
    return stamps.dt.tz_convert(None).to_numpy()


@pytest.fixture(scope="module")
def labelled(fleet: DriftFleet, readings: pd.DataFrame) -> pd.DataFrame:
    """Per machine in time order: the reading, the slope of the last six hours, and whether it
    fails within 24 h (readings right after a failure, or without six hours behind them, left
    out), as the window model and the single-reading model see them."""
    events = fleet.events()
    parts = []
    for asset, rows in readings.groupby("asset_id", sort=True):
        rows = rows.sort_values(TIMESTAMP).reset_index(drop=True)
        failed = np.sort(naive(events.failed_at[events.asset_id == asset]))
        t = naive(rows[TIMESTAMP])
        after = np.searchsorted(failed, t, side="right")
        ahead = np.append(failed, np.datetime64("2100-01-01"))[after] - t
        head = np.full(WINDOW - 1, np.nan)
        whole = rows[TIMESTAMP].diff(WINDOW - 1) == timedelta(minutes=10 * (WINDOW - 1))
        parts.append(
            pd.DataFrame(
                {
                    "vibration": rows.vibration,
                    "slope": np.r_[head, slopes(rows.vibration.to_numpy())],
                    "temperature_slope": np.r_[head, slopes(rows.temperature.to_numpy())],
                    "fails": ahead <= np.timedelta64(24, "h"),
                    "usable": whole.to_numpy(),
                }
            )
        )
    frame = pd.concat(parts, ignore_index=True)
    return frame[frame.usable]


def test_each_failure_is_a_row_of_the_failure_events_table_indexed_by_asset_and_time(
    tmp_path: Path, fleet: DriftFleet, readings: pd.DataFrame
) -> None:
    path = tmp_path / "scada.db"
    events = fleet.events()
    assert write_scada_sqlite(path, fleet.readings(), VANDELAY_LAYOUT) == len(readings)
    assert write_failure_events(f"sqlite:///{path}", events) == len(events)
    inspector = sa.inspect(sa.create_engine(f"sqlite:///{path}"))
    assert [c["name"] for c in inspector.get_columns(EVENTS_TABLE)] == ["asset_id", "failed_at"]
    assert [ix["column_names"] for ix in inspector.get_indexes(EVENTS_TABLE)] == [
        ["asset_id", "failed_at"]
    ]
    with sqlite3.connect(path) as conn:
        stored = conn.execute(f"SELECT asset_id, failed_at FROM {EVENTS_TABLE}").fetchall()
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({VANDELAY_LAYOUT.table})")]
    # The same text as the readings' timestamps, so that the label query compares them as text.
    assert stored[0] == (events.asset_id[0], events.failed_at[0].strftime("%Y-%m-%d %H:%M:%S.%f"))
    assert len(stored) == len(events) >= 40
    assert "failure" not in " ".join(columns), "the readings carry no label: the events do"


def test_a_machine_is_offline_for_hours_after_each_failure(
    fleet: DriftFleet, readings: pd.DataFrame
) -> None:
    for asset, failed_at in fleet.events().itertuples(index=False):
        rows = readings[readings.asset_id == asset]
        after = rows[(rows.ts >= failed_at) & (rows.ts < failed_at + timedelta(hours=4))]
        assert after.empty, f"{asset} sends readings right after failing at {failed_at}"


def test_most_failures_are_preceded_by_hours_of_climbing_vibration_and_temperature(
    fleet: DriftFleet, readings: pd.DataFrame, labelled: pd.DataFrame
) -> None:
    # A drift of 1.0-1.6 mm/s and 7-11 C over 12-24 h: >= 0.04 mm/s and 0.3 C an hour on
    # average, against noise, the daily cycle and the slow swings of load.
    def climbing(vibration: Any, temperature: Any) -> Any:
        return (vibration * 6 > 0.03) & (temperature * 6 > 0.15)  # per hour

    climbs = []
    for asset, failed_at in fleet.events().itertuples(index=False):
        rows = readings[readings.asset_id == asset]
        last = rows[(rows.ts >= failed_at - timedelta(hours=6)) & (rows.ts < failed_at)]
        if len(last) < WINDOW:
            continue  # the machine came back from maintenance less than six hours before
        vibration, temperature = (slopes(last[c].to_numpy())[-1] for c in FEATURES_THAT_DRIFT)
        climbs.append(climbing(vibration, temperature))
    assert len(climbs) >= 40
    assert np.mean(climbs) >= 0.75  # the others fail without warning, as in any plant
    healthy = labelled[~labelled.fails]
    assert climbing(healthy.slope, healthy.temperature_slope).mean() < 0.15


def test_one_reading_cannot_tell_a_failing_machine_but_the_slope_over_six_hours_can(
    labelled: pd.DataFrame,
) -> None:
    reading = roc_auc_score(labelled.fails, labelled.vibration)
    slope = roc_auc_score(labelled.fails, labelled.slope)
    assert reading < 0.65
    assert slope > 0.75


def test_the_same_seed_gives_the_same_readings_and_events_in_any_chunk_size() -> None:
    def draw(seed: int, chunk_days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        fleet = drift_fleet(assets=3, days=9, seed=seed, start=START)
        chunks = fleet.readings(chunk_days=chunk_days)
        return pd.concat(list(chunks), ignore_index=True), fleet.events()

    whole, events = draw(11, 9)
    chunked, again = draw(11, 2)
    pd.testing.assert_frame_equal(whole, chunked)
    pd.testing.assert_frame_equal(events, again)
    assert whole[TIMESTAMP].is_monotonic_increasing
    other, _ = draw(12, 9)
    assert not whole.equals(other)


def test_the_fleet_organization_trains_on_windows_labelled_by_its_events(tmp_path: Path) -> None:
    doc = event_org_config("vandelay", f"sqlite:///{tmp_path / 'x.db'}", window_days=60)
    org = parse_org_config(doc, "vandelay")
    labels = org.schema_config.labels
    assert labels is not None and labels.events_table == EVENTS_TABLE
    assert org.ml_model_config["windows"]["columns"] == ["vibration", "temperature"]
    assert org.thresholds["minEventRecall"] == 0.6
    assert "targetColumn" not in org.ml_model_config
