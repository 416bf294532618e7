"""Organization ids, version ids and run ids: their allowed shapes, checked before any use."""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import UTC, datetime

from training_tasks.errors import ConfigError
from training_tasks.fields import shown

ORG_ID_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
VERSION_PATTERN = re.compile(r"^v\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z_[0-9a-f]{8}$")
RUN_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")


def check_org_id(org_id: object, field: str = "organizationId") -> str:
    """Return `org_id` if it is a safe organization id, else raise ConfigError naming `field`."""
    if not isinstance(org_id, str) or not ORG_ID_PATTERN.fullmatch(org_id):
        raise ConfigError(
            field,
            f"{shown(org_id)} is not a valid organization id; use 1-63 lowercase letters, digits "
            "and inner hyphens (for example 'acme-corp')",
        )
    return org_id


def new_version_id(now: datetime) -> str:
    """A sortable version id such as `v2024-01-15T10-30-00-000Z_a1b2c3d4` for UTC time `now`."""
    utc = now.astimezone(UTC)
    stamp = utc.strftime("%Y-%m-%dT%H-%M-%S-") + f"{utc.microsecond // 1000:03d}Z"
    return f"v{stamp}_{secrets.token_hex(4)}"


def check_version_id(version: object, field: str = "version") -> str:
    """Return `version` if it has the version-id shape, else raise ConfigError naming `field`."""
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise ConfigError(
            field,
            f"{shown(version)} is not a version id; expected the form v2024-01-15T10-30-00-000Z_a1b2c3d4",
        )
    return version


def new_run_id() -> str:
    """A fresh run id (32 lowercase hex characters)."""
    return uuid.uuid4().hex


def check_run_id(run_id: object, field: str = "runId") -> str:
    """Return `run_id` if it has the run-id shape, else raise ConfigError naming `field`."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise ConfigError(field, f"{shown(run_id)} is not a run id (32 lowercase hex characters)")
    return run_id


ORG_QUEUE_PREFIX = "org."
# Where submits and status requests go; a worker serving it follows every organization's queue.
REQUESTS_QUEUE = "training.requests"


def org_queue(org_id: str) -> str:
    """The Celery queue that carries one organization's pipeline: `org.<organizationId>`."""
    return ORG_QUEUE_PREFIX + check_org_id(org_id)
