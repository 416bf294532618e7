"""Object keys: a file's path under ML_BASE_PATH, with '/', checked to stay in its organization."""

from __future__ import annotations

import re

from training_tasks.errors import ConfigError
from training_tasks.protocol.ids import check_org_id

# The folders under ML_BASE_PATH that hold one subfolder per organization.
ORG_FOLDERS = ("models", "artifacts", "data")
_KEY_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


def check_key(org_id: str, key: str, *, folder: bool = False) -> str:
    """Return `key` if it is a plain relative key inside the org's folders; else ConfigError.

    A key is a path under ML_BASE_PATH written with '/': `models/<org>/...`,
    `artifacts/<org>/...` or `data/<org>/...`; no `..`, `.`, empty part, leading dot or
    backslash, and never another organization's folder. A `folder` key may be the
    organization's folder itself (`models/<org>`), as a prefix to list.
    """
    parts = key.split("/") if isinstance(key, str) else []
    if (
        len(parts) < (2 if folder else 3)
        or parts[0] not in ORG_FOLDERS
        or parts[1] != check_org_id(org_id)
        or not all(_KEY_PART.fullmatch(part) for part in parts[2:])
    ):
        raise ConfigError(
            "key",
            f"{key!r} is not an object key of organization {org_id}; keys are relative paths "
            f"<{'|'.join(ORG_FOLDERS)}>/{org_id}/... without '..', empty or hidden parts",
        )
    return key
