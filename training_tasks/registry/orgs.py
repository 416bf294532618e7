"""Organizations: registration, lookup and their deployment pointer in the database."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from training_tasks.db.tables import organizations
from training_tasks.errors import ConflictError, NotFoundError
from training_tasks.ids import check_org_id
from training_tasks.org_config import OrgConfig, parse_org_config
from training_tasks.registry import audit, schedules


def create_org(engine: Engine, org: OrgConfig, *, actor: str, now: datetime) -> None:
    """Register a new organization; refuse one whose id is taken."""
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(organizations).values(
                    id=org.organization_id,
                    name=org.name,
                    config=_stored_config(org),
                    scada_url=org.scada_url,
                    created_at=now,
                    updated_at=now,
                )
            )
            _write_schedule(conn, org, actor, now)
            audit.record(
                conn,
                org.organization_id,
                "organization.created",
                actor=actor,
                now=now,
                details={"config": org.public_dict()},
            )
    except IntegrityError:
        raise ConflictError(
            f"organization {org.organization_id} already exists; "
            "use `trainctl org update` to change its config"
        ) from None


def update_org(engine: Engine, org: OrgConfig, *, actor: str, now: datetime) -> None:
    """Replace an existing organization's config."""
    with engine.begin() as conn:
        result = conn.execute(
            update(organizations)
            .where(organizations.c.id == org.organization_id)
            .values(
                name=org.name, config=_stored_config(org), scada_url=org.scada_url, updated_at=now
            )
        )
        if result.rowcount == 0:
            raise NotFoundError(_missing(org.organization_id))
        _write_schedule(conn, org, actor, now)
        audit.record(
            conn,
            org.organization_id,
            "organization.updated",
            actor=actor,
            now=now,
            details={"config": org.public_dict()},
        )


def get_org(engine: Engine, org_id: str) -> OrgConfig:
    """The organization's checked config, with its SCADA secret for the worker's use only."""
    row = get_org_row(engine, org_id)
    doc = dict(row["config"])
    scada = dict(doc.get("scadaDbConfig") or {})
    if row["scada_url"]:
        scada = {"url": row["scada_url"]}
    doc["scadaDbConfig"] = scada
    doc.pop("organizationId", None)
    return parse_org_config(doc, org_id)


def get_org_row(engine: Engine, org_id: str) -> dict[str, Any]:
    """The organization's database row (config, current and previous version, sequence)."""
    check_org_id(org_id)
    with engine.connect() as conn:
        row = conn.execute(select(organizations).where(organizations.c.id == org_id)).first()
    if row is None:
        raise NotFoundError(_missing(org_id))
    return dict(row._mapping)


def list_org_ids(engine: Engine) -> list[str]:
    """Every registered organization id, sorted."""
    with engine.connect() as conn:
        return list(conn.execute(select(organizations.c.id).order_by(organizations.c.id)).scalars())


def _stored_config(org: OrgConfig) -> dict[str, Any]:
    """The config column: the public config, with an inline SCADA URL left out entirely."""
    public = org.public_dict()
    public["scadaDbConfig"] = {"urlEnv": org.scada_url_env} if org.scada_url_env else {}
    return public


def _write_schedule(conn: Any, org: OrgConfig, actor: str, now: datetime) -> None:
    change = schedules.write_schedule(conn, org.organization_id, org.training_schedule, now=now)
    if change is not None:
        schedules.record_change(conn, org.organization_id, change, actor=actor, now=now)


def _missing(org_id: str) -> str:
    return (
        f"organization {org_id} is not registered; register it with "
        f"`trainctl org create {org_id} --config org.json`"
    )
