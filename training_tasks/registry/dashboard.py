"""The dashboard's reads that no registry function answers in one statement: every organization
with its deployed version and its latest run.

One SELECT for the whole overview, however many organizations there are: the latest run of each
comes from a correlated subquery that walks `ix_training_runs_org_queued` backwards, and the
deployed version is joined by its primary key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select

from training_tasks.db.tables import model_versions, organizations, training_runs


@dataclass(frozen=True)
class OrgOverview:
    """One organization as the overview lists it."""

    org_id: str
    name: str
    deployed_version: str | None
    deployed_at: datetime | None
    deploy_sequence: int
    run_version: str | None  # the latest run's, with its status and times below
    run_status: str | None
    run_stage: str | None
    run_trigger: str | None
    run_queued_at: datetime | None
    run_finished_at: datetime | None
    run_error: str | None


def org_overviews(engine: Engine) -> list[OrgOverview]:
    """Every organization by id, with its deployed version and its latest run (one query)."""
    runs, versions, orgs = training_runs.c, model_versions.c, organizations.c
    latest_run = (
        select(runs.id)
        .where(runs.organization_id == orgs.id)
        .order_by(runs.queued_at.desc())
        .limit(1)
        .correlate(organizations)
        .scalar_subquery()
    )
    query = (
        select(
            orgs.id.label("org_id"),
            orgs.name,
            orgs.current_version.label("deployed_version"),
            versions.deployed_at,
            orgs.deploy_sequence,
            runs.version.label("run_version"),
            runs.status.label("run_status"),
            runs.stage.label("run_stage"),
            runs.trigger.label("run_trigger"),
            runs.queued_at.label("run_queued_at"),
            runs.finished_at.label("run_finished_at"),
            runs.error.label("run_error"),
        )
        .select_from(
            organizations.outerjoin(training_runs, runs.id == latest_run).outerjoin(
                model_versions, versions.version == orgs.current_version
            )
        )
        .order_by(orgs.id)
    )
    with engine.connect() as conn:
        return [OrgOverview(**row._asdict()) for row in conn.execute(query)]
