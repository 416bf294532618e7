"""A version's report, `artifacts/<org>/<version>/report.html`, found and read safely.

Only that one file name is served. The organization and version are checked against the id
patterns (no `/`, no `..`), the two folders on the way must be real folders (not links), and
the file is read as the service reads what a training script leaves behind: a regular file of
its own, never through a link, never blocking, with a size cap (the artifacts folder is the
script's working folder, so a link or a FIFO could be planted there).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from training_tasks.files import read_script_output
from training_tasks.protocol.ids import check_org_id, check_version_id
from training_tasks.protocol.paths import ModelStore

REPORT_NAME = "report.html"
MAX_REPORT_BYTES = 20 << 20


def report_path(store: ModelStore, org_id: str, version: str) -> Path:
    """Where the report of a version is; raises ConfigError for an id that is not one."""
    return store.artifacts(check_org_id(org_id), check_version_id(version)) / REPORT_NAME


def has_report(store: ModelStore, org_id: str, version: str) -> bool:
    """Whether the version has a report that `read_report` would serve (a stat, no read)."""
    path = report_path(store, org_id, version)
    return _folders_are_real(path) and stat.S_ISREG(_lstat_mode(path))


def read_report(store: ModelStore, org_id: str, version: str) -> bytes | None:
    """The report's bytes, or None when the version has none; raises UnsafeFile for a link,
    a FIFO, a device, a hard link or a file over MAX_REPORT_BYTES."""
    path = report_path(store, org_id, version)
    if not _folders_are_real(path):
        return None
    try:
        return read_script_output(path, MAX_REPORT_BYTES, f"the report of version {version}")
    except FileNotFoundError:
        return None


def _folders_are_real(path: Path) -> bool:
    """`artifacts/<org>` and `artifacts/<org>/<version>` are folders, not links to elsewhere."""
    return all(stat.S_ISDIR(_lstat_mode(folder)) for folder in (path.parent.parent, path.parent))


def _lstat_mode(path: Path) -> int:
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0
