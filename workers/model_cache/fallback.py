"""Where a cache finds an organization's deployment while Redis holds no announcement of it.

Deploy points `models/<org>/current` at `deployed_<version>` after the database commit. When the
key `ml:model:<org>:current` is missing (Redis restarted without persistence, was flushed, or is
new), the cache loads the model that link names, with every check an announced model gets: the
path stays in the organization's folder, the ONNX checks, metadata `organization_id` and `version`
equal to the link's, a sealed file opens only for that organization and version, a warm-up
inference. If deploy left `deployment.json` beside the model (the key's JSON), the link's
organization and version must match it, the file must have its sha256, and its sequence is used;
without it the sequence is 0, so any announcement replaces the model.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from training_tasks.files import UnsafeFile, read_script_output, sha256_file
from training_tasks.protocol import hotswap
from training_tasks.protocol.hotswap import Deployment
from training_tasks.protocol.ids import VERSION_PATTERN
from workers.model_cache.errors import ModelRejected
from workers.model_cache.model import check_org_id

# Given an organization id, its deployment to serve while Redis announces none (or None);
# raises ModelRejected when what it found must not be served.
Fallback = Callable[[str], Deployment | None]

UNKNOWN_SEQUENCE = 0  # below every announced sequence (deploys count from 1)
MODEL_FILE = "model.onnx"
MAX_RECORD_BYTES = 64 * 1024
_LINK_TARGET = re.compile(r"^deployed_(?P<version>[^/]+)$")
_REPAIR = "run `trainctl reconcile` to point it at the deployed version"


def no_fallback(org_id: str) -> Deployment | None:
    """Serve announced deployments only: nothing to fall back on."""
    return None


class LinkFallback:
    """The deployment `models/<org>/current` names; a model file is hashed only when it changed."""

    def __init__(self, ml_base_path: str | Path) -> None:
        self.ml_base_path = Path(ml_base_path)
        self._hashed: dict[Path, tuple[tuple[int, ...], Deployment]] = {}
        self._lock = threading.Lock()

    def __call__(self, org_id: str) -> Deployment | None:
        """The linked deployment of `org_id`, None without a link; ModelRejected if it is broken."""
        org_dir = self.ml_base_path / "models" / check_org_id(org_id)
        version = linked_version(org_dir / "current", org_id)
        if version is None:
            return None
        model = org_dir / f"deployed_{version}" / MODEL_FILE
        recorded = read_record(model.parent / hotswap.DEPLOYMENT_FILE, org_id, version)
        if recorded is not None:
            return replace(recorded, modelPath=str(model))
        return self._unrecorded(org_id, version, model)

    def _unrecorded(self, org_id: str, version: str, model: Path) -> Deployment:
        """A deployment of `model` with its own sha256 (load_model still checks the bytes)."""
        try:
            found = os.stat(model)
        except FileNotFoundError:
            raise ModelRejected(
                f"models/{org_id}/current points at deployed_{version}, which holds no "
                f"{MODEL_FILE}; {_REPAIR}"
            ) from None
        # Re-read every resync while the key is missing: hash again only a changed file.
        key = (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)
        with self._lock:
            seen = self._hashed.get(model)
        if seen is not None and seen[0] == key:
            return seen[1]
        deployment = Deployment(
            organizationId=org_id,
            version=version,
            modelPath=str(model),
            sha256=sha256_file(model),
            deployedAt=_iso(found.st_mtime),
            sequence=UNKNOWN_SEQUENCE,
        )
        with self._lock:
            self._hashed[model] = (key, deployment)
        return deployment


def linked_version(link: Path, org_id: str) -> str | None:
    """The version `link` points at (`deployed_<version>`), None if there is no link."""
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelRejected(
            f"{link} of organization {org_id} is not a symbolic link ({exc.strerror}); {_REPAIR}"
        ) from None
    match = _LINK_TARGET.fullmatch(target)
    if match is None or not VERSION_PATTERN.fullmatch(match["version"]):
        raise ModelRejected(
            f"{link} of organization {org_id} points at {target!r}, not at a "
            f"deployed_<version> folder beside it; {_REPAIR}"
        )
    return match["version"]


def read_record(path: Path, org_id: str, version: str) -> Deployment | None:
    """The deployment recorded in `path` (deploy's deployment.json), None if there is none."""
    try:
        raw = read_script_output(path, MAX_RECORD_BYTES, "the deployment record")
    except FileNotFoundError:
        return None
    except (UnsafeFile, OSError) as exc:
        raise ModelRejected(f"cannot read {path}: {exc}; {_REPAIR}") from None
    try:
        _event, recorded = hotswap.parse(raw)
    except (ValueError, TypeError) as exc:
        raise ModelRejected(f"{path} is not a deployment record ({exc}); {_REPAIR}") from None
    if (recorded.organizationId, recorded.version) != (org_id, version):
        raise ModelRejected(
            f"{path} records organization {recorded.organizationId} version "
            f"{recorded.version}, not {org_id} version {version} that its folder is named "
            f"after; {_REPAIR}"
        )
    return recorded


def _iso(epoch_s: float) -> str:
    moment = datetime.fromtimestamp(epoch_s, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
