"""The audit trail: who or what did what to which organization, and when."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from training_tasks.db.tables import audit_events
from training_tasks.registry.rows import AuditEventRow, as_row


def record(
    conn: Connection,
    org_id: str | None,
    event: str,
    *,
    actor: str,
    now: datetime,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one audit event inside the caller's transaction."""
    conn.execute(
        insert(audit_events).values(
            organization_id=org_id, event=event, actor=actor, at=now, details=details or {}
        )
    )


def list_events(engine: Engine, org_id: str, limit: int = 100) -> list[AuditEventRow]:
    """The newest audit events of an organization, newest first."""
    query = (
        select(audit_events)
        .where(audit_events.c.organization_id == org_id)
        .order_by(audit_events.c.at.desc(), audit_events.c.id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        return [as_row(AuditEventRow, row) for row in conn.execute(query)]
