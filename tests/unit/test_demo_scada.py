"""The demo SCADA data: learnable, drift before failures, both layouts load and parse."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from training_tasks.config.org import parse_org_config
from training_tasks.demo import (
    ACME_LAYOUT,
    GLOBEX_LAYOUT,
    ScadaLayout,
    demo_org_config,
    generate_sensor_frame,
    iter_sensor_frames,
    write_scada_sqlite,
)
from training_tasks.demo.scada import FEATURES, TARGET, TIMESTAMP, default_start

START = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate_sensor_frame(assets=10, days=60, interval_min=15, seed=4, start=START)


def failures(frame: pd.DataFrame) -> list[tuple[str, pd.Timestamp]]:
    """(asset, time of failure): the end of each run of positive rows, plus one interval."""
    found = []
    for asset, rows in frame.groupby("asset_id"):
        label = rows[TARGET].to_numpy()
        ends = np.flatnonzero((label[:-1] == 1) & (label[1:] == 0))
        found += [(str(asset), rows.ts.iloc[i] + timedelta(minutes=15)) for i in ends]
    return found


def window(frame: pd.DataFrame, asset: str, start: pd.Timestamp, hours: float) -> pd.DataFrame:
    rows = frame[frame.asset_id == asset]
    return rows[(rows.ts >= start) & (rows.ts < start + timedelta(hours=hours))]


def test_a_lightgbm_model_learns_failures_from_the_four_raw_sensors(frame: pd.DataFrame) -> None:
    cut = START + timedelta(days=48)  # time-ordered 20 % holdout
    train, holdout = frame[frame.ts < cut], frame[frame.ts >= cut]
    # One thread: OpenMP spinning on a busy machine would make this test slow, not better.
    params = {"objective": "binary", "num_leaves": 31, "learning_rate": 0.05, "num_threads": 1}
    data = lgb.Dataset(train[list(FEATURES)], train[TARGET], params={"verbosity": -1})
    model = lgb.train({**params, "verbosity": -1}, data, 100)
    predicted = model.predict(holdout[list(FEATURES)]) >= 0.5
    actual = holdout[TARGET].to_numpy() == 1
    true_positives = (predicted & actual).sum()
    assert (predicted == actual).mean() > 0.85
    assert true_positives / predicted.sum() > 0.8  # precision
    assert true_positives / actual.sum() > 0.8  # recall


def test_failures_are_a_minority_of_10_to_30_percent_of_rows(frame: pd.DataFrame) -> None:
    assert 0.10 <= frame[TARGET].mean() <= 0.30
    assert len(failures(frame)) >= 20


def test_failures_are_preceded_by_drift(frame: pd.DataFrame) -> None:
    checked = 0
    for asset, moment in failures(frame):
        # Three days earlier, at the same time of day, so that the daily cycle cancels out.
        calm = window(frame, asset, moment - timedelta(hours=78), 6)
        late = window(frame, asset, moment - timedelta(hours=6), 6)
        if len(calm) < 20 or len(late) < 20:
            continue  # too close to the start of the data or to the maintenance before
        assert late.vibration.mean() > calm.vibration.mean() + 1.5
        assert late.temperature.mean() > calm.temperature.mean() + 6
        assert late.current.mean() > calm.current.mean() + 3
        assert late.pressure.mean() < calm.pressure.mean() - 20
        checked += 1
    assert checked >= 15


def test_after_a_failure_the_asset_is_offline_and_comes_back_without_drift(
    frame: pd.DataFrame,
) -> None:
    for asset, moment in failures(frame):
        assert window(frame, asset, moment, 4).empty  # maintenance: no readings
        back = window(frame, asset, moment + timedelta(hours=12), 12)
        late = window(frame, asset, moment - timedelta(hours=6), 6)
        if len(back) and not back[TARGET].any():
            assert back.vibration.mean() < late.vibration.mean() - 1.5


def test_the_same_seed_gives_the_same_rows_in_any_chunk_size() -> None:
    args = {"assets": 3, "days": 9, "interval_min": 60, "seed": 11, "start": START}
    whole = generate_sensor_frame(**args)
    chunked = pd.concat(list(iter_sensor_frames(**args, chunk_days=2)), ignore_index=True)
    pd.testing.assert_frame_equal(whole, chunked)
    assert not whole.equals(generate_sensor_frame(**{**args, "seed": 12}))


def test_default_start_makes_data_that_ends_today() -> None:
    now = datetime(2024, 5, 10, 14, 30, tzinfo=UTC)
    assert default_start(30, now) == datetime(2024, 4, 10, tzinfo=UTC)


@pytest.mark.parametrize("layout", [ACME_LAYOUT, GLOBEX_LAYOUT], ids=["acme", "globex"])
def test_each_layout_loads_into_sqlite_with_its_own_names(
    tmp_path: Path, layout: ScadaLayout
) -> None:
    rows = generate_sensor_frame(assets=2, days=3, interval_min=60, seed=1, start=START)
    path = tmp_path / "scada.db"
    assert write_scada_sqlite(path, rows, layout) == len(rows)
    inspector = sa.inspect(sa.create_engine(f"sqlite:///{path}"))
    columns = [c["name"] for c in inspector.get_columns(layout.table)]
    assert columns == list(layout.physical_names().values())
    assert [ix["column_names"] for ix in inspector.get_indexes(layout.table)] == [
        [layout.timestamp_column]
    ]
    with sqlite3.connect(path) as conn:
        first = conn.execute(f'SELECT "{layout.timestamp_column}" FROM "{layout.table}"').fetchone()
        count = conn.execute(f'SELECT count(*) FROM "{layout.table}"').fetchone()
    assert first == ("2024-01-01 00:00:00.000000",)  # SQLAlchemy's DateTime text, UTC
    assert count == (len(rows),)


@pytest.mark.parametrize("layout", [ACME_LAYOUT, GLOBEX_LAYOUT], ids=["acme", "globex"])
def test_each_layout_gives_an_org_config_the_service_accepts(layout: ScadaLayout) -> None:
    org = parse_org_config(demo_org_config("acme-plant", "sqlite:///demo.db", layout), "acme-plant")
    assert org.schema_config.table == layout.table
    assert org.schema_config.physical("current") == layout.columns["current"]
    assert org.schema_config.physical(TARGET) == layout.target_column
    assert org.ml_model_config["featureColumns"] == list(FEATURES)
    assert org.training_schedule == {"pattern": "0 2 * * 0", "timezone": "UTC", "enabled": False}


def test_rare_failure_data_has_few_failures_that_only_the_sensor_ratio_shows() -> None:
    from sklearn.metrics import roc_auc_score

    from training_tasks.demo.scada import iter_rare_failure_frames

    def frames(seed: int) -> pd.DataFrame:
        chunks = iter_rare_failure_frames(
            assets=6, days=30, interval_min=15, seed=seed, start=START, chunk_days=4
        )
        return pd.concat(list(chunks), ignore_index=True)

    frame = frames(5)
    pd.testing.assert_frame_equal(frame, frames(5))  # the same seed gives the same rows
    assert frame[TIMESTAMP].is_monotonic_increasing
    assert 0.02 <= frame[TARGET].mean() <= 0.04
    labels = frame[TARGET].to_numpy()
    for sensor in FEATURES:  # no sensor alone tells a failing bearing
        auc = roc_auc_score(labels, frame[sensor])
        assert max(auc, 1 - auc) < 0.75, sensor
    ratio = frame["pressure"] / frame["temperature"]
    assert roc_auc_score(labels, -ratio) > 0.95  # the ratio does


def test_the_rare_failure_organization_trains_the_ratio_as_a_derived_feature(
    tmp_path: Path,
) -> None:
    from training_tasks.demo.scada import INITECH_LAYOUT, RARE_FAILURE_MODEL

    doc = demo_org_config("initech", f"sqlite:///{tmp_path / 'x.db'}", INITECH_LAYOUT)
    doc["mlModelConfig"].update(RARE_FAILURE_MODEL)
    org = parse_org_config(doc, "initech")
    assert org.ml_model_config["derivedFeatures"] == {
        "pressure_per_degree": "pressure / temperature"
    }
    assert org.ml_model_config["decisionPolicy"] == {"type": "maxF1"}
