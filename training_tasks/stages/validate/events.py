"""Event-level metrics a maintenance planner reads: failures caught before they happen, how early,
and how many alarms came to nothing.

The holdout's examples (asset, time, label, alarm) are judged against the failure events:
- an event counts when its asset is in the holdout and its whole horizon lies in the holdout's
  example range: split_at <= F - horizon and F <= end;
- it is caught when the asset alarms at an example with time in [F - horizon, F); its lead time
  is F minus the first such alarm;
- a false alarm is a maximal run of consecutive alarming examples of one asset, in time order,
  whose labels are all 0 (no failure within the horizon of any of them); one that stays on for a
  horizon or longer counts again for each horizon it lasts (a planner dismisses an alarm that
  brought no failure within the horizon; if it is still on, it is raised again). So an alarm that
  never stops is not one false alarm but one per horizon of the time no failure followed.
  False alarms per asset-day divide them by (assets in the holdout x days from split_at to end).

Vectorized numpy (holdouts have millions of rows): one sort of the examples, then searchsorted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

US_PER_S = 1_000_000
US_PER_H = 3_600 * US_PER_S
SECONDS_PER_DAY = 86_400
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class EventMetrics:
    """What the holdout's alarms did about its failures, and the counts behind the rates."""

    event_recall: float | None  # None: no holdout event to catch
    events_caught: int
    events_total: int
    median_lead_time_h: float | None  # None: no event caught
    false_alarms_per_asset_day: float | None  # None: no asset or no time in the holdout
    false_alarms: int  # false alarms: runs of alarms on negatives, one per horizon they last
    assets: int  # assets with at least one holdout example
    asset_days: float

    def as_dict(self) -> dict[str, Any]:
        """The five metrics under their snake_case names."""
        return {
            "event_recall": self.event_recall,
            "events_caught": self.events_caught,
            "events_total": self.events_total,
            "median_lead_time_h": self.median_lead_time_h,
            "false_alarms_per_asset_day": self.false_alarms_per_asset_day,
        }

    def recorded(self) -> dict[str, Any]:
        """The five metrics as validation records them, beside rocAuc and the others."""
        return {
            "eventRecall": self.event_recall,
            "eventsCaught": self.events_caught,
            "eventsTotal": self.events_total,
            "medianLeadTimeH": self.median_lead_time_h,
            "falseAlarmsPerAssetDay": self.false_alarms_per_asset_day,
        }


# The recorded metrics when a run has no failure events (no schemaConfig.labels).
NO_EVENT_METRICS: dict[str, Any] = dict.fromkeys(
    ("eventRecall", "eventsCaught", "eventsTotal", "medianLeadTimeH", "falseAlarmsPerAssetDay")
)


def event_metrics(
    asset_ids: Any,
    times: Any,
    labels: Any,
    alarms: Any,
    event_assets: Any,
    event_times: Any,
    *,
    split_at: datetime,
    end: datetime,
    horizon_s: float,
) -> EventMetrics:
    """The event metrics of the holdout examples (asset_ids, times, labels, alarms, one entry per
    example in any order) against the failures (event_assets, event_times).

    Times are numpy datetime64 (naive UTC) or Arrow timestamps; asset ids any strings.
    """
    codes, event_codes, assets = _asset_codes(asset_ids, event_assets)
    codes, t, labels, alarms = _in_time_order(codes, _microseconds(times), labels, alarms)
    start_us, end_us = _at(split_at), _at(end)
    horizon_us = round(horizon_s * US_PER_S)
    failed_at = _microseconds(event_times)
    counted = (event_codes >= 0) & (failed_at - horizon_us >= start_us) & (failed_at <= end_us)
    lead_us = _lead_times(
        codes[alarms], t[alarms], event_codes[counted], failed_at[counted], horizon_us
    )
    caught = lead_us[lead_us >= 0]
    total = int(np.count_nonzero(counted))
    false_alarms = _false_alarms(codes, t, labels, alarms, horizon_us)
    asset_days = assets * max(0, end_us - start_us) / (SECONDS_PER_DAY * US_PER_S)
    return EventMetrics(
        event_recall=len(caught) / total if total else None,
        events_caught=len(caught),
        events_total=total,
        median_lead_time_h=float(np.median(caught)) / US_PER_H if len(caught) else None,
        false_alarms_per_asset_day=false_alarms / asset_days if asset_days > 0 else None,
        false_alarms=false_alarms,
        assets=assets,
        asset_days=asset_days,
    )


