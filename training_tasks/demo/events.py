"""Demo readings whose failures are events in a `failure_events` table, for window models.

The readings carry no label: a maintenance log (`failure_events`: asset_id, failed_at) says when
each machine failed, and `schemaConfig.labels` turns it into targets. It is a fleet where one
reading cannot tell: machines run at baselines far apart (a heavily loaded press runs hotter and
vibrates more) and their load wanders over a week or two, so a reading as high as a failing
machine's is as often a healthy busy one. What tells is the movement: over the 12-24 hours before
most failures, vibration and temperature climb steadily, a slope that a window of a few hours
shows whatever the machine's level. Some failures come with no warning, as in any plant. After a
failure the machine is offline for some hours (no readings) and comes back from maintenance with
slightly different baselines.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from training_tasks.demo.scada import ASSET, FEATURES, TIMESTAMP, ScadaLayout, base_org_config

EVENTS_TABLE = "failure_events"
EVENT_ASSET = "asset_id"
EVENT_TIME = "failed_at"

VANDELAY_LAYOUT = ScadaLayout(
    table="press_readings",
    timestamp_column="read_at",
    asset_column="press_id",
    columns={
        "temperature": "temperature_c",
        "pressure": "oil_pressure_kpa",
        "vibration": "vibration_mm_s",
        "current": "current_a",
    },
    target_column=None,
)
READING_INTERVAL_MIN = 10

# Per sensor (the FEATURES order: temperature, pressure, vibration, current): fleet mean, spread
# of the baselines across machines, daily swing, noise, and the drift reached at a failure.
_BASE_MEAN = np.array([66.0, 410.0, 3.2, 34.0])
_BASE_SD = np.array([7.0, 25.0, 0.9, 3.0])
_LOAD_SHARE = 0.85  # how much of a baseline is the machine's load, which moves all four sensors
_LOAD_SIGN = np.array([1.0, -1.0, 1.0, 1.0])  # a loaded machine's oil pressure runs lower
_DAILY_SWING = np.array([1.2, 4.0, 0.08, 1.0])
_NOISE_SD = np.array([0.9, 5.0, 0.22, 0.8])
_DRIFT_LOW = np.array([7.0, -25.0, 1.0, 2.0])
_DRIFT_HIGH = np.array([11.0, -15.0, 1.6, 3.5])
DRIFT_HOURS = (12.0, 24.0)  # how long before a failure its drift starts
WARNED_SHARE = 0.85  # failures that drift first; the others come without warning
WANDER = 0.5  # how far (in baseline spreads) a machine's load wanders, at most
WANDER_DAYS = (6.0, 14.0)  # the periods of that wandering: slow next to a drift
MIN_GAP_H = 72.0  # at least three days between two failures of one machine
DOWNTIME_HOURS = (4.0, 10.0)


@dataclass(frozen=True)
class _Machine:
    """One machine's life: baselines per maintenance cycle, its failures and their drifts."""

    base: np.ndarray  # (cycles, 4)
    phase_h: float
    wander: np.ndarray  # (2, 3): amplitude, period (h) and phase of two slow load swings
    failures_h: np.ndarray  # hours since start, sorted; the last lies past the end
    drift_h: np.ndarray  # how long each failure's drift lasts
    drift: np.ndarray  # (failures, 4): all zero for a failure without warning
    downtime_h: np.ndarray


