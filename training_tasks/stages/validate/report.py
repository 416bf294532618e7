"""The validate stage's verdict: the report written to validation.json and the database."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training_tasks.errors import ValidationRejected
from training_tasks.files import fsync_dir, write_json_atomic
from training_tasks.reports.build import ReportInputs, write_report
from training_tasks.stages.validate.model_checks import Check

NEXT_STEP = (
    "The deployed model keeps serving; adjust the data range, features or thresholds "
    "and train again."
)


@dataclass(frozen=True)
class ValidationReport:
    """The verdict on one model version, with every check and measurement behind it."""

    organization_id: str
    version: str
    passed: bool
    failures: list[str]
    checks: list[Check]
    metrics: dict[str, float | None]
    script_metrics: dict[str, Any] | None
    latency: dict[str, float]
    memory: dict[str, float]
    parity: dict[str, Any]
    comparison: dict[str, Any]
    model_sha256: str | None
    model_size_bytes: int | None
    rows: int
    duration_ms: float
    # The threshold the model decides at (0.5 for a model that records none); None: not loaded.
    decision_threshold: float | None = None
    # Confusion counts at that threshold; None when the holdout could not be scored.
    counts: dict[str, int] | None = None
    # Per metric: value, 95% Wilson interval (low, high) and the successes and trials behind it.
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Findings that do not reject: a gate inside its metric's 95% interval.
    warnings: list[str] = field(default_factory=list)
    # The time kept free between the training examples and the holdout (extract's purge gap).
    purge_gap_s: float = 0.0
    # The event metrics with the counts and the range behind them; None without failure events.
    events: dict[str, Any] | None = None
    # A window model's spec and how its in-graph statistics matched the reference; None: rows.
    window: dict[str, Any] | None = None
    # What report.html is drawn from; kept in memory only, never in validation.json.
    evidence: ReportInputs | None = field(default=None, repr=False, compare=False)
    # What `write` recorded about report.html: its file, size and build time, or the error.
    html_report: dict[str, Any] = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-able camelCase data, for validation.json and the database."""
        doc = {
            "organizationId": self.organization_id,
            "version": self.version,
            "passed": self.passed,
            "failures": self.failures,
            "checks": [check.as_dict() for check in self.checks],
            "metrics": self.metrics,
            "scriptMetrics": self.script_metrics,
            "latency": self.latency,
            "memory": self.memory,
            "parity": self.parity,
            "comparison": self.comparison,
            "modelSha256": self.model_sha256,
            "modelSizeBytes": self.model_size_bytes,
            "rows": self.rows,
            "durationMs": self.duration_ms,
            "decisionThreshold": self.decision_threshold,
            "counts": self.counts,
            "intervals": self.intervals,
            "warnings": self.warnings,
            "report": self.html_report or None,
        }
        # Only where they apply: a run on single readings without events records what it did.
        extra = {"events": self.events, "window": self.window}
        doc.update({key: value for key, value in extra.items() if value is not None})
        if self.purge_gap_s or self.events is not None or self.window is not None:
            doc["purgeGapSeconds"] = self.purge_gap_s
        return dict(_jsonable(doc))

    def write(self, path: Path) -> Path:
        """Write report.html beside validation.json, then validation.json atomically: readers
        see the old file or the whole new one. A report that fails is recorded, not raised."""
        path = Path(path)
        self.html_report.clear()
        self.html_report.update(write_report(path.parent, self.as_dict(), self.evidence))
        write_json_atomic(path, self.as_dict())
        fsync_dir(path.parent)
        return path

    def raise_if_rejected(self) -> None:
        """Raise ValidationRejected listing every failed check, unless the model passed."""
        if self.passed:
            return
        raise ValidationRejected(
            f"Organization {self.organization_id}: model version {self.version} was rejected by "
            f"validation and not deployed: {'; '.join(self.failures)}. {NEXT_STEP}",
            list(self.failures),
        )


def failures_of(checks: Sequence[Check]) -> list[str]:
    """One sentence per failed check; the checks that could not run are summed up per cause."""
    failures = [check.detail for check in checks if not check.passed and check.blocked_by is None]
    blocked: dict[str, list[str]] = {}
    for check in checks:
        if check.blocked_by is not None:
            blocked.setdefault(check.blocked_by, []).append(check.name)
    for blocker, names in blocked.items():
        sentence = f"{', '.join(names)} could not be checked because the {blocker} check failed"
        failures.append(sentence)
    return failures


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars become Python numbers, NaN and infinity become null."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return str(value)
