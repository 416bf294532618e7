"""What the validate stage keeps for the version's report: the holdout scores of the new and
the deployed model, the threshold, the native model's gain and where the data sets are."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training_tasks.reports.build import ReportInputs
from training_tasks.stages.validate.holdout import Scored

TRAIN_FILE = "train.parquet"  # extract writes it beside the holdout


def report_inputs(
    scored: Scored | None,
    checks: Sequence[Any],
    found: Mapping[str, Any],
    importance: Sequence[tuple[str, float]] | None,
    paths: tuple[Path, Path | None],
    columns: tuple[Sequence[str], str],
) -> ReportInputs | None:
    """The report's inputs, or None when the model's scores cannot be drawn (the report then
    shows the verdict and checks alone)."""
    usable = {"holdout", "scores"} <= {check.name for check in checks if check.passed}
    if scored is None or not usable or "model" not in scored.scores:
        return None
    holdout_path, train_path = paths
    if train_path is None and (holdout_path.parent / TRAIN_FILE).exists():
        train_path = holdout_path.parent / TRAIN_FILE
    comparison = found.get("comparison") or {}
    deployed = scored.scores.get("deployed") if comparison.get("status") in _COMPARED else None
    return ReportInputs(
        labels=scored.labels,
        scores=scored.scores["model"],
        threshold=float(found["decision_threshold"]),
        features=list(columns[0]),
        target=columns[1],
        deployed_scores=None if deployed is None else np.asarray(deployed),
        deployed_version=_deployed_version(comparison.get("deployedModelPath")),
        importance=importance,
        train_path=train_path,
        holdout_path=holdout_path,
    )


# The comparison ran on the same rows: its scores are numbers within [0, 1].
_COMPARED = ("passed", "failed", "compared")


def _deployed_version(path: str | None) -> str | None:
    """`<version>` of `models/<org>/deployed_<version>/model.onnx`."""
    if not path:
        return None
    folder = Path(path).parent.name
    return folder.removeprefix("deployed_") if folder.startswith("deployed_") else None
