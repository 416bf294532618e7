"""Small checkers for JSON input: each names the field and says what is allowed."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from training_tasks.errors import ConfigError


def require_mapping(value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(field, f"must be a JSON object, got {_kind(value)}")
    return value


def reject_unknown(value: Mapping[str, Any], allowed: Iterable[str], field: str) -> None:
    allowed_set = set(allowed)
    unknown = sorted(set(value) - allowed_set)
    if unknown:
        where = f"{field}.{unknown[0]}" if field else unknown[0]
        raise ConfigError(where, f"unknown key; allowed keys are {', '.join(sorted(allowed_set))}")


def integer(value: object, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(field, f"must be a whole number from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(field, f"must be from {low} to {high}, got {value}")
    return value


def number(value: object, field: str, low: float, high: float, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(field, f"must be a number, got {value!r}")
    bound = f"{'greater than' if low_open else 'at least'} {low} and at most {high}"
    if (value <= low if low_open else value < low) or value > high:
        raise ConfigError(field, f"must be {bound}, got {value}")
    return float(value)


def boolean(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(field, f"must be true or false, got {value!r}")
    return value


def string(value: object, field: str, *, max_len: int = 256) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field, f"must be a non-empty string, got {value!r}")
    if len(value) > max_len:
        raise ConfigError(field, f"must be at most {max_len} characters")
    return value


def choice(value: object, field: str, allowed: Iterable[str]) -> str:
    options = tuple(allowed)
    if value not in options:
        raise ConfigError(field, f"must be one of {', '.join(options)}, got {value!r}")
    return str(value)


def string_list(value: object, field: str, *, max_items: int = 500) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(field, f"must be a non-empty list of names, got {value!r}")
    if len(value) > max_items:
        raise ConfigError(field, f"must have at most {max_items} entries")
    items = tuple(string(item, f"{field}[{i}]", max_len=128) for i, item in enumerate(value))
    duplicates = sorted({item for item in items if items.count(item) > 1})
    if duplicates:
        raise ConfigError(field, f"lists {duplicates[0]!r} more than once")
    return items


def timestamp(value: object, field: str) -> datetime:
    """Parse an ISO 8601 date or date-time; a value without a zone is taken as UTC."""
    if not isinstance(value, str):
        raise ConfigError(
            field, f"must be an ISO 8601 date such as 2024-01-15T00:00:00Z, got {value!r}"
        )
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            field, f"{value!r} is not an ISO 8601 date such as 2024-01-15T00:00:00Z"
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


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__
