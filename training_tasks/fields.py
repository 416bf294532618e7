"""Small checkers for JSON input: each names the field and says what is allowed.

A bad value is echoed through `shown`, which keeps about 100 characters of it and says how long
it was, so a hostile 10 MB value or a list nested 100,000 deep never fills an error message, a
log line or a stored Celery result.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from training_tasks.errors import ConfigError

SHOWN_CHARS = 100  # how much of a bad value an error repeats
MAX_KEY_CHARS = 64  # a longer key is cut in the field name an error gives
# No field of a training request or an organization config nests deeper than 4 levels.
MAX_JSON_DEPTH = 16
# Python reads any number of fraction digits; no real date-time is longer than this.
MAX_TIMESTAMP_CHARS = 64

_repr = reprlib.Repr()
# reprlib never descends below maxlevel, so a deeply nested value costs nothing to show.
_repr.maxlevel, _repr.maxlist, _repr.maxtuple, _repr.maxdict = 3, 6, 6, 4
_repr.maxstring, _repr.maxother = 40, 40
_LOG10_2 = math.log10(2)


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)` cut to about `limit` characters with an ellipsis, saying how long it was."""
    if isinstance(value, str):
        text = repr(value[: limit + 1])  # escapes may make it up to 10 times longer
        if len(value) <= limit and len(text) <= limit + 2:
            return text
        return f"{text[:limit]}… ({len(value):,} characters)"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 300:
        # str() of a huge int is slow, and refused past 4,300 digits.
        return f"a whole number of about {int(value.bit_length() * _LOG10_2) + 1:,} digits"
    text = _repr.repr(value)
    if isinstance(value, list | tuple | dict):
        most = _repr.maxdict if isinstance(value, dict) else _repr.maxlist
        if len(text) > limit:
            text = f"{text[:limit]}…"
        elif len(value) <= most:
            return text
        return f"{text} ({len(value):,} {'keys' if isinstance(value, dict) else 'items'})"
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def key_name(key: object) -> str:
    """A mapping key as a field name shows it: cut when long, repr'd when it is not text."""
    if not isinstance(key, str):
        return shown(key, MAX_KEY_CHARS)
    if len(key) <= MAX_KEY_CHARS:
        return key
    return f"{key[:MAX_KEY_CHARS]}… ({len(key):,} characters)"


def child(field: str, key: object) -> str:
    """The field name of `key` inside `field` (`hyperparameters.numLeaves`, `featureColumns[2]`)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{field}[{key}]"
    name = key_name(key)
    return f"{field}.{name}" if field else name


def check_nesting(value: object, field: str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse lists and objects nested deeper than `max_depth`, naming where (never recursing)."""
    stack: list[tuple[object, str, int]] = [(value, field, 0)]
    while stack:
        item, name, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Iterable[tuple[object, object]] = item.items()
        elif isinstance(item, list | tuple):
            children = enumerate(item)
        else:
            continue
        if depth >= max_depth:
            raise ConfigError(name or "config", nesting_problem(max_depth))
        stack.extend((v, child(name, k), depth + 1) for k, v in children)


def nesting_problem(max_depth: int) -> str:
    """What a too-deeply nested value is told."""
    return (
        f"nests lists or objects more than {max_depth} levels deep; no field is nested that "
        "deep: give the value the field takes (a name, a number, a list of names, ...)"
    )


def require_mapping(value: object, field: str) -> Mapping[str, Any]:
    """`value` if it is a JSON object, else ConfigError naming `field` and what it got."""
    if not isinstance(value, Mapping):
        raise ConfigError(field, f"must be a JSON object, got {kind(value)}")
    return value


def reject_unknown(value: Mapping[str, Any], allowed: Iterable[str], field: str) -> None:
    """Refuse the first key of `value` that is not in `allowed`, listing the allowed ones."""
    allowed_set = set(allowed)
    unknown = sorted((key for key in value if key not in allowed_set), key=str)
    if unknown:
        raise ConfigError(
            child(field, str(unknown[0])),
            f"unknown key; allowed keys are {', '.join(sorted(allowed_set))}",
        )


def integer(value: object, field: str, low: int, high: int) -> int:
    """A whole number from `low` to `high` (a float such as 3.0 counts)."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(
                field, f"must be a whole number from {low} to {high}, got {shown(value)}"
            )
    if not low <= value <= high:
        raise ConfigError(field, f"must be from {low} to {high}, got {shown(value)}")
    return value


def number(value: object, field: str, low: float, high: float, *, low_open: bool = False) -> float:
    """A finite number from `low` (excluded with `low_open`) to `high`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        raise ConfigError(field, f"must be a number, got {shown(value)}")
    bound = f"{'greater than' if low_open else 'at least'} {low} and at most {high}"
    if (value <= low if low_open else value < low) or value > high:
        raise ConfigError(field, f"must be {bound}, got {shown(value)}")
    return float(value)


def boolean(value: object, field: str) -> bool:
    """JSON true or false."""
    if not isinstance(value, bool):
        raise ConfigError(field, f"must be true or false, got {shown(value)}")
    return value


def string(value: object, field: str, *, max_len: int = 256) -> str:
    """A non-empty string of at most `max_len` characters."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field, f"must be a non-empty string, got {shown(value)}")
    if len(value) > max_len:
        raise ConfigError(field, f"must be at most {max_len} characters, got {shown(value)}")
    return value


def choice(value: object, field: str, allowed: Iterable[str]) -> str:
    """One of `allowed`."""
    options = tuple(allowed)
    if not isinstance(value, str) or value not in options:
        raise ConfigError(field, f"must be one of {', '.join(options)}, got {shown(value)}")
    return value


def string_list(value: object, field: str, *, max_items: int = 500) -> tuple[str, ...]:
    """A non-empty list of distinct names, each a string of at most 128 characters."""
    if not isinstance(value, list) or not value:
        raise ConfigError(field, f"must be a non-empty list of names, got {shown(value)}")
    if len(value) > max_items:
        raise ConfigError(field, f"must have at most {max_items} entries, got {len(value):,}")
    items = tuple(string(item, f"{field}[{i}]", max_len=128) for i, item in enumerate(value))
    seen: set[str] = set()
    for item in items:
        if item in seen:
            raise ConfigError(field, f"lists {shown(item)} more than once")
        seen.add(item)
    return items


def timestamp(value: object, field: str) -> datetime:
    """Parse an ISO 8601 date or date-time; a value without a zone is taken as UTC."""
    example = "2024-01-15T00:00:00Z"
    if not isinstance(value, str):
        raise ConfigError(field, f"must be an ISO 8601 date such as {example}, got {shown(value)}")
    text = value.strip()
    if len(text) > MAX_TIMESTAMP_CHARS:
        raise ConfigError(field, f"{shown(value)} is not an ISO 8601 date such as {example}")
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            field, f"{shown(value)} is not an ISO 8601 date such as {example}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def iso(moment: datetime) -> str:
    """UTC ISO 8601 text with a Z, as the wire format uses."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def iso_or_none(moment: datetime | None) -> str | None:
    """`iso(moment)`, or None for no time."""
    return None if moment is None else iso(moment)


def kind(value: object) -> str:
    """The JSON kind of `value` for an error message: null, a list, a string, ..."""
    names = {str: "a string", list: "a list", tuple: "a list", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), f"a {type(value).__name__}")


def _finite(value: int | float) -> bool:
    # math.isfinite converts to float, which overflows for a huge int.
    return isinstance(value, int) or math.isfinite(value)
