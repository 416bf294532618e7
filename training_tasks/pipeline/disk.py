"""Free space under ML_BASE_PATH, checked before a run starts against an estimate of its needs.

The estimate: the rows the run will extract (the organization's last extract, scaled to this
run's data window) times a generous 8 bytes per column per row, twice over for the Parquet files
and the training process's own files, plus MIN_FREE_DISK_MB of headroom that is always kept.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from training_tasks import fields as f
from training_tasks.config.training import TrainingConfig
from training_tasks.db.engine import Engine
from training_tasks.errors import ConfigError, InsufficientDisk
from training_tasks.registry import runs
from training_tasks.runtime import Runtime

MB = 1024 * 1024
BYTES_PER_VALUE = 8


def estimate_run_mb(engine: Engine, config: TrainingConfig) -> float:
    """Megabytes the run's files will take, from the organization's last extract (0 if none)."""
    last = runs.last_extract(engine, config.organization_id)
    if last is None:
        return 0.0
    stats, wire = last
    rows = _rows_per_day(stats, wire) * _days(config.start, config.end)
    columns = len(config.feature_columns) + 3  # target, timestamp, asset
    return 2 * rows * columns * BYTES_PER_VALUE / MB


def check_run_fits(rt: Runtime, config: TrainingConfig) -> None:
    """Refuse to start a run whose files would not fit under ML_BASE_PATH."""
    check_free_space(
        rt.settings.ml_base_path,
        estimate_run_mb(rt.engine, config),
        org_id=config.organization_id,
        min_free_mb=rt.settings.min_free_disk_mb,
    )


def check_free_space(path: Path, need_mb: float, *, org_id: str, min_free_mb: float) -> None:
    """Raise InsufficientDisk unless `path`'s disk keeps `min_free_mb` free after `need_mb`."""
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    free_mb = shutil.disk_usage(existing).free / MB
    if free_mb - need_mb < min_free_mb:
        raise InsufficientDisk(
            f"organization {org_id}: {existing} has {free_mb:,.0f} MB free; the run needs about "
            f"{need_mb:,.0f} MB and {min_free_mb:,.0f} MB must stay free (MIN_FREE_DISK_MB). "
            "Free space there (`trainctl gc` removes old versions), shorten dataRange, or put "
            "ML_BASE_PATH on a larger disk"
        )


def _rows_per_day(stats: dict[str, Any], wire: dict[str, Any]) -> float:
    rows = int(stats.get("rows_train", 0)) + int(stats.get("rows_holdout", 0))
    rng = wire.get("dataRange") or {}
    try:
        days = _days(f.timestamp(rng["startDate"], "start"), f.timestamp(rng["endDate"], "end"))
    except (KeyError, TypeError, ConfigError):  # an old run without a usable range
        return 0.0
    return rows / days


def _days(start: Any, end: Any) -> float:
    return max((end - start).total_seconds() / 86400, 1 / 24)