def _in_time_order(
    codes: np.ndarray, t: np.ndarray, labels: Any, alarms: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The examples sorted by asset, then time; labels and alarms as bools."""
    labels = np.asarray(labels).astype(bool, copy=False)
    alarms = np.asarray(alarms).astype(bool, copy=False)
    if not len(codes) == len(t) == len(labels) == len(alarms):
        raise ValueError(
            f"{len(codes)} asset ids, {len(t)} times, {len(labels)} labels and {len(alarms)} "
            "alarms: every example needs one of each"
        )
    order = np.lexsort((t, codes))
    return codes[order], t[order], labels[order], alarms[order]


def _asset_codes(asset_ids: Any, event_assets: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer codes of the examples' assets, the events' (-1: not in the holdout), and how many
    assets the holdout has; Arrow's dictionary encoding, far faster than sorting strings."""
    ids = _strings(asset_ids)
    if ids.null_count:
        raise ValueError(f"{ids.null_count} holdout examples have no asset id")
    examples = ids.dictionary_encode()
    codes = examples.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    found = pc.index_in(_strings(event_assets), value_set=examples.dictionary)
    event_codes = found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, event_codes, len(examples.dictionary)


def _strings(values: Any) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks().cast(pa.string())
    if isinstance(values, pa.Array):
        return values.cast(pa.string())
    return pa.array(np.asarray(values, dtype=object), type=pa.string())


def _microseconds(times: Any) -> np.ndarray:
    """Microseconds since the UNIX epoch of datetime64 or Arrow timestamps, as int64."""
    if isinstance(times, pa.ChunkedArray | pa.Array):
        times = times.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
        return np.asarray(times.to_numpy(zero_copy_only=False), dtype=np.int64)
    values = np.asarray(times)
    if np.issubdtype(values.dtype, np.datetime64):
        return values.astype("datetime64[us]").astype(np.int64)
    return values.astype(np.int64)


def _at(moment: datetime) -> int:
    """Microseconds since the epoch of a datetime (a naive one is UTC)."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(microseconds=1)


def _lead_times(
    alarm_codes: np.ndarray,
    alarm_t: np.ndarray,
    event_codes: np.ndarray,
    failed_at: np.ndarray,
    horizon_us: int,
) -> np.ndarray:
    """Per event: F minus the first alarm of its asset in [F - horizon, F), in microseconds;
    -1 where there is none. The alarms are sorted by (asset, time)."""
    if not len(event_codes):
        return np.empty(0, dtype=np.int64)
    # (asset, time) as one sortable int64: the time's rank among the alarm times keeps the key
    # small where asset * microseconds would overflow.
    moments = np.unique(alarm_t)
    width = len(moments) + 1
    alarm_keys = alarm_codes * width + np.searchsorted(moments, alarm_t)
    opens = failed_at - horizon_us
    first = np.searchsorted(alarm_keys, event_codes * width + np.searchsorted(moments, opens))
    found = first < len(alarm_keys)
    at = np.minimum(first, max(len(alarm_keys) - 1, 0))
    if len(alarm_keys):
        found &= (alarm_codes[at] == event_codes) & (alarm_t[at] < failed_at)
        return np.where(found, failed_at - alarm_t[at], -1)
    return np.full(len(event_codes), -1, dtype=np.int64)


def _false_alarms(
    codes: np.ndarray, t: np.ndarray, labels: np.ndarray, alarms: np.ndarray, horizon_us: int
) -> int:
    """False alarms among examples sorted by asset and time: each run of consecutive alarming
    negative examples of one asset counts once, plus once more per full horizon it lasts."""
    false = alarms & ~labels
    if not false.any():
        return 0
    continues = np.zeros(len(false), dtype=bool)
    continues[1:] = false[:-1] & (codes[1:] == codes[:-1])
    marked = np.flatnonzero(false)
    firsts = marked[~continues[marked]]
    lasts = marked[np.r_[~continues[marked][1:], True]]
    lasted_us = t[lasts] - t[firsts]
    return int(len(firsts) + np.sum(lasted_us // max(horizon_us, 1)))
