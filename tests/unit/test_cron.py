"""Cron schedules fire on local wall-clock times and survive every clock change exactly once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from beat_schedules.cron import CronSchedule
from training_tasks.config.org import parse_schedule
from training_tasks.errors import ConfigError

MINUTE = timedelta(minutes=1)
ZONES = (
    "America/New_York",
    "Europe/Berlin",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "America/Havana",
    "America/Santiago",
    "Europe/London",
    "America/Los_Angeles",
    "Pacific/Chatham",
    "Asia/Kolkata",
    "UTC",
)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def fires(pattern: str, zone: str, after: datetime, until: datetime) -> list[datetime]:
    return CronSchedule.parse(pattern, zone).slots(after, until)


# --- examples -------------------------------------------------------------------------------


def test_a_daily_0230_in_new_york_fires_at_the_end_of_the_spring_gap() -> None:
    assert fires("30 2 * * *", "America/New_York", utc(2027, 3, 13, 12), utc(2027, 3, 15, 12)) == [
        utc(2027, 3, 14, 7, 0),
        utc(2027, 3, 15, 6, 30),
    ]


def test_a_daily_0130_in_new_york_fires_once_on_the_fall_back_night() -> None:
    slots = fires("30 1 * * *", "America/New_York", utc(2027, 11, 6, 12), utc(2027, 11, 8, 12))
    assert slots == [utc(2027, 11, 7, 5, 30), utc(2027, 11, 8, 6, 30)]
    assert utc(2027, 11, 7, 6, 30) not in slots


def test_every_quarter_hour_of_the_new_york_gap_fires_once_at_0700_utc() -> None:
    slots = fires("*/15 2 * * *", "America/New_York", utc(2027, 3, 14), utc(2027, 3, 14, 23))
    assert slots == [utc(2027, 3, 14, 7, 0)]


def test_gap_matches_and_the_0300_match_share_one_slot() -> None:
    slots = fires("0,30 2,3 * * *", "America/New_York", utc(2027, 3, 14), utc(2027, 3, 14, 23))
    assert slots == [utc(2027, 3, 14, 7, 0), utc(2027, 3, 14, 7, 30)]


def test_berlin_skips_its_spring_gap_and_does_not_repeat_its_autumn_hour() -> None:
    spring = fires("30 2 * * *", "Europe/Berlin", utc(2027, 3, 27, 12), utc(2027, 3, 28, 12))
    autumn = fires("30 2 * * *", "Europe/Berlin", utc(2027, 10, 30, 12), utc(2027, 11, 1, 12))
    assert spring == [utc(2027, 3, 28, 1, 0)]
    assert autumn == [utc(2027, 10, 31, 0, 30), utc(2027, 11, 1, 1, 30)]


def test_sydney_falls_back_in_april_and_springs_forward_in_october() -> None:
    april = fires("30 2 * * *", "Australia/Sydney", utc(2027, 4, 3), utc(2027, 4, 5))
    october = fires("30 2 * * *", "Australia/Sydney", utc(2027, 10, 2), utc(2027, 10, 3))
    assert april == [utc(2027, 4, 3, 15, 30), utc(2027, 4, 4, 16, 30)]
    assert october == [utc(2027, 10, 2, 16, 0)]


def test_lord_howe_half_hour_changes_move_and_merge_slots_correctly() -> None:
    forward = fires("15 2 * * *", "Australia/Lord_Howe", utc(2027, 10, 2), utc(2027, 10, 3))
    back = fires("45 1 * * *", "Australia/Lord_Howe", utc(2027, 4, 3), utc(2027, 4, 5))
    assert forward == [utc(2027, 10, 2, 15, 30)]  # 02:15 is gone; 02:30 +11 is the gap's end
    assert back == [utc(2027, 4, 3, 14, 45), utc(2027, 4, 4, 15, 15)]


def test_havana_midnight_gap_runs_at_0100_and_santiago_midnight_fold_runs_once() -> None:
    havana = fires("30 0 * * *", "America/Havana", utc(2027, 3, 13, 12), utc(2027, 3, 14, 12))
    santiago = fires("30 23 * * *", "America/Santiago", utc(2027, 4, 3, 12), utc(2027, 4, 5, 12))
    assert havana == [utc(2027, 3, 14, 5, 0)]
    assert santiago == [utc(2027, 4, 4, 2, 30), utc(2027, 4, 5, 3, 30)]


def test_utc_schedules_never_carry_notes() -> None:
    preview = CronSchedule.parse("*/10 * * * *", "UTC").preview(utc(2027, 3, 14), 200)
    assert [slot.note for slot in preview] == [None] * 200
    assert preview[0].local == utc(2027, 3, 14, 0, 10)


def test_preview_explains_the_gap_and_the_repeated_hour() -> None:
    ny = CronSchedule.parse("30 1,2 * * *", "America/New_York")
    spring, autumn = ny.preview(utc(2027, 3, 14), 2), ny.preview(utc(2027, 11, 7), 1)
    assert spring[1].note == (
        "02:30 does not exist on 2027-03-14 (clocks go forward at 02:00); runs at 03:00 EDT"
    )
    assert spring[1].local == datetime(2027, 3, 14, 3, 0, tzinfo=ZoneInfo("America/New_York"))
    assert autumn[0].note == (
        "01:30 happens twice on 2027-11-07 (clocks go back at 02:00); "
        "runs once, at the first 01:30 (EDT)"
    )


def test_preview_says_when_several_gap_times_share_one_slot() -> None:
    [slot] = CronSchedule.parse("*/15 2 * * *", "America/New_York").preview(utc(2027, 3, 14), 1)
    assert slot.note is not None
    assert slot.note.startswith("02:00, 02:15, 02:30 and 02:45 do not exist on 2027-03-14")
    assert slot.note.endswith("runs once, at 03:00 EDT")


def test_next_after_is_strictly_after_even_within_the_same_minute() -> None:
    cron = CronSchedule.parse("0 2 * * 0", "UTC")
    assert cron.next_after(utc(2027, 3, 14, 2, 0)) == utc(2027, 3, 21, 2, 0)
    assert cron.next_after(utc(2027, 3, 14, 1, 59, 59)) == utc(2027, 3, 14, 2, 0)


def test_next_after_refuses_a_naive_datetime() -> None:
    with pytest.raises(ValueError, match="aware"):
        CronSchedule.parse("0 2 * * 0").next_after(datetime(2027, 1, 1))


def test_parse_normalises_whitespace_and_accepts_aliases_and_rare_dates() -> None:
    assert CronSchedule.parse("  0   2 * *\t0 ", " Europe/Berlin ") == CronSchedule(
        "0 2 * * 0", "Europe/Berlin"
    )
    assert CronSchedule.parse("@Daily").pattern == "@daily"
    leap = CronSchedule.parse("0 0 29 2 *").next_after(utc(2027, 1, 1))
    assert leap == utc(2028, 2, 29)


def test_org_config_stores_the_normalised_pattern() -> None:
    parsed = parse_schedule({"pattern": " 0  2 * * MON-FRI ", "timezone": "Asia/Kolkata"})
    assert parsed == {"pattern": "0 2 * * MON-FRI", "timezone": "Asia/Kolkata", "enabled": True}


@pytest.mark.parametrize(
    ("pattern", "zone", "field", "words"),
    [
        (5, "UTC", "pattern", "string"),
        ("   ", "UTC", "pattern", "empty"),
        ("0 2 * * 0 *", "UTC", "pattern", "seconds and year fields are not supported"),
        ("every day", "UTC", "pattern", "exactly 5"),
        ("61 * * * *", "UTC", "pattern", "minute 61 is out of range"),
        ("0 0 * * FOO", "UTC", "pattern", "'FOO'"),
        ("*/0 * * * *", "UTC", "pattern", "'0 2 * * 0'"),
        ("0 0 30 2 *", "UTC", "pattern", "never fires"),
        ("0 0 31 4 *", "UTC", "pattern", "never fires"),
        ("@reboot", "UTC", "pattern", "@reboot is not supported"),
        ("@fortnightly", "UTC", "pattern", "@weekly"),
        ("5-5 * * * *", "UTC", "pattern", "write '5' instead"),
        ("R 2 * * *", "UTC", "pattern", "random"),
        ("0 0 13 * 5#2", "UTC", "pattern", "cannot be combined"),
        ("0 2 jan * *", "UTC", "pattern", "names such as JAN or MON work only"),
        ("0 " * 70, "UTC", "pattern", "128"),
        ("0 2 * * 0", "Mars/Olympus", "timezone", "is not an IANA time zone"),
        ("0 2 * * 0", "", "timezone", "IANA time zone such as 'Europe/Berlin'"),
        ("0 2 * * 0", None, "timezone", "IANA time zone"),
        ("0 2 * * 0", "localtime", "timezone", "is not an IANA time zone"),
    ],
)
def test_every_parse_error_names_its_field_and_says_what_is_allowed(
    pattern: object, zone: object, field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        CronSchedule.parse(pattern, zone, field="trainingSchedule")
    assert caught.value.field == f"trainingSchedule.{field}"
    assert words in caught.value.problem


# --- an independent reference: walk every UTC minute -----------------------------------------


@cache
def transitions(zone_name: str) -> tuple[datetime, ...]:
    """Instants in 2025-2032 at which the zone's UTC offset changes, found by a daily scan."""
    zone, found = ZoneInfo(zone_name), []
    day, end = utc(2025, 1, 1), utc(2033, 1, 1)
    while day < end:
        old = day.astimezone(zone).utcoffset()
        if (day + timedelta(days=1)).astimezone(zone).utcoffset() != old:
            low, high = 0, 86_400  # seconds into the day: old offset at low, new one at high
            while high - low > 1:
                middle = (low + high) // 2
                same = (day + timedelta(seconds=middle)).astimezone(zone).utcoffset() == old
                low, high = (middle, high) if same else (low, middle)
            found.append(day + timedelta(seconds=high))
        day += timedelta(days=1)
    return tuple(found)


