"""Event-level metrics, computed by hand on small holdouts: what was caught, how early, and how
many alarm episodes came to nothing."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from training_tasks.stages.validate.events import EventMetrics, event_metrics

SPLIT_AT = datetime(2026, 1, 1, tzinfo=UTC)
END = SPLIT_AT + timedelta(days=2)
HORIZON_H = 6.0

# (asset, hours after split_at, label, alarm)
Example = tuple[str, float, int, int]


START = np.datetime64(SPLIT_AT.replace(tzinfo=None), "us")


def at(hours: float) -> np.datetime64:
    return START + np.timedelta64(int(hours * 3600), "s")


def utc(moments: Sequence[np.datetime64]) -> pa.Array:
    """Times as extract writes them: timestamp[us, UTC]."""
    return pa.array(np.array(moments, "datetime64[us]")).cast(pa.timestamp("us", tz="UTC"))


def judge(
    examples: Sequence[Example], events: Sequence[tuple[str, float]], *, shuffle: bool = False
) -> EventMetrics:
    rows = list(examples)
    if shuffle:
        order = np.random.default_rng(7).permutation(len(rows))
        rows = [rows[i] for i in order]
    return event_metrics(
        [asset for asset, *_ in rows],
        np.array([at(hours) for _, hours, _, _ in rows], dtype="datetime64[us]"),
        np.array([label for *_, label, _ in rows], dtype=np.int8),
        np.array([alarm for *_, alarm in rows], dtype=bool),
        [asset for asset, _ in events],
        np.array([at(hours) for _, hours in events], dtype="datetime64[us]"),
        split_at=SPLIT_AT,
        end=END,
        horizon_s=HORIZON_H * 3600,
    )


def hourly(asset: str, alarms: Sequence[int] = (), positives: Sequence[int] = ()) -> list[Example]:
    """One example per hour of the holdout's 48, alarming and labelled at the given hours."""
    return [(asset, h, int(h in positives), int(h in alarms)) for h in range(48)]


def horizon_of(failure_h: int) -> list[int]:
    """The hours labelled 1 before a failure at `failure_h`: (t, t + horizon] holds it."""
    return [h for h in range(48) if h < failure_h <= h + HORIZON_H]


def test_an_event_caught_early_counts_with_the_lead_time_of_its_first_alarm() -> None:
    # Failure at 20 h: the horizon is [14 h, 20 h); alarms at 15, 16 and 18 h.
    found = judge(hourly("A", alarms=[15, 16, 18], positives=horizon_of(20)), [("A", 20)])

    assert (found.events_caught, found.events_total, found.event_recall) == (1, 1, 1.0)
    assert found.median_lead_time_h == pytest.approx(5.0)  # 20 h - 15 h, not 20 h - 18 h
    assert found.false_alarms == 0  # every alarm precedes the failure within the horizon


def test_a_missed_event_lowers_recall_and_the_median_is_over_caught_events_only() -> None:
    examples = [
        *hourly("A", alarms=[17], positives=horizon_of(20)),
        *hourly("B", alarms=[], positives=horizon_of(30)),
        *hourly("C", alarms=[40, 41], positives=horizon_of(44)),
    ]
    found = judge(examples, [("A", 20), ("B", 30), ("C", 44)])

    assert (found.events_caught, found.events_total) == (2, 3)
    assert found.event_recall == pytest.approx(2 / 3)
    assert found.median_lead_time_h == pytest.approx((3.0 + 4.0) / 2)


def test_an_event_whose_horizon_starts_before_the_split_or_that_falls_after_the_end_is_not_counted() -> (
    None
):
    examples = [
        *hourly("A", alarms=[1], positives=horizon_of(3)),  # 3 h - 6 h is before split_at
        *hourly("B", alarms=[44], positives=horizon_of(48)),  # at the end exactly: counted
        *hourly("C", alarms=[46, 47]),  # fails at 50 h, after the end
    ]
    found = judge(examples, [("A", 3), ("B", 48), ("C", 50)])

    assert (found.events_caught, found.events_total) == (1, 1)
    assert found.median_lead_time_h == pytest.approx(4.0)


