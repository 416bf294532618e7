"""Scratch data of a run: the extracted training split is removed when the run succeeds.

The holdout split stays in the version's data folder `data/<org>/<version>/` (it is small, and
`validate_model` scores models on it); retention removes it with the version. A failed run keeps
all its files for inspection until retention removes them. A request with `"keepScratch": true`
keeps the training split too. With an object store its object is deleted there as well.
"""

from __future__ import annotations

import logging
from pathlib import Path

from training_tasks.pipeline.run_objects import drop_objects
from training_tasks.registry.rows import RunRow
from training_tasks.runtime import Runtime

log = logging.getLogger(__name__)


def clean_after_success(rt: Runtime, run: RunRow) -> int:
    """Remove the finished run's extracted training split; returns the bytes freed."""
    if (run.get("config") or {}).get("keepScratch"):
        return 0
    stats = run.get("data_stats") or {}
    if not stats.get("train_path"):
        return 0
    org_id, version = run["organization_id"], run["version"]
    # Runs extracted before `data/` existed keep their data in the artifacts folder.
    folders = [rt.store.data_dir(org_id, version), rt.store.legacy_data_dir(org_id, version)]
    path = Path(stats["train_path"]).resolve()
    if rt.store.objects is not None:
        # The recorded path is the extracting host's; here the split has the same name.
        local = rt.store.data_dir(org_id, version) / path.name
        drop_objects(rt.store, org_id, [local])
        path = local.resolve()
    if not any(folder.resolve() in path.parents for folder in folders):
        # Only ever delete inside the run's own data folder.
        log.warning(
            "run %s: scratch file %s is outside %s; left alone", run["id"], path, folders[0]
        )
        return 0
    try:
        freed = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.warning("run %s: could not remove scratch file %s (%s)", run["id"], path, exc)
        return 0
    log.info("run %s: removed its training split %s (%d bytes)", run["id"], path, freed)
    return freed