def pattern_fields(pattern: str) -> list[set[int] | None]:
    """croniter's own expansion of each field; None where the field is '*'."""
    expanded, _ = croniter.expand(pattern)
    return [None if values == ["*"] else {int(v) for v in values} for values in expanded]


def wall_matches(fields: list[set[int] | None], wall: datetime) -> bool:
    minute, hour, dom, month, dow = fields
    cron_dow = (wall.weekday() + 1) % 7
    day_ok = [dom is None or wall.day in dom, dow is None or cron_dow in dow]
    day = any(day_ok) if dom is not None and dow is not None else all(day_ok)
    return (
        (minute is None or wall.minute in minute)
        and (hour is None or wall.hour in hour)
        and (month is None or wall.month in month)
        and day
    )


def brute_force(pattern: str, zone_name: str, after: datetime, until: datetime) -> list[datetime]:
    """Every UTC minute in (after, until] that fires: a first-occurrence match or a gap's end."""
    fields, zone = pattern_fields(pattern), ZoneInfo(zone_name)
    moment = after.replace(second=0, microsecond=0) + MINUTE
    previous = (moment - MINUTE).astimezone(zone).replace(tzinfo=None)
    found: list[datetime] = []
    while moment <= until:
        local = moment.astimezone(zone)
        wall = local.replace(tzinfo=None)
        hit = local.fold == 0 and wall_matches(fields, wall)
        skipped = previous + MINUTE
        while not hit and skipped < wall:  # wall times the clock jumped over
            hit = wall_matches(fields, skipped)
            skipped += MINUTE
        if hit:
            found.append(moment)
        previous, moment = wall, moment + MINUTE
    return found


