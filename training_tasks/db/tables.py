"""The service database: organizations, the training log, model versions, schedules, audit."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


organizations = Table(
    "organizations",
    metadata,
    Column("id", String(63), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("config", JSON, nullable=False),
    Column("scada_url", Text, nullable=True),
    Column("current_version", String(64), nullable=True),
    Column("previous_version", String(64), nullable=True),
    Column("deploy_sequence", Integer, nullable=False, server_default="0"),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

training_runs = Table(
    "training_runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("organization_id", String(63), ForeignKey("organizations.id"), nullable=False),
    Column("version", String(64), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("stage", String(16), nullable=True),
    Column("stages_done", Integer, nullable=False, server_default="0"),
    Column("progress", JSON, nullable=True),
    Column("config", JSON, nullable=False),
    Column("trigger", String(32), nullable=False),
    Column("auto_deploy", Boolean, nullable=False),
    Column("task_id", String(64), nullable=True),
    Column("queued_at", UtcDateTime, nullable=False),
    Column("started_at", UtcDateTime, nullable=True),
    Column("finished_at", UtcDateTime, nullable=True),
    Column("stage_timings", JSON, nullable=True),
    Column("data_stats", JSON, nullable=True),
    Column("metrics", JSON, nullable=True),
    Column("error", Text, nullable=True),
    Column("error_trace", Text, nullable=True),
    Column("attempt", Integer, nullable=False, server_default="1"),
    Column("worker", String(255), nullable=True),
    Column("lease_owner", String(255), nullable=True),
    Column("lease_expires_at", UtcDateTime, nullable=True),
    Column("schedule_slot", UtcDateTime, nullable=True),
    # A stored cancel request: the worker holding the run stops it; a later claim or the reaper
    # finishes it as cancelled, so the request survives a worker restart.
    Column("cancel_requested_at", UtcDateTime, nullable=True),
    Column("cancel_requested_by", String(255), nullable=True),
    # One entry per attempt that ended without finishing the run: stage, why, worker, when.
    Column("attempts", JSON, nullable=True),
    # Set while no worker holds the run and its next stage's message should be on its way (from
    # when it was queued, a stage ended, or a retry is due); the reaper resends a run that waits
    # too long with nothing in its queue. NULL while a stage runs and once the run finished.
    Column("waiting_since", UtcDateTime, nullable=True),
    Index("ix_training_runs_org_queued", "organization_id", "queued_at"),
    Index("ix_training_runs_waiting_since", "waiting_since"),
    # At most one queued or running run per organization, enforced by the database itself.
    # (The statuses are `registry.rows.ACTIVE_STATUSES`, spelt out as the migrations spell them.)
    Index(
        "uq_training_runs_active_org",
        "organization_id",
        unique=True,
        sqlite_where=text("status IN ('queued', 'running')"),
        postgresql_where=text("status IN ('queued', 'running')"),
    ),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("version", String(64), primary_key=True),
    Column("organization_id", String(63), ForeignKey("organizations.id"), nullable=False),
    Column("run_id", String(32), ForeignKey("training_runs.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("model_path", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("metrics", JSON, nullable=True),
    Column("validation", JSON, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("validated_at", UtcDateTime, nullable=True),
    Column("deployed_at", UtcDateTime, nullable=True),
    Column("deployed_path", Text, nullable=True),
    # Set by garbage collection together with status "removed": the version's files are gone.
    Column("removed_at", UtcDateTime, nullable=True),
    Index("ix_model_versions_org_created", "organization_id", "created_at"),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("organization_id", String(63), nullable=True),
    Column("event", String(64), nullable=False),
    Column("actor", String(255), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("details", JSON, nullable=True),
    Index("ix_audit_events_org_at", "organization_id", "at"),
    Index("ix_audit_events_event", "event"),  # metrics count deployments by event
)

training_schedules = Table(
    "training_schedules",
    metadata,
    Column("organization_id", String(63), ForeignKey("organizations.id"), primary_key=True),
    Column("pattern", String(128), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("enabled", Boolean, nullable=False),
    # The next slot to fire (UTC); NULL while disabled. Beat reads the earliest through the index.
    Column("next_run_at", UtcDateTime, nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
    # Bumped by every edit, so a beat that computed a slot from an older version loses its update.
    Column("revision", Integer, nullable=False, server_default="1"),
    # Slots at or before this instant are settled: fired, skipped, or before the schedule existed.
    Column("settled_until", UtcDateTime, nullable=True),
    # Due rows come out in (next_run_at, organization_id) order straight from the index.
    Index("ix_training_schedules_next_run_at", "next_run_at", "organization_id"),
)

schedule_slots = Table(
    "schedule_slots",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("organization_id", String(63), ForeignKey("organizations.id"), nullable=False),
    Column("scheduled_for", UtcDateTime, nullable=False),
    Column("outcome", String(16), nullable=False),  # submitted | skipped
    Column("run_id", String(32), ForeignKey("training_runs.id"), nullable=True),
    Column("reason", Text, nullable=True),
    Column("pattern", String(128), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
    Column("beat", String(255), nullable=False),
    # Exactly once per slot: the database refuses a second record of the same scheduled time.
    UniqueConstraint("organization_id", "scheduled_for", name="uq_schedule_slots_org_slot"),
)
