"""The demo's four organizations: their SCADA data, written once into SQLite files or into a
PostgreSQL database, and their registration with the service.

`acme-corp` and `globex` drift before failures labelled row by row; `initech`'s rare failures
show only in the ratio of two sensors; `vandelay`'s failures are events in a maintenance log
(`failure_events`), preceded by hours of drift that a window shows and one reading does not.
Where the text goes is the caller's: `say` prints a line, `busy` shows work in progress.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from training_tasks.config.org import parse_org_config
from training_tasks.demo import events, scada
from training_tasks.demo.postgres import (
    ensure_database,
    load_demo_events,
    load_demo_table,
)
from training_tasks.errors import NotFoundError
from training_tasks.redaction import mask_url

DEMO_START = datetime(2026, 1, 1, tzinfo=UTC)
RARE_ORG = "initech"
RARE_DAYS = 60
RARE_ASSETS = 8
EVENT_ORG = "vandelay"
EVENT_ASSETS = 20
EVENT_DAYS = 60
DEMO_LAYOUTS = {
    "acme-corp": scada.ACME_LAYOUT,
    "globex": scada.GLOBEX_LAYOUT,
    RARE_ORG: scada.INITECH_LAYOUT,
    EVENT_ORG: events.VANDELAY_LAYOUT,
}
Say = Callable[[str], None]
Busy = Callable[[str], AbstractContextManager[Any]]


@dataclass(frozen=True)
class DemoData:
    """One demo organization's data: readings a week at a time, and failure events if any."""

    shape: str  # names the data: its size and kind
    days: int
    frames: Callable[[], Iterator[pd.DataFrame]]
    events: Callable[[], pd.DataFrame] | None = None


def prepare_demo_orgs(
    svc: Any,
    demo_dir: Path,
    assets: int,
    days: int,
    scada_url: str | None,
    *,
    say: Say,
    busy: Busy,
) -> list[str]:
    """Write each demo organization's SCADA data (unless it is there) and register the org."""
    demo_dir.mkdir(parents=True, exist_ok=True)
    if scada_url is not None and ensure_database(scada_url):
        say(f"created the database of {mask_url(scada_url)}")
    for seed, (org_id, layout) in enumerate(DEMO_LAYOUTS.items(), start=1):
        data = demo_data(org_id, assets, days, seed)
        if scada_url is None:
            db_path = demo_dir / f"scada_{org_id}_{data.shape}.db"
            url = _load_sqlite(db_path, data, layout, org_id, say, busy)
        else:
            _load_postgres(scada_url, data, layout, org_id, say)
            url = scada_url
        if org_id == EVENT_ORG:
            config = events.event_org_config(org_id, url, layout, window_days=data.days)
        else:
            config = scada.demo_org_config(org_id, url, layout, window_days=data.days)
        if org_id == RARE_ORG:
            config["mlModelConfig"].update(scada.RARE_FAILURE_MODEL)
        _register(svc, org_id, config, say)
    return list(DEMO_LAYOUTS)


def demo_data(org_id: str, assets: int, days: int, seed: int) -> DemoData:
    """The data of one demo organization; `assets` and `days` size the two drift ones."""
    if org_id == RARE_ORG:
        frames = functools.partial(
            scada.iter_rare_failure_frames,
            assets=RARE_ASSETS,
            days=RARE_DAYS,
            interval_min=15,
            seed=seed,
            start=DEMO_START,
        )
        return DemoData(f"{RARE_ASSETS}x{RARE_DAYS}d_rare", RARE_DAYS, frames)
    if org_id == EVENT_ORG:
        fleet = events.drift_fleet(
            assets=EVENT_ASSETS, days=EVENT_DAYS, seed=seed, start=DEMO_START
        )
        shape = f"{EVENT_ASSETS}x{EVENT_DAYS}d_events"
        return DemoData(shape, EVENT_DAYS, fleet.readings, fleet.events)
    frames = functools.partial(
        scada.iter_sensor_frames,
        assets=assets,
        days=days,
        interval_min=10,
        seed=seed,
        start=DEMO_START,
    )
    return DemoData(f"{assets}x{days}d", days, frames)


def _load_sqlite(
    db_path: Path, data: DemoData, layout: scada.ScadaLayout, org_id: str, say: Say, busy: Busy
) -> str:
    """A demo SQLite file (written once, under a temporary name first); its URL."""
    if not db_path.exists():
        partial = db_path.with_name(f".{db_path.name}.partial")
        partial.unlink(missing_ok=True)
        failures = ""
        with busy(f"generating demo SCADA data for {org_id}"):
            rows = scada.write_scada_sqlite(partial, data.frames(), layout)
            if data.events is not None:
                count = events.write_failure_events(f"sqlite:///{partial}", data.events())
                failures = f" and {count:,} failure events"
        partial.replace(db_path)
        say(f"generated {rows:,} sensor rows{failures} for {org_id} in {db_path}")
    return f"sqlite:///{db_path}"


def _load_postgres(
    scada_url: str, data: DemoData, layout: scada.ScadaLayout, org_id: str, say: Say
) -> None:
    """The organization's tables in the PostgreSQL database of `scada_url`, unless there."""
    tag = f"{org_id}, {data.shape} from {DEMO_START:%Y-%m-%d}"
    where = f"of {mask_url(scada_url)}"
    loaded = load_demo_table(scada_url, data.frames, layout, tag)
    state = "already held" if loaded.kept else "loaded"
    say(f"{org_id}: {state} {loaded.rows:,} sensor rows in table {layout.table!r} {where}")
    if data.events is not None:
        loaded = load_demo_events(scada_url, data.events, tag)
        state = "already held" if loaded.kept else "loaded"
        say(
            f"{org_id}: {state} {loaded.rows:,} failure events in table {events.EVENTS_TABLE!r} {where}"
        )


def _register(svc: Any, org_id: str, config: dict[str, Any], say: Say) -> None:
    """Register the organization, or bring a registered one to the demo's config.

    A schedule set since (`trainctl schedule`) is kept.
    """
    try:
        current = svc.get_organization(org_id)
    except NotFoundError:
        svc.register_organization(org_id, config, actor="demo")
        say(f"registered organization {org_id} (queue org.{org_id})")
        return
    if current.get("trainingSchedule"):
        config["trainingSchedule"] = current["trainingSchedule"]
    wanted = parse_org_config(config, org_id).public_dict()
    if any(current.get(key) != value for key, value in wanted.items()):
        svc.update_organization(org_id, config, actor="demo")
        say(f"updated organization {org_id} to the demo's config")