def is_gap_end(moment: datetime, zone: ZoneInfo) -> bool:
    before = (moment - MINUTE).astimezone(zone).replace(tzinfo=None)
    return moment.astimezone(zone).replace(tzinfo=None) - before > MINUTE


# --- generated schedules near real clock changes ---------------------------------------------

Case = tuple[str, str, datetime, datetime]  # pattern, zone, after, until
MINUTES = st.one_of(st.sampled_from([0, 1, 14, 15, 29, 30, 31, 44, 45, 46, 59]), st.integers(0, 59))
# Every sampled zone changes its clocks between 23:00 and 04:00 local time.
NIGHT_HOURS = st.sampled_from([0, 1, 2, 3, 4, 23])
WEEKDAYS = st.lists(st.sampled_from(["0", "1", "2", "3", "4", "5", "6", "SUN", "SAT"]), min_size=1)


def cron_field(values: st.SearchStrategy[int], max_step: int) -> st.SearchStrategy[str]:
    pair = st.tuples(values, values).map(sorted).filter(lambda ab: ab[0] < ab[1])
    return st.one_of(
        values.map(str),
        st.lists(values, min_size=2, max_size=4, unique=True).map(
            lambda vs: ",".join(map(str, sorted(vs)))
        ),
        pair.map(lambda ab: f"{ab[0]}-{ab[1]}"),
        st.integers(2, max_step).map(lambda k: f"*/{k}"),
        st.tuples(pair, st.integers(2, max_step)).map(lambda p: f"{p[0][0]}-{p[0][1]}/{p[1]}"),
        st.just("*"),
    )


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A pattern and a three-day window starting within two days of one of the zone's changes."""
    zone = draw(st.sampled_from(ZONES))
    change = draw(st.sampled_from(transitions(zone) or transitions("America/New_York")))
    # Hours either side of this change are the ones a gap or a repeated hour can hit.
    last_old = (change - MINUTE).astimezone(ZoneInfo(zone))
    near = {last_old.hour, (last_old + MINUTE).hour, change.astimezone(ZoneInfo(zone)).hour}
    hours = st.one_of(st.sampled_from(sorted(near)), NIGHT_HOURS, st.integers(0, 23))
    minute, hour = draw(cron_field(MINUTES, 30)), draw(cron_field(hours, 12))
    if minute == "*" and hour == "*":
        hour = "2"  # every minute of every day is slow and adds nothing near a change
    dow = draw(st.one_of(st.just("*"), WEEKDAYS.map(lambda ds: ",".join(sorted(set(ds))))))
    # Most draws put the change inside the window; the rest start anywhere within two days.
    shift = draw(st.one_of(st.integers(-2 * 1440, -1), st.integers(-2 * 1440, 2 * 1440)))
    after = change + timedelta(minutes=shift, seconds=draw(st.sampled_from([0, 1, 30, 59])))
    return f"{minute} {hour} * * {dow}", zone, after, after + timedelta(days=3)


