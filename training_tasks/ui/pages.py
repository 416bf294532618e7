"""The data of each dashboard page, read from the registry: one query per page section.

Blocking calls (the database, a stat per version for its report): the web server runs them in
its thread pool, never on its event loop. With an object store a version whose report is not
here is listed with one when its run published it; the report page fetches it.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from training_tasks.pipeline.version_objects import stored_artifact
from training_tasks.protocol.ids import check_org_id
from training_tasks.protocol.paths import ModelStore
from training_tasks.registry import orgs, runs, schedules, versions
from training_tasks.registry.dashboard import org_overviews
from training_tasks.registry.rows import RunRow, VersionRow
from training_tasks.ui.chart import trend_svg
from training_tasks.ui.reports import REPORT_NAME, has_report
from training_tasks.ui.views import (
    age,
    health,
    overview_health,
    run_view,
    schedule_view,
    version_view,
    when,
)

if TYPE_CHECKING:
    from training_tasks.db.engine import Engine

RUNS_SHOWN = 50
VERSIONS_SHOWN = 50
SLOTS_SHOWN = 10


def overview_page(engine: Engine, now: datetime) -> dict[str, Any]:
    """Every organization with its deployed version, health and latest run."""
    rows = [
        {
            "org": org,
            "health": overview_health(org),
            "deployed_ago": age(org.deployed_at, now),
            "latest_run": when(org.run_queued_at),
        }
        for org in org_overviews(engine)
    ]
    return {"orgs": rows, "generated_at": when(now)}


def org_page(engine: Engine, store: ModelStore, org_id: str, now: datetime) -> dict[str, Any]:
    """One organization: its runs, its versions with the trend chart, its schedule."""
    row = orgs.get_org_row(engine, check_org_id(org_id))
    current = row["current_version"]
    run_rows = runs.list_runs(engine, org_id, limit=RUNS_SHOWN)
    version_rows = versions.list_versions(engine, org_id, limit=VERSIONS_SHOWN)
    schedule = schedules.get_schedule(engine, org_id)
    slots = schedules.list_slots(engine, org_id, limit=SLOTS_SHOWN) if schedule else []
    oldest_first = list(reversed(version_rows))
    chart = trend_svg(
        [
            (v["version"], v["created_at"], v["status"], version_view(v, current, False).metrics)
            for v in oldest_first
        ],
        current,
    )
    return {
        "org_id": org_id,
        "name": row["name"],
        "deployed": current,
        "previous": row["previous_version"],
        "health": health(current, run_rows[0]["status"] if run_rows else None),
        "runs": [run_view(run, now) for run in run_rows],
        "versions": [
            version_view(v, current, _has_report(engine, store, v, run_rows)) for v in version_rows
        ],
        "chart": chart,
        "schedule": schedule_view(schedule, slots, now),
        "generated_at": when(now),
        "runs_shown": RUNS_SHOWN,
    }


def _has_report(engine: Engine, store: ModelStore, v: VersionRow, run_rows: list[RunRow]) -> bool:
    """Whether the version has a report here, or (with an object store) one its run published."""
    if has_report(store, v["organization_id"], v["version"]):
        return True
    if store.objects is None:
        return False
    shown = {run["id"]: run for run in run_rows}
    run = shown.get(v["run_id"]) or runs.get_run(engine, v["run_id"])
    return stored_artifact(run, store, REPORT_NAME)
