"""Organizations: registration, lookup and their deployment pointer in the database."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from training_tasks.config.org import OrgConfig, parse_org_config
from training_tasks.db.tables import organizations
from training_tasks.errors import ConflictError, OrgNotRegistered
from training_tasks.protocol.ids import check_org_id
from training_tasks.protocol.keyring import (
    ENV_NAME,
    Keyring,
    SealedDataError,
    is_encrypted_text,
    text_key_id,
)
from training_tasks.redaction import mask_url
from training_tasks.registry import audit, schedules
from training_tasks.registry.rows import OrgRow, as_row

log = logging.getLogger(__name__)
_warned_plain = False  # the warning about unencrypted SCADA URLs is logged once per process


def create_org(
    engine: Engine,
    org: OrgConfig,
    *,
    actor: str,
    now: datetime,
    keyring: Keyring | None = None,
) -> None:
    """Register a new organization; refuse one whose id is taken.

    An inline SCADA URL is stored encrypted with `keyring` (default: ML_MASTER_KEYS of this
    process), or plain, with a warning, when no key is set.
    """
    scada_url = _seal_url(org, keyring)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(organizations).values(
                    id=org.organization_id,
                    name=org.name,
                    config=_stored_config(org),
                    scada_url=scada_url,
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


def update_org(
    engine: Engine,
    org: OrgConfig,
    *,
    actor: str,
    now: datetime,
    keyring: Keyring | None = None,
) -> None:
    """Replace an existing organization's config (its SCADA URL stored as in `create_org`)."""
    scada_url = _seal_url(org, keyring)
    with engine.begin() as conn:
        result = conn.execute(
            update(organizations)
            .where(organizations.c.id == org.organization_id)
            .values(name=org.name, config=_stored_config(org), scada_url=scada_url, updated_at=now)
        )
        if result.rowcount == 0:
            raise OrgNotRegistered(org.organization_id)
        _write_schedule(conn, org, actor, now)
        audit.record(
            conn,
            org.organization_id,
            "organization.updated",
            actor=actor,
            now=now,
            details={"config": org.public_dict()},
        )


def get_org(engine: Engine, org_id: str, *, keyring: Keyring | None = None) -> OrgConfig:
    """The organization's checked config, with its SCADA secret (decrypted) for the worker only.

    A URL stored encrypted needs its key in `keyring` (default: ML_MASTER_KEYS of this process);
    without it SealedDataError names the key and the fix. A URL stored plain is read as it is.
    """
    row = get_org_row(engine, org_id)
    doc = dict(row["config"])
    scada = dict(doc.get("scadaDbConfig") or {})
    if row["scada_url"]:
        scada = {"url": reveal_scada_url(row["scada_url"], org_id, keyring)}
    doc["scadaDbConfig"] = scada
    doc.pop("organizationId", None)
    return parse_org_config(doc, org_id)


def get_org_row(engine: Engine, org_id: str) -> OrgRow:
    """The organization's database row (config, current and previous version, sequence)."""
    check_org_id(org_id)
    with engine.connect() as conn:
        row = conn.execute(select(organizations).where(organizations.c.id == org_id)).first()
    if row is None:
        raise OrgNotRegistered(org_id)
    return as_row(OrgRow, row)


def list_org_ids(engine: Engine) -> list[str]:
    """Every registered organization id, sorted."""
    with engine.connect() as conn:
        return list(conn.execute(select(organizations.c.id).order_by(organizations.c.id)).scalars())


def reveal_scada_url(stored: str, org_id: str, keyring: Keyring | None = None) -> str:
    """The SCADA URL of a stored column value: decrypted if it is an enc:v1 token, else as is."""
    if not is_encrypted_text(stored):
        return stored
    try:
        return (keyring or Keyring.from_env()).decrypt_text(stored, scada_aad(org_id))
    except SealedDataError as exc:
        raise SealedDataError(
            f"organization {org_id}: the stored SCADA URL cannot be decrypted: {exc}"
        ) from None


def scada_aad(org_id: str) -> str:
    """What an encrypted SCADA URL is bound to, so it cannot be copied to another organization."""
    return f"scada_url:{org_id}"


def reencrypt_scada_urls(
    engine: Engine, keyring: Keyring, *, actor: str, now: datetime
) -> dict[str, int]:
    """Encrypt every stored SCADA URL with the current key in one transaction.

    Returns how many were found under each former key id (`plain` for unencrypted ones). Any URL
    that cannot be decrypted rolls the whole transaction back, naming its organization.
    """
    current = keyring.current
    if current is None:
        raise SealedDataError(
            f"{ENV_NAME} is not set, so there is no key to encrypt with; make one with "
            f"`trainctl secrets new-key`, put it first in {ENV_NAME}, and run this again"
        )
    found: dict[str, int] = {}
    query = select(organizations.c.id, organizations.c.scada_url).where(
        organizations.c.scada_url.is_not(None)
    )
    with engine.begin() as conn:
        for org_id, stored in conn.execute(query.with_for_update()).all():
            plain = reveal_scada_url(stored, org_id, keyring)
            was = text_key_id(stored) if is_encrypted_text(stored) else "plain"
            conn.execute(
                update(organizations)
                .where(organizations.c.id == org_id)
                .values(scada_url=keyring.encrypt_text(plain, scada_aad(org_id)))
            )
            audit.record(
                conn,
                org_id,
                "secrets.reencrypted",
                actor=actor,
                now=now,
                details={"field": "scadaDbConfig.url", "from": was, "keyId": current.key_id},
            )
            found[was] = found.get(was, 0) + 1
    return found


def _seal_url(org: OrgConfig, keyring: Keyring | None) -> str | None:
    """The column value of an inline SCADA URL: encrypted when a key is set."""
    if not org.scada_url:
        return None
    keyring = keyring or Keyring.from_env()
    if keyring.enabled:
        return keyring.encrypt_text(org.scada_url, scada_aad(org.organization_id))
    global _warned_plain
    # A URL without a password (a local SQLite file, trust auth) has nothing to hide.
    if not _warned_plain and mask_url(org.scada_url) != org.scada_url:
        _warned_plain = True
        log.warning(
            "organization %s: its SCADA URL is stored unencrypted because %s is not set; make a "
            "key with `trainctl secrets new-key`, set %s=<keyid>:<base64> on every service "
            "process, then run `trainctl secrets reencrypt`",
            org.organization_id,
            ENV_NAME,
            ENV_NAME,
        )
    return org.scada_url


def _stored_config(org: OrgConfig) -> dict[str, Any]:
    """The config column: the public config, with an inline SCADA URL left out entirely."""
    public = org.public_dict()
    public["scadaDbConfig"] = {"urlEnv": org.scada_url_env} if org.scada_url_env else {}
    return public


def _write_schedule(conn: Any, org: OrgConfig, actor: str, now: datetime) -> None:
    change = schedules.write_schedule(conn, org.organization_id, org.training_schedule, now=now)
    if change is not None:
        schedules.record_change(conn, org.organization_id, change, actor=actor, now=now)