def test_every_dst_zone_under_test_has_changes_in_the_years_we_sample() -> None:
    for zone in ZONES[:-2]:
        assert len(transitions(zone)) >= 14, zone


@settings(max_examples=150, deadline=None)
@given(case=cases())
def test_slots_equal_a_minute_by_minute_walk_of_the_wall_clock(case: Case) -> None:
    pattern, zone, after, until = case
    slots = CronSchedule.parse(pattern, zone).slots(after, until)
    assert slots == brute_force(pattern, zone, after, until)


@settings(max_examples=60, deadline=None)
@given(case=cases())
def test_slots_are_strictly_increasing_and_each_is_a_match_or_a_gap_end(case: Case) -> None:
    pattern, zone, after, until = case
    cron, fields = CronSchedule.parse(pattern, zone), pattern_fields(pattern)
    slots = cron.slots(after, until)
    assert all(a < b for a, b in pairwise(slots))
    assert len(set(slots)) == len(slots)
    for slot in slots:
        wall = slot.astimezone(cron.zone).replace(tzinfo=None)
        assert wall_matches(fields, wall) or is_gap_end(slot, cron.zone)
        assert after < slot <= until and slot.tzinfo == UTC
    chained, moment = [], after
    while (moment := cron.next_after(moment)) <= until:
        chained.append(moment)
    assert chained == slots


TOKENS = ["*", "0", "5", "31", "61", "5-5", "1-5", "5-2", "*/0", "*/15", "59/15", "MON", "jan"]
TOKENS += ["L", "15W", "1#2", "1#6", "L5", "?", "R", "H", "0-7", "29", "2", "feb", "@daily", ","]
CRONISH = st.one_of(
    st.lists(st.sampled_from(TOKENS), min_size=5, max_size=5).map(" ".join),
    st.lists(st.sampled_from(TOKENS), min_size=1, max_size=7).map(" ".join),
)


@settings(max_examples=300, deadline=None)
@given(
    pattern=st.one_of(
        st.text(max_size=40), CRONISH, st.text(" 0123456789*,-/#?LWHR()@", max_size=30)
    ),
    zone=st.one_of(st.text(max_size=30), st.sampled_from(ZONES)),
)
def test_parse_on_any_text_returns_a_firing_schedule_or_a_config_error(
    pattern: str, zone: str
) -> None:
    try:
        cron = CronSchedule.parse(pattern, zone)
    except ConfigError as error:
        assert error.field in ("trainingSchedule.pattern", "trainingSchedule.timezone")
        return
    assert cron.next_after(utc(2027, 1, 1)) > utc(2027, 1, 1)
