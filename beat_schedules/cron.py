"""Cron patterns in an IANA time zone, turned into UTC instants by the wall-clock policy.

Wall-clock policy. A schedule is a 5-field cron pattern (minute hour day-of-month month
day-of-week, croniter's syntax; day-of-month and day-of-week are OR-ed when both are restricted)
and an IANA time zone. The pattern matches local wall-clock times, and each match fires at:

- a normal local time: that instant;
- a local time that does not exist (clocks go forward over it): the first instant after the
  gap, which is the moment of the change (New York 2027-03-14 02:30 runs at 03:00 EDT);
- a local time that happens twice (clocks go back over it): its first occurrence only, so
  the repeated hour does not fire again;
- several matches that land on the same instant (the whole gap, or the gap and the time the
  clocks jump to): that instant, once. Slots are strictly increasing UTC instants.

`CronSchedule.parse` also refuses what croniter accepts but a 5-field schedule should not mean:
seconds and year fields, @reboot, hashed and random values (H, R), ranges from a value to
itself, which croniter reads as the whole field ("5-5 * * * *" would fire every minute), and
both day fields restricted when one uses W, L or # (croniter then neither ANDs nor ORs them).

This module is pure: no database, no Redis, no Celery, no clock.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from training_tasks.errors import ConfigError

EXAMPLE = "'0 2 * * 0'"
ZONE_EXAMPLE = "'Europe/Berlin'"
MAX_PATTERN_LEN = 128
MAX_ZONE_LEN = 64
ALIASES = ("@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually")
FIELD_NAMES = ("minute", "hour", "day-of-month", "month", "day-of-week")
FIELD_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
# Keys ZoneInfo opens that are not places: the host's own zone, leap-second and POSIX copies.
NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})
NOT_ZONE_PREFIXES = ("posix/", "right/")
# Consecutive matches that may map to an instant already passed: a whole gap or fold of
# every-minute matches is at most a few hundred; past this the pattern or zone data is broken.
MAX_STALLED_MATCHES = 5_000
_ALLOWED_CHARS = re.compile(r"[0-9A-Za-z*,/\-#?() ]+")
_HASHED = re.compile(r"[hr](\(\d+-\d+\))?(/\d+)?", re.IGNORECASE)
_RANGE = re.compile(r"([^-/]+)-([^-/]+)(/\d+)?")
_NAMES = ("jan feb mar apr may jun jul aug sep oct nov dec", "sun mon tue wed thu fri sat")
# Any fixed naive start works for the template; the one used to detect never-firing patterns
# must leave croniter's 50-year search room for every pattern that fires at all.
_TEMPLATE_START = datetime(2000, 1, 1)


@dataclass(frozen=True)
class Slot:
    """One time a schedule fires, with a note for people when a clock change moved it."""

    at: datetime
    local: datetime
    note: str | None


@dataclass(frozen=True)
class CronSchedule:
    """A 5-field cron pattern in an IANA time zone; see the module docstring for the policy."""

    pattern: str
    timezone: str

    @classmethod
    def parse(
        cls, pattern: object, timezone: object = "UTC", *, field: str = "trainingSchedule"
    ) -> CronSchedule:
        """Check and normalise a pattern and zone; errors name `{field}.pattern` or `.timezone`."""
        text = _check_pattern(pattern, f"{field}.pattern")
        zone = _check_zone(timezone, f"{field}.timezone")
        return cls(text, zone)

    @property
    def zone(self) -> ZoneInfo:
        """The schedule's time zone (ZoneInfo caches instances by key)."""
        return ZoneInfo(self.timezone)

    def next_after(self, after: datetime) -> datetime:
        """The first slot strictly after an aware instant, in UTC."""
        return next(self._matches(_utc(after, "after")))[0]

    def slots(self, after: datetime, until: datetime, *, limit: int = 10_000) -> list[datetime]:
        """Slots with after < slot <= until, in UTC, ascending, at most `limit` of them."""
        start, end = _utc(after, "after"), _utc(until, "until")
        found: list[datetime] = []
        if limit <= 0 or end <= start:
            return found
        for at, _ in self._matches(start):
            if at > end:
                break
            if not found or at > found[-1]:
                if len(found) == limit:
                    break
                found.append(at)
        return found

    def preview(self, after: datetime, count: int) -> list[Slot]:
        """The next `count` slots, each noting a clock change that moved or merged it."""
        groups: list[tuple[datetime, list[datetime]]] = []
        if count <= 0:
            return []
        for at, wall in self._matches(_utc(after, "after")):
            if groups and groups[-1][0] == at:
                groups[-1][1].append(wall)
                continue
            if len(groups) == count:
                break
            groups.append((at, [wall]))
        zone = self.zone
        return [Slot(at, at.astimezone(zone), _note(at, walls, zone)) for at, walls in groups]

    def _matches(self, after: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Each naive match whose instant is after `after`, with that instant; non-decreasing."""
        zone = self.zone
        try:
            template = _compile(" ".join(self.pattern.split()))
        except _Problem as problem:
            raise ConfigError("pattern", f"{problem}; fix the stored schedule") from None
        matches = copy.copy(template)  # croniter keeps its position on itself
        wall: datetime = matches.get_next(datetime, start_time=_wall(after, zone))
        latest, stalled = after, 0
        while stalled < MAX_STALLED_MATCHES:
            at = _wall_to_utc(wall, zone)
            if at > after:
                yield at, wall
            stalled = 0 if at > latest else stalled + 1
            latest = max(latest, at)
            wall = matches.get_next(datetime)
        raise RuntimeError(
            f"{self.pattern!r} in {self.timezone} matched {stalled} times without moving forward "
            f"from {latest.isoformat()}; check the zone data (tzdata) on this host"
        )


def _utc(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name}={moment!r} has no time zone; pass an aware datetime (UTC)")
    return moment.astimezone(UTC)


def _wall(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.astimezone(zone).replace(tzinfo=None)


def _wall_to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    """The instant a naive local time fires at under the wall-clock policy."""
    # zoneinfo gives fold=0 the offset in force before a change and fold=1 the one after.
    before = wall.replace(tzinfo=zone, fold=0).utcoffset()
    after = wall.replace(tzinfo=zone, fold=1).utcoffset()
    assert before is not None and after is not None
    if before >= after:  # normal, or a repeated time whose first occurrence is the earlier
        return (wall - before).replace(tzinfo=UTC)
    return _change_between(wall - after, wall - before, zone)


def _change_between(early: datetime, late: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant in (early, late] at which the zone's offset changes."""
    low, high = early.replace(tzinfo=UTC), late.replace(tzinfo=UTC)
    old = low.astimezone(zone).utcoffset()
    second = timedelta(seconds=1)
    # Zone data changes offsets on whole seconds; about 14 halvings span a few hours.
    while high - low > second:
        middle = low + ((high - low) // 2 // second) * second
        if middle.astimezone(zone).utcoffset() == old:
            low = middle
        else:
            high = middle
    return high


def _note(at: datetime, walls: list[datetime], zone: ZoneInfo) -> str | None:
    """A sentence on why a slot is not simply its wall time, or None when it is."""
    local = at.astimezone(zone)
    missing = [w for w in walls if w != local.replace(tzinfo=None)]
    if missing:
        day = missing[0].date().isoformat()
        jump = (at - timedelta(seconds=1)).astimezone(zone) + timedelta(seconds=1)
        verb = "does not exist" if len(missing) == 1 else "do not exist"
        return (
            f"{_times(missing)} {verb} on {day} "
            f"(clocks go forward at {_clock(jump.replace(tzinfo=None), missing[0])}); "
            f"runs {'at' if len(walls) == 1 else 'once, at'} {local:%H:%M} {local.tzname()}"
        )
    wall = walls[0]
    before = wall.replace(tzinfo=zone, fold=0).utcoffset()
    after = wall.replace(tzinfo=zone, fold=1).utcoffset()
    assert before is not None and after is not None
    if before <= after:
        return None
    change = _change_between(wall - before, wall - after, zone)
    back_at = (change - timedelta(seconds=1)).astimezone(zone) + timedelta(seconds=1)
    return (
        f"{wall:%H:%M} happens twice on {wall.date().isoformat()} "
        f"(clocks go back at {_clock(back_at.replace(tzinfo=None), wall)}); "
        f"runs once, at the first {wall:%H:%M} ({local.tzname()})"
    )


def _clock(moment: datetime, day_of: datetime) -> str:
    same_day = moment.date() == day_of.date()
    return f"{moment:%H:%M}" if same_day else f"{moment:%H:%M} on {moment.date().isoformat()}"


def _times(walls: list[datetime]) -> str:
    if len(walls) <= 4:
        words = [f"{w:%H:%M}" for w in walls]
        return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"
    return f"{len(walls)} matching times from {walls[0]:%H:%M} to {walls[-1]:%H:%M}"


class _Problem(ValueError):
    """What is wrong with a pattern, before the caller's field name is known."""


def _check_pattern(raw: object, where: str) -> str:
    """The pattern with whitespace normalised, or ConfigError naming `where`."""
    if not isinstance(raw, str):
        kind = "null" if raw is None else type(raw).__name__
        raise ConfigError(where, f"must be a cron pattern string such as {EXAMPLE}, got {kind}")
    text = " ".join(raw.split())
    if text.startswith("@"):
        text = text.lower()
    if not text:
        raise ConfigError(where, f"is empty; give a cron pattern such as {EXAMPLE}")
    if len(text) > MAX_PATTERN_LEN:
        raise ConfigError(where, f"must be at most {MAX_PATTERN_LEN} characters")
    try:
        _compile(text)
    except _Problem as problem:
        raise ConfigError(where, str(problem)) from None
    return text


@lru_cache(maxsize=1024)
def _compile(text: str) -> croniter:
    """A croniter template for a normalised pattern; raises _Problem if it is unusable."""
    if text.startswith("@"):
        return _compile_alias(text)
    bad = _ALLOWED_CHARS.sub("", text)
    if bad:
        raise _Problem(
            f"contains {bad[0]!r}; a cron pattern uses digits, names such as MON or JAN "
            f"and * , - / (for example {EXAMPLE})"
        )
    fields = text.split(" ")
    if len(fields) != 5:
        extra = " (seconds and year fields are not supported)" if len(fields) in (6, 7) else ""
        raise _Problem(
            f"has {len(fields)} field{'s' if len(fields) != 1 else ''}{extra}; give exactly 5: "
            f"minute hour day-of-month month day-of-week, for example {EXAMPLE}"
        )
    for index, value in enumerate(fields):
        _check_field(index, value)
    _check_days(fields[2], fields[4])
    try:
        template = croniter(text, _TEMPLATE_START)
    except (ValueError, TypeError, KeyError, IndexError) as error:
        raise _Problem(_explain(fields, error)) from None
    try:
        copy.copy(template).get_next(datetime)
    except CroniterBadDateError:
        raise _Problem(_never_fires(fields)) from None
    return template


def _compile_alias(text: str) -> croniter:
    if text.lower() == "@reboot":
        raise _Problem(f"@reboot is not supported; use @daily or a pattern such as {EXAMPLE}")
    if text.lower() not in ALIASES:
        raise _Problem(
            f"{text!r} is not a known alias; use one of {', '.join(ALIASES)} "
            f"or a 5-field pattern such as {EXAMPLE}"
        )
    return croniter(text.lower(), _TEMPLATE_START)


def _check_field(index: int, value: str) -> None:
    """Refuse croniter extensions whose meaning surprises: H/R values and a-a ranges."""
    name = FIELD_NAMES[index]
    if _HASHED.fullmatch(value):
        raise _Problem(
            f"{name} {value!r}: hashed (H) and random (R) values are not supported; "
            f"write fixed values, for example {EXAMPLE}"
        )
    for token in value.split(","):
        matched = _RANGE.fullmatch(token)
        if matched and _number(index, matched[1]) == _number(index, matched[2]):
            # croniter reads "5-5" (and "MON-MON") as the whole field, not as the one value.
            raise _Problem(
                f"{name} range {token!r} starts and ends at the same value, which croniter "
                f"reads as every {name}; write {matched[1]!r} instead"
            )


def _check_days(dom: str, dow: str) -> None:
    """Refuse both day fields restricted when one uses W, L or #: croniter mixes AND and OR."""
    special = "w" in dom.lower() or "#" in dow or "l" in dow.lower()
    if special and dom not in ("*", "?") and dow not in ("*", "?"):
        # "0 0 13 * 5#2" fires on second Fridays only; "0 0 1 * 1#2" never fires at all.
        raise _Problem(
            f"day-of-month {dom!r} cannot be combined with day-of-week {dow!r} when either "
            "uses W, L or #, because croniter neither ANDs nor ORs them; set the other to *"
        )


def _number(index: int, text: str) -> int | str:
    word = text.lower()
    if index in (3, 4) and word in _NAMES[index - 3].split():
        return _NAMES[index - 3].split().index(word) + (1 if index == 3 else 0)
    return int(word) if word.isdigit() else word


def _explain(fields: list[str], error: Exception) -> str:
    """Say which value croniter refused, or pass on its reason with an example."""
    for index, value in enumerate(fields):
        low, high = FIELD_BOUNDS[index]
        for token in value.split(","):
            bounds = re.split(r"-", re.sub(r"[/#].*$", "", token))
            for part in bounds:
                if part.isdigit() and not low <= int(part) <= high:
                    return f"{FIELD_NAMES[index]} {int(part)} is out of range; use {low}-{high}"
                if index < 3 and part.isalpha() and part.lower() not in ("l", "w"):
                    return (
                        f"{FIELD_NAMES[index]} {part!r} is not a number; names such as JAN or "
                        "MON work only in the month and day-of-week fields"
                    )
                if (
                    index in (3, 4)
                    and part.isalpha()
                    and part.lower() not in _NAMES[index - 3].split()
                ):
                    first, last = _NAMES[index - 3].split()[0], _NAMES[index - 3].split()[-1]
                    return (
                        f"{FIELD_NAMES[index]} {part!r} is not a name croniter knows; use "
                        f"{first.upper()}-{last.upper()} or numbers {low}-{high}"
                    )
    reason = str(error).splitlines()[0][:160] if str(error).strip() else type(error).__name__
    return (
        f"is not a cron pattern croniter accepts ({reason}); give minute hour day-of-month "
        f"month day-of-week, for example {EXAMPLE}"
    )


def _never_fires(fields: list[str]) -> str:
    dom, month, dow = fields[2], fields[3], fields[4]
    if dow in ("*", "?"):
        return (
            f"never fires: day-of-month {dom!r} does not occur in month {month!r}; "
            "pick days that exist in those months"
        )
    return (
        f"never fires: no date matches day-of-month {dom!r}, month {month!r} "
        f"and day-of-week {dow!r}; check those three fields"
    )


def _check_zone(raw: object, where: str) -> str:
    """The zone name, stripped, if ZoneInfo knows it as a place; else ConfigError."""
    if not isinstance(raw, str):
        kind = "null" if raw is None else type(raw).__name__
        raise ConfigError(where, f"must be an IANA time zone such as {ZONE_EXAMPLE}, got {kind}")
    name = raw.strip()
    if not name:
        raise ConfigError(where, f"is empty; it must be an IANA time zone such as {ZONE_EXAMPLE}")
    if len(name) > MAX_ZONE_LEN:
        raise ConfigError(
            where, f"is longer than {MAX_ZONE_LEN} characters, so it is not an IANA time zone"
        )
    problem = f"{name!r} is not an IANA time zone such as {ZONE_EXAMPLE}"
    if name in NOT_ZONES or name.startswith(NOT_ZONE_PREFIXES):
        raise ConfigError(where, problem)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(where, problem) from None
    return name
