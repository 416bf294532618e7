"""The rows the registry returns, typed: one TypedDict per table, and the statuses as Literals.

A row stays the plain dict of its SQLAlchemy mapping (`as_row`), so callers index, copy and
serialize it to JSON as before; the TypedDict only tells mypy its keys (exactly the table's
columns in `db/tables.py`) and their types. The status sets are defined here and nowhere else.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar, cast, get_args

if TYPE_CHECKING:  # the types alone import no SQLAlchemy
    from sqlalchemy import Row

# A run holds the organization's one active slot while queued or running (a unique index).
ActiveStatus = Literal["queued", "running"]
# `validated`: the run passed validation and stops there (no autoDeploy); `succeeded`: deployed.
FinishedStatus = Literal["succeeded", "validated", "rejected", "failed", "cancelled"]
RunStatus = Literal[ActiveStatus, FinishedStatus]
ACTIVE_STATUSES: tuple[ActiveStatus, ...] = get_args(ActiveStatus)
FINISHED_STATUSES: tuple[FinishedStatus, ...] = get_args(FinishedStatus)

# A version in one of these states has passed validation and its files are on disk.
DeployableStatus = Literal["validated", "superseded", "deployed"]
# `removed`: garbage collection deleted the version's files; the row stays for the record.
VersionStatus = Literal[DeployableStatus, "trained", "rejected", "removed"]
DEPLOYABLE_STATUSES: tuple[DeployableStatus, ...] = get_args(DeployableStatus)

SlotOutcome = Literal["submitted", "skipped"]
SLOT_OUTCOMES: tuple[SlotOutcome, ...] = get_args(SlotOutcome)

R = TypeVar("R")


def as_row(kind: type[R], row: Row[Any]) -> R:
    """`row` as the plain dict of its columns, typed as `kind` (a TypedDict of its table)."""
    return cast(R, dict(row._mapping))


class OrgRow(TypedDict):
    """An `organizations` row: the stored config and the deployment pointer."""

    id: str
    name: str
    config: dict[str, Any]
    scada_url: str | None  # plain, or an enc:v1 token (registry.orgs.reveal_scada_url)
    current_version: str | None
    previous_version: str | None
    deploy_sequence: int
    created_at: datetime
    updated_at: datetime


class DeploymentState(TypedDict):
    """The deployment columns of an `organizations` row, as read under its lock."""

    current_version: str | None
    previous_version: str | None
    deploy_sequence: int


class RunRow(TypedDict):
    """A `training_runs` row: one run of the training log."""

    id: str
    organization_id: str
    version: str
    status: RunStatus
    stage: str | None
    stages_done: int
    progress: dict[str, Any] | None
    config: dict[str, Any]
    trigger: str
    auto_deploy: bool
    task_id: str | None
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    stage_timings: dict[str, Any] | None
    data_stats: dict[str, Any] | None
    metrics: dict[str, Any] | None
    error: str | None
    error_trace: str | None
    attempt: int
    worker: str | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    schedule_slot: datetime | None
    cancel_requested_at: datetime | None
    cancel_requested_by: str | None
    attempts: list[dict[str, Any]] | None
    waiting_since: datetime | None


class VersionRow(TypedDict):
    """A `model_versions` row: one trained model and what became of it."""

    version: str
    organization_id: str
    run_id: str
    status: VersionStatus
    model_path: str
    sha256: str
    size_bytes: int
    metrics: dict[str, Any] | None
    validation: dict[str, Any] | None
    created_at: datetime
    validated_at: datetime | None
    deployed_at: datetime | None
    deployed_path: str | None
    removed_at: datetime | None


class ScheduleSlotRow(TypedDict):
    """A `schedule_slots` row: one scheduled time a beat settled, and how."""

    id: int
    organization_id: str
    scheduled_for: datetime
    outcome: SlotOutcome
    run_id: str | None
    reason: str | None
    pattern: str
    timezone: str
    recorded_at: datetime
    beat: str


class AuditEventRow(TypedDict):
    """An `audit_events` row."""

    id: int
    organization_id: str | None
    event: str
    actor: str
    at: datetime
    details: dict[str, Any] | None