def test_the_horizon_includes_its_first_moment_and_excludes_the_failure_itself() -> None:
    at_open = judge(hourly("A", alarms=[14]), [("A", 20)])
    at_failure = judge(hourly("A", alarms=[20]), [("A", 20)])

    assert (at_open.events_caught, at_open.median_lead_time_h) == (1, pytest.approx(6.0))
    assert (at_failure.events_caught, at_failure.median_lead_time_h) == (0, None)


def test_consecutive_alarms_are_one_episode_and_a_gap_or_another_asset_starts_a_new_one() -> None:
    examples = [
        *hourly("A", alarms=[2, 3, 4, 7, 9, 47]),  # episodes 2-4, 7, 9 and 47
        *hourly("B", alarms=[0]),  # right after A's last example, but another asset
        *hourly("C"),
    ]
    found = judge(examples, [])

    assert found.false_alarms == 5
    assert (found.assets, found.asset_days) == (3, pytest.approx(6.0))
    assert found.false_alarms_per_asset_day == pytest.approx(5 / 6)


def test_alarms_within_the_horizon_of_a_failure_are_not_false_and_earlier_ones_are() -> None:
    # Alarms at 12-15 h; a failure at 20 h labels 14-19 h; 12-13 h came too early to be right.
    examples = hourly("A", alarms=[12, 13, 14, 15, 30], positives=horizon_of(20))

    found = judge(examples, [("A", 20)])

    assert found.false_alarms == 2  # 12-13 h (one run) and the lone alarm at 30 h
    assert found.events_caught == 1


def test_an_alarm_that_stays_on_counts_once_per_horizon_it_brings_no_failure() -> None:
    never_off = judge(hourly("A", alarms=range(48)), [])
    a_horizon = judge(hourly("A", alarms=range(10, 16)), [])  # 5 h: shorter than the horizon
    longer = judge(hourly("A", alarms=range(10, 17)), [])  # 6 h from first to last: twice

    assert never_off.false_alarms == 1 + 47 // 6  # not 1: that would hide a useless model
    assert (a_horizon.false_alarms, longer.false_alarms) == (1, 2)


def test_assets_without_events_count_in_the_asset_days_and_events_of_other_assets_do_not() -> None:
    examples = [*hourly("A", alarms=[10]), *hourly("B"), *hourly("C"), *hourly("D")]

    found = judge(examples, [("Z", 20)])  # Z has no example in the holdout

    assert found.events_total == 0
    assert found.event_recall is None and found.median_lead_time_h is None
    assert found.false_alarms_per_asset_day == pytest.approx(1 / (4 * 2.0))


def test_with_no_alarm_at_all_nothing_is_caught_and_nothing_is_false() -> None:
    examples = [*hourly("A", positives=horizon_of(20)), *hourly("B")]

    found = judge(examples, [("A", 20), ("B", 40)])

    assert found.as_dict() == {
        "event_recall": 0.0,
        "events_caught": 0,
        "events_total": 2,
        "median_lead_time_h": None,
        "false_alarms_per_asset_day": 0.0,
    }


def test_the_order_of_the_examples_does_not_matter() -> None:
    examples = [
        *hourly("A", alarms=[15, 16, 30, 31], positives=horizon_of(20)),
        *hourly("B", alarms=[5, 27], positives=horizon_of(30)),
    ]
    events = [("A", 20), ("B", 30)]

    assert judge(examples, events, shuffle=True) == judge(examples, events)


