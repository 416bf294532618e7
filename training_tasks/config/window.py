"""The data window of a training run that gives no `dataRange`: `dataWindowDays` days that end
now (the default) or at the newest row of the organization's SCADA table (`windowEnd`).

Reading the newest row needs the SCADA database, which this layer never touches: the caller
passes a `LatestData` function (`pipeline/submit.py` builds it from the extract stage's bounds
query).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from training_tasks import fields as f
from training_tasks.errors import ConfigError

DEFAULT_WINDOW_DAYS = 90
# "latestData" is for data that stopped arriving (the demo's, a plant that was shut down, a
# replayed history): a window ending now would hold no rows.
WINDOW_ENDS = ("now", "latestData")
DEFAULT_WINDOW_END = "now"
# Reads the newest timestamp of the organization's SCADA table (None: the table has no rows).
LatestData = Callable[[], datetime | None]


def check_window_end(value: object, field_name: str) -> str:
    """Check a `windowEnd`: "now" (the default) or "latestData"."""
    if not isinstance(value, str) or value not in WINDOW_ENDS:
        raise ConfigError(
            field_name,
            'must be "now" (the data window ends when the run starts) or "latestData" (it ends '
            f"at the newest row of the SCADA table), got {f.shown(value)}",
        )
    return value


def check_window_days(value: object, field_name: str) -> int:
    """Check a `dataWindowDays`: whole days of data, 1 to 3650."""
    return f.integer(value, field_name, 1, 3650)


def check_request_window(req: Mapping[str, Any]) -> None:
    """Check a request's `dataWindowDays` and `windowEnd`; neither goes with a `dataRange`."""
    if "dataWindowDays" in req:
        check_window_days(req["dataWindowDays"], "dataWindowDays")
    if "windowEnd" in req:
        check_window_end(req["windowEnd"], "windowEnd")
    for key in ("dataWindowDays", "windowEnd"):
        if key in req and "dataRange" in req:
            raise ConfigError(
                key,
                "cannot be combined with dataRange, which gives both ends of the data; "
                f"give dataRange or {key}, not both",
            )


def window_range(
    req: Mapping[str, Any],
    model_defaults: Mapping[str, Any],
    now: datetime,
    latest_data: LatestData | None,
) -> tuple[datetime, datetime]:
    """`dataWindowDays` days (request, else mlModelConfig) ending now or at the newest row."""
    field_name = "windowEnd" if "windowEnd" in req else "mlModelConfig.windowEnd"
    end_at = req.get("windowEnd", model_defaults.get("windowEnd", DEFAULT_WINDOW_END))
    days = req.get("dataWindowDays", model_defaults.get("dataWindowDays", DEFAULT_WINDOW_DAYS))
    if check_window_end(end_at, field_name) == "now":
        return now - timedelta(days=days), now
    if latest_data is None:
        raise ConfigError(
            field_name,
            '"latestData" needs the newest row of the SCADA table, which is not read here; '
            "submit the run through the service, or give a dataRange",
        )
    newest = latest_data()
    if newest is None:
        raise ConfigError(
            field_name,
            '"latestData" ends the data window at the newest row of the SCADA table, but the '
            "table holds no rows; load sensor data into it, or give a dataRange",
        )
    end = end_after(newest)
    return end - timedelta(days=days), end


def end_after(newest: datetime) -> datetime:
    """The end of a window that holds the row at `newest`: the next whole second after it.

    A range's end is exclusive; a whole second keeps the recorded range readable.
    """
    return newest.replace(microsecond=0) + timedelta(seconds=1)