@dataclass(frozen=True)
class DriftFleet:
    """A fleet's history drawn once from a seed: its readings and its failure events."""

    names: np.ndarray
    machines: tuple[_Machine, ...]
    start: datetime
    days: int
    seed: int

    def events(self) -> pd.DataFrame:
        """The failures before the end of the data: `asset_id`, `failed_at` (UTC, whole seconds),
        in time order."""
        ends = [m.failures_h < self.days * 24.0 for m in self.machines]
        hours = np.concatenate([m.failures_h[e] for m, e in zip(self.machines, ends, strict=True)])
        names = np.repeat(self.names, [int(e.sum()) for e in ends])
        stamps = _stamps(self.start, np.round(hours * 3600.0) / 3600.0)
        frame = pd.DataFrame({EVENT_ASSET: names, EVENT_TIME: stamps})
        return frame.sort_values([EVENT_TIME, EVENT_ASSET], ignore_index=True)

    def readings(
        self, interval_min: int = READING_INTERVAL_MIN, chunk_days: int = 7
    ) -> Iterator[pd.DataFrame]:
        """One row per online machine every `interval_min`, in time order, `chunk_days` at a
        time; the same rows whatever the chunk size."""
        if not 1 <= interval_min <= 1440 or chunk_days < 1:
            raise ValueError("interval_min must be 1..1440 and chunk_days >= 1")
        steps = max(1, 1440 // interval_min)
        for first in range(0, self.days, chunk_days):
            days = range(first, min(self.days, first + chunk_days))
            yield pd.concat(
                [self._day(day, steps, interval_min) for day in days], ignore_index=True
            )

    def _day(self, day: int, steps: int, interval_min: int) -> pd.DataFrame:
        # A generator per day keeps the rows identical whatever the chunk size.
        rng = np.random.default_rng([self.seed, 2_000_000 + day])
        hours = day * 24.0 + np.arange(steps) * interval_min / 60.0
        blocks = [_machine_rows(m, hours, rng) for m in self.machines]
        values = np.stack([b[0] for b in blocks], axis=1)  # (steps, machines, 4)
        keep = np.stack([b[1] for b in blocks], axis=1).ravel()
        frame = pd.DataFrame(
            {
                TIMESTAMP: np.repeat(_stamps(self.start, hours), len(self.machines))[keep],
                ASSET: np.tile(self.names, steps)[keep],
            }
        )
        flat = values.reshape(-1, 4)[keep]
        for i, name in enumerate(FEATURES):
            frame[name] = flat[:, i]
        return frame


def drift_fleet(
    *, assets: int, days: int, seed: int, start: datetime, mean_failure_interval_days: float = 8.0
) -> DriftFleet:
    """Draw the history of `assets` machines over `days` days from `seed`."""
    if assets < 1 or days < 1 or mean_failure_interval_days * 24.0 <= MIN_GAP_H:
        raise ValueError("assets and days must be >= 1, failures at most one every 3 days")
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware (UTC)")
    rng = np.random.default_rng([seed, 0])
    span_h, interval_h = days * 24.0, mean_failure_interval_days * 24.0
    machines = tuple(_machine(rng, span_h, interval_h) for _ in range(assets))
    names = np.array([f"press-{i + 1:03d}" for i in range(assets)], dtype=object)
    return DriftFleet(names, machines, start.astimezone(UTC), days, seed)


def _machine(rng: np.random.Generator, span_h: float, mean_interval_h: float) -> _Machine:
    extra_h = mean_interval_h - MIN_GAP_H
    failures = [rng.uniform(0.2, 1.0) * (MIN_GAP_H + rng.exponential(extra_h))]
    while failures[-1] < span_h:
        failures.append(failures[-1] + MIN_GAP_H + rng.exponential(extra_h))
    count = len(failures)
    load, own = rng.normal(), rng.normal(0.0, 1.0, 4)
    base = _BASE_MEAN + _BASE_SD * (
        _LOAD_SHARE * load * _LOAD_SIGN + np.sqrt(1 - _LOAD_SHARE**2) * own
    )
    warned = rng.random(count) < WARNED_SHARE
    return _Machine(
        base=base + rng.normal(0.0, 0.1, (count + 1, 4)) * _BASE_SD,
        phase_h=float(rng.uniform(-2.0, 2.0)),
        wander=np.stack(
            [
                rng.uniform(0.5, 1.0, 2) * WANDER,
                rng.uniform(*WANDER_DAYS, 2) * 24.0,
                rng.uniform(0.0, 2 * np.pi, 2),
            ],
            axis=1,
        ),
        failures_h=np.asarray(failures),
        drift_h=rng.uniform(*DRIFT_HOURS, count),
        drift=rng.uniform(_DRIFT_LOW, _DRIFT_HIGH, (count, 4)) * warned[:, None],
        downtime_h=rng.uniform(*DOWNTIME_HOURS, count),
    )


def _machine_rows(
    machine: _Machine, hours: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The machine's readings at `hours` (steps, 4), and whether it is online at each."""
    nxt = np.searchsorted(machine.failures_h, hours, side="right")
    to_failure_h = machine.failures_h[nxt] - hours
    since_h = np.where(nxt > 0, hours - machine.failures_h[nxt - 1], np.inf)
    downtime_h = np.where(nxt > 0, machine.downtime_h[nxt - 1], 0.0)
    daily = np.sin(2 * np.pi * (hours % 24.0 - 8.0 + machine.phase_h) / 24.0)
    amplitude, period_h, phase = machine.wander.T
    load = np.sin(2 * np.pi * hours[:, None] / period_h + phase) @ amplitude
    ramp = np.clip(1.0 - to_failure_h / machine.drift_h[nxt], 0.0, 1.0)
    values = (
        machine.base[nxt]
        + load[:, None] * _BASE_SD * _LOAD_SIGN
        + daily[:, None] * _DAILY_SWING
        + ramp[:, None] * machine.drift[nxt]
        + rng.normal(0.0, 1.0, (len(hours), 4)) * _NOISE_SD
    )
    return np.maximum(values, 0.0), since_h >= downtime_h


def _stamps(start: datetime, hours: np.ndarray) -> pd.DatetimeIndex:
    origin = np.datetime64(start.astimezone(UTC).replace(tzinfo=None), "us")
    moments = origin + np.round(hours * 3_600_000_000).astype("timedelta64[us]")
    return pd.DatetimeIndex(moments).tz_localize(UTC)


def example_windows(
    columns: Sequence[str], length: int, interval_s: int
) -> list[list[list[float]]]:
    """Two windows of `columns` (oldest bucket first) a prediction service might be sent: a
    machine of typical load running steadily, and the same machine climbing at the pace of a
    drift that ends in a failure 12 hours after it began."""
    index = [FEATURES.index(c) for c in columns]
    hours = np.arange(length) * interval_s / 3600.0
    climb_per_h = (_DRIFT_LOW + _DRIFT_HIGH) / 2 / DRIFT_HOURS[0]
    noise = np.random.default_rng(0).normal(0.0, 1.0, (length, 4)) * _NOISE_SD
    steady = _BASE_MEAN + noise
    climbing = steady + hours[:, None] * climb_per_h
    return [window[:, index].round(3).tolist() for window in (steady, climbing)]


def write_failure_events(url: str, events: pd.DataFrame, *, replace: bool = False) -> int:
    """Create the `failure_events` table in the database at `url` (SQLite or PostgreSQL), with an
    index on (asset_id, failed_at) for the label query's probes, and load `events`."""
    table = sa.Table(
        EVENTS_TABLE,
        sa.MetaData(),
        sa.Column(EVENT_ASSET, sa.String(32), nullable=False),
        # Zoned like the readings' timestamps: the extract refuses comparing zoned with zoneless.
        sa.Column(EVENT_TIME, sa.DateTime(timezone=True), nullable=False),
        sa.Index(f"ix_{EVENTS_TABLE}_asset_time", EVENT_ASSET, EVENT_TIME),
    )
    rows = [
        {EVENT_ASSET: asset, EVENT_TIME: moment.to_pydatetime()}
        for asset, moment in zip(events[EVENT_ASSET], events[EVENT_TIME], strict=True)
    ]
    engine = sa.create_engine(url)
    try:
        if replace:
            table.drop(engine, checkfirst=True)
        table.create(engine)
        with engine.begin() as conn:
            if rows:
                conn.execute(sa.insert(table), rows)
    finally:
        engine.dispose()
    return len(rows)


# The window model: six hours of 10-minute means of the two sensors that drift, as statistics.
WINDOWS: dict[str, Any] = {
    "interval": "10min",
    "length": 36,
    "columns": ["vibration", "temperature"],
    "maxGap": "30min",
}
LABEL_HORIZON_H = 24.0
EVENT_MODEL: dict[str, Any] = {
    "windows": WINDOWS,
    # An alarm when a failure within 24 h is 4 chances in 5; the demo's model on single
    # readings ({"windows": null}) decides at the same probability.
    "decisionPolicy": {"type": "fixed", "threshold": 0.8},
    "thresholds": {
        # A row is positive for 24 h before a failure, mostly before any sign of it: row recall
        # says little here. Events caught and false alarms are what the gates judge.
        "recall": 0.1,
        "minEventRecall": 0.6,
        "maxFalseAlarmsPerAssetDay": 0.15,  # about one a week per machine
    },
}


def event_org_config(
    org_id: str, scada_url: str, layout: ScadaLayout = VANDELAY_LAYOUT, *, window_days: int = 60
) -> dict[str, Any]:
    """A camelCase organization config for a drift fleet in `layout`, labelled by its failure
    events and trained on windows (`EVENT_MODEL`), as `parse_org_config` takes it."""
    config = base_org_config(org_id, scada_url, layout, window_days=window_days)
    model = config["mlModelConfig"]
    model.update(featureColumns=list(WINDOWS["columns"]), validationSplit=0.25, **EVENT_MODEL)
    config["schemaConfig"]["labels"] = {
        "eventsTable": EVENTS_TABLE,
        "assetColumn": EVENT_ASSET,
        "timestampColumn": EVENT_TIME,
        "horizonHours": LABEL_HORIZON_H,
        "excludeAfterHours": 12,  # the repair and restart after a failure
    }
    return config