def test_arrow_columns_as_the_holdout_file_holds_them_give_the_same_metrics() -> None:
    examples = hourly("A", alarms=[15, 40], positives=horizon_of(20))
    stamps = utc([at(h) for _, h, _, _ in examples])
    found = event_metrics(
        pa.chunked_array([pa.array([a for a, *_ in examples])]),
        pa.chunked_array([stamps]),
        np.array([label for *_, label, _ in examples]),
        np.array([alarm for *_, alarm in examples]),
        pa.array(["A"]),
        utc([at(20)]),
        split_at=SPLIT_AT,
        end=END,
        horizon_s=HORIZON_H * 3600,
    )

    assert found == judge(examples, [("A", 20)])
    assert found.recorded()["eventsCaught"] == 1
    assert found.recorded()["falseAlarmsPerAssetDay"] == pytest.approx(1 / 2.0)


def test_examples_without_an_asset_id_are_refused() -> None:
    with pytest.raises(ValueError, match="1 holdout examples have no asset id"):
        event_metrics(
            pa.array(["A", None]),
            np.array([at(0), at(1)]),
            np.zeros(2),
            np.zeros(2),
            [],
            np.array([], dtype="datetime64[us]"),
            split_at=SPLIT_AT,
            end=END,
            horizon_s=3600,
        )


def test_a_million_examples_are_judged_at_numpy_speed() -> None:
    rng = np.random.default_rng(0)
    rows, assets = 1_000_000, 1_000
    codes = rng.integers(0, assets, rows)
    seconds = rng.integers(0, 2 * 86_400, rows)
    started = datetime.now(UTC)
    found = event_metrics(
        pa.array([f"asset-{c}" for c in range(assets)]).take(pa.array(codes)),
        START + seconds.astype("timedelta64[s]"),
        rng.random(rows) < 0.05,
        rng.random(rows) < 0.02,
        [f"asset-{c}" for c in range(0, assets, 3)],
        np.full(len(range(0, assets, 3)), at(30)),
        split_at=SPLIT_AT,
        end=END,
        horizon_s=HORIZON_H * 3600,
    )
    took_s = (datetime.now(UTC) - started).total_seconds()

    assert found.events_total == len(range(0, assets, 3)) and found.assets == assets
    assert took_s < 10, f"{rows} examples took {took_s:.1f} s"


def by_the_definition(examples: Sequence[Example], events: Sequence[tuple[str, float]]) -> tuple:
    """The contract's definitions, one example at a time."""
    assets = {asset for asset, *_ in examples}
    leads, total = [], 0
    for asset, failed_h in events:
        if asset not in assets or failed_h - HORIZON_H < 0 or failed_h > 48:
            continue
        total += 1
        alarms = [h for a, h, _, alarm in examples if a == asset and alarm]
        inside = [h for h in alarms if failed_h - HORIZON_H <= h < failed_h]
        if inside:
            leads.append(failed_h - min(inside))
    false = 0
    for asset in assets:
        mine = sorted((h, label, alarm) for a, h, label, alarm in examples if a == asset)
        run: list[float] = []  # times of consecutive alarms on examples labelled 0
        for h, label, alarm in [*mine, (None, 1, 0)]:
            if alarm and not label:
                run.append(h)
            elif run:
                false += 1 + int((run[-1] - run[0]) // HORIZON_H)
                run = []
    median = float(np.median(leads)) if leads else None
    return len(leads), total, median, false


@pytest.mark.parametrize("seed", range(5))
def test_random_holdouts_agree_with_the_definitions_computed_one_example_at_a_time(
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    # Distinct times per asset: the order of two examples of one asset at one time is arbitrary.
    examples = [
        (f"a{asset}", float(quarter) / 4, int(rng.random() < 0.2), int(rng.random() < 0.3))
        for asset in range(6)
        for quarter in rng.choice(48 * 4, size=50, replace=False)
    ]
    events = [(f"a{rng.integers(8)}", float(rng.integers(-10, 60))) for _ in range(12)]

    found = judge(examples, events)

    caught, total, median, false = by_the_definition(examples, events)
    assert (found.events_caught, found.events_total, found.false_alarms) == (caught, total, false)
    assert found.median_lead_time_h == (None if median is None else pytest.approx(median))
