"""Build, write and rebuild `artifacts/<org>/<version>/report.html` and the data behind it,
`report_data.json`, from which a report is rebuilt after the holdout is deleted."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training_tasks.errors import ConfigError
from training_tasks.files import (
    UnsafeFile,
    read_script_output,
    write_bytes_atomic,
    write_json_atomic,
)
from training_tasks.protocol.ids import check_version_id

REPORT_FILE = "report.html"
DATA_FILE = "report_data.json"
VALIDATION_FILE = "validation.json"
DATA_SCHEMA = 1
# Report data holds a few hundred points per curve and 101 percentiles per feature.
MAX_DATA_BYTES = 64 << 20
log = logging.getLogger(__name__)


class ReportUnavailable(LookupError):
    """A report cannot be built: the files it is built from are missing or unreadable."""


@dataclass(frozen=True)
class ReportInputs:
    """What the validate stage keeps for the report: scores, not the models."""

    labels: np.ndarray
    scores: np.ndarray
    threshold: float
    features: Sequence[str]
    target: str
    deployed_scores: np.ndarray | None = None
    deployed_version: str | None = None
    importance: Sequence[tuple[str, float]] | None = None
    train_path: Path | None = None
    holdout_path: Path | None = None


def report_data(inputs: ReportInputs) -> dict[str, Any]:
    """The JSON the report is drawn from: curve data, feature gain, data summaries."""
    from training_tasks.reports.evidence import score_evidence
    from training_tasks.reports.profile import profile_parquet, time_range

    doc: dict[str, Any] = {"schema": DATA_SCHEMA, "threshold": inputs.threshold}
    doc["model"] = score_evidence(inputs.labels, inputs.scores, inputs.threshold)
    if inputs.deployed_scores is not None:
        deployed = score_evidence(inputs.labels, inputs.deployed_scores, inputs.threshold)
        doc["deployed"] = {**deployed, "version": inputs.deployed_version}
    if inputs.importance is not None:
        doc["importance"] = [[name, float(gain)] for name, gain in inputs.importance]
    if inputs.train_path is not None and inputs.train_path.exists():
        doc["train"] = profile_parquet(inputs.train_path, inputs.features, inputs.target)
    holdout: dict[str, Any] = {
        "rows": len(inputs.labels),
        "positives": int(np.count_nonzero(inputs.labels)),
    }
    if inputs.holdout_path is not None and inputs.holdout_path.exists():
        import pyarrow.parquet as pq

        from training_tasks.reports.profile import TIME_COLUMN

        if TIME_COLUMN in pq.read_schema(inputs.holdout_path).names:
            table = pq.read_table(inputs.holdout_path, columns=[TIME_COLUMN])
            holdout.update(time_range(table.column(TIME_COLUMN)))
    doc["holdout"] = holdout
    return doc


def render_report(
    validation: Mapping[str, Any],
    data: Mapping[str, Any] | None,
    reference: Mapping[str, Any] | None = None,
) -> str:
    """The report page; `reference` is the report data of the version compared with."""
    from training_tasks.reports.context import page_context
    from training_tasks.reports.page import render
    from training_tasks.reports.plots import drawing_style

    with drawing_style():
        return render(page_context(validation, data, reference))


def write_report(
    folder: Path, validation: Mapping[str, Any], inputs: ReportInputs | None
) -> dict[str, Any]:
    """Write report_data.json and report.html into the version's artifacts `folder`.

    Never raises: the report explains a verdict and must not change it. Returns what
    validation.json records about it (file, bytes and build time, or the error).
    """
    started = time.perf_counter()
    try:
        data = {
            "organizationId": validation.get("organizationId"),
            "version": validation.get("version"),
        }
        if inputs is not None:
            data.update(report_data(inputs))
        write_json_atomic(folder / DATA_FILE, data)
        data = json.loads(json.dumps(data, sort_keys=True))  # drawn as a rebuild reads it
        reference = _deployed_reference(folder, data)
        page = render_report(validation, data, reference).encode("utf-8")
        write_bytes_atomic(folder / REPORT_FILE, page)
    except Exception as exc:  # a report failure is logged and recorded; the verdict stands
        log.exception("the report of %s could not be built", folder)
        return {
            "file": None,
            "error": f"{type(exc).__name__}: {exc}",
            "buildMs": _ms_since(started),
        }
    return {"file": REPORT_FILE, "bytes": len(page), "buildMs": _ms_since(started)}


def rebuild_report(folder: Path, compare: Path | None = None) -> Path:
    """Build the report of the version in `folder` again from its artifacts; with `compare`
    (another version's artifacts folder) against that version. Returns the file written."""
    validation = read_artifact(folder / VALIDATION_FILE)
    if validation is None:
        raise ReportUnavailable(
            f"{folder / VALIDATION_FILE} does not exist: the version was never validated, or "
            "its artifacts were removed (trainctl gc); nothing to build a report from"
        )
    data = read_artifact(folder / DATA_FILE)
    if compare is None:
        out, reference = folder / REPORT_FILE, _deployed_reference(folder, data or {})
    else:
        reference = read_artifact(compare / DATA_FILE)
        if reference is None:
            raise ReportUnavailable(
                f"{compare / DATA_FILE} does not exist: version {compare.name} was validated "
                "before reports were kept, so it has no curves or data summary to compare with"
            )
        reference = {**reference, "version": compare.name}
        out = folder / f"report-vs-{compare.name}.html"
    write_bytes_atomic(out, render_report(validation, data, reference).encode("utf-8"))
    return out


def read_artifact(path: Path) -> dict[str, Any] | None:
    """A JSON object from the artifacts folder (read as a regular file, size capped), or None."""
    try:
        doc = json.loads(read_script_output(path, MAX_DATA_BYTES, path.name))
    except FileNotFoundError:
        return None
    except (UnsafeFile, OSError, ValueError) as exc:
        raise ReportUnavailable(f"{path} cannot be read as JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ReportUnavailable(f"{path} does not hold a JSON object")
    return doc


def _deployed_reference(folder: Path, data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The deployed version's report data, from its artifacts folder beside this one."""
    version = (data.get("deployed") or {}).get("version")
    if not version:
        return None
    try:
        found = read_artifact(folder.parent / check_version_id(str(version)) / DATA_FILE)
    except (ReportUnavailable, ConfigError) as exc:
        log.warning("no drift against the deployed version: %s", exc)
        return None
    return None if found is None else {**found, "version": version}


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
