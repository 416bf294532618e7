"""The holdout side of the validate stage: read it, score it with every model, judge the scores."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sklearn import metrics as skm

from training_tasks.files import UnsafeFile, open_regular, sha256_fd
from training_tasks.stages.validate.model_checks import BATCH_ROWS, Check, Predictor, not_run

CHUNK_ROWS = 65_536
DECISION_THRESHOLD = 0.5
# The holdout is written by extract, not by a script, and read in chunks: no practical cap.
MAX_HOLDOUT_BYTES = 1 << 40
METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "rocAuc", "prAuc", "positiveRate")


class HoldoutProblem(ValueError):
    """The holdout file cannot be used to judge the model."""


@dataclass(frozen=True)
class Holdout:
    """An opened holdout; it is read in chunks so memory does not grow with its row count."""

    path: Path
    parquet: pq.ParquetFile
    features: list[str]
    target: str
    sample: np.ndarray  # its first rows, for warm-up and latency

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(float32 features, int8 labels) per chunk; raises HoldoutProblem on unreadable data."""
        columns = [*self.features, self.target]
        batches = self.parquet.iter_batches(batch_size=CHUNK_ROWS, columns=columns)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (OSError, pa.ArrowException) as exc:
                raise HoldoutProblem(f"the holdout {self.path} cannot be read: {exc}") from None
            yield to_matrix(batch, self.features), self._labels(batch.column(self.target))

    def close(self) -> None:
        """Close the file the holdout is read from."""
        self.parquet.close(force=True)

    def _labels(self, column: pa.Array) -> np.ndarray:
        if column.null_count:
            raise HoldoutProblem(f"the target column {self.target!r} has missing values")
        values = column.to_numpy(zero_copy_only=False)
        if np.any((values != 0) & (values != 1)):
            raise HoldoutProblem(f"the target column {self.target!r} has values other than 0 and 1")
        return values.astype(np.int8)


def open_holdout(
    path: Path, features: list[str], target: str, expected_sha256: str | None = None
) -> tuple[Holdout | None, str]:
    """Open the holdout Parquet file, verify it is the one extract wrote, and check its columns;
    else None and the problem. The file is hashed and then read through one descriptor."""
    try:
        fd = open_regular(Path(path), MAX_HOLDOUT_BYTES, "the holdout")
    except FileNotFoundError:
        return None, f"the holdout {path} does not exist; the extract stage writes it"
    except UnsafeFile as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"the holdout {path} cannot be read: {exc}"
    handle = os.fdopen(fd, "rb")
    try:
        problem = _changed(fd, Path(path), expected_sha256)
        holdout: Holdout | None = None
        if not problem:
            holdout, problem = _read_holdout(handle, Path(path), features, target)
    except BaseException:
        handle.close()
        raise
    if holdout is None:
        handle.close()
    return holdout, problem  # an open holdout keeps the file open until Holdout.close


def _changed(fd: int, path: Path, expected_sha256: str | None) -> str:
    """Why the file is not the holdout extract recorded, or "" when it is (or none is recorded)."""
    if expected_sha256 is None:  # recorded before extract kept the holdout's own hash
        return ""
    try:
        actual = sha256_fd(fd)
    except OSError as exc:
        return f"the holdout {path} cannot be read: {exc}"
    if actual == expected_sha256:
        return ""
    return (
        f"the holdout {path} was changed after extraction (sha256 {actual} != {expected_sha256} "
        "recorded by extract), so no score on it can be trusted; train again to extract a "
        "fresh holdout"
    )


def _read_holdout(
    handle: BinaryIO, path: Path, features: list[str], target: str
) -> tuple[Holdout | None, str]:
    try:
        parquet = pq.ParquetFile(handle)
        schema = parquet.schema_arrow
        missing = [name for name in [*features, target] if name not in schema.names]
        if missing:
            return None, f"the holdout {path} lacks the columns {missing}"
        for name in [*features, target]:
            kind = schema.field(name).type
            if not (pa.types.is_floating(kind) or pa.types.is_integer(kind) or kind == pa.bool_()):
                return None, f"column {name!r} of the holdout is {kind}, not a number"
        sample = _first_rows(parquet, features)
    except (OSError, pa.ArrowException) as exc:
        return None, f"the holdout {path} cannot be read: {exc}"
    return Holdout(path, parquet, features, target, sample), ""


def _first_rows(parquet: pq.ParquetFile, features: list[str]) -> np.ndarray:
    """Up to BATCH_ROWS first rows of the features, as a float32 matrix."""
    batches, rows = [], 0
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=features):
        batches.append(batch)
        rows += batch.num_rows
        if rows >= BATCH_ROWS:
            break
    if not batches:
        return np.empty((0, len(features)), dtype=np.float32)
    return to_matrix(pa.Table.from_batches(batches).slice(0, BATCH_ROWS), features)


def to_matrix(data: pa.RecordBatch | pa.Table, features: Sequence[str]) -> np.ndarray:
    """The feature columns as a C-ordered float32 matrix in `features` order; nulls become NaN."""
    matrix = np.empty((data.num_rows, len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        column = pc.cast(data.column(name), pa.float32(), safe=False)
        matrix[:, j] = column.to_numpy(zero_copy_only=False)
    return matrix


def sample_rows(holdout: Holdout | None, width: int) -> np.ndarray:
    """Rows for warm-up and latency: the holdout's first rows, or zeros when it has none."""
    if holdout is not None and len(holdout.sample):
        return holdout.sample
    return np.zeros((BATCH_ROWS, width), dtype=np.float32)


@dataclass(frozen=True)
class Scored:
    """Labels of the whole holdout and the probabilities each model gave them."""

    labels: np.ndarray
    scores: dict[str, np.ndarray]
    errors: dict[str, str]

    @property
    def rows(self) -> int:
        """How many labelled rows the holdout has."""
        return len(self.labels)


def score_holdout(holdout: Holdout, predictors: Mapping[str, Predictor]) -> Scored:
    """Score each holdout chunk with every model in one pass; a model that fails is recorded."""
    labels: list[np.ndarray] = []
    scores: dict[str, list[np.ndarray]] = {name: [] for name in predictors}
    errors: dict[str, str] = {}
    for features, chunk_labels in holdout.chunks():
        labels.append(chunk_labels)
        for name, predict in predictors.items():
            if name in errors:
                continue
            try:
                scores[name].append(predict(features))
            except Exception as exc:  # onnxruntime and LightGBM raise unrelated exception types
                errors[name] = str(exc).strip()
    return Scored(
        labels=np.concatenate(labels) if labels else np.empty(0, dtype=np.int8),
        scores={name: _concat(parts) for name, parts in scores.items() if name not in errors},
        errors=errors,
    )


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)


def holdout_check(holdout: Holdout, labels: np.ndarray) -> Check:
    """The holdout must have rows of both classes, or the metrics are undefined."""
    rows, positives = len(labels), int(labels.sum())
    if rows == 0:
        detail = f"the holdout {holdout.path} has no rows; widen the data range or validationSplit"
        return Check("holdout", False, 0, None, detail)
    if positives in (0, rows):
        detail = (
            f"the holdout has only class {int(labels[0])} in its {rows} rows, so precision, recall "
            "and ROC AUC are undefined; widen the data range so it holds failures and normal rows"
        )
        return Check("holdout", False, rows, None, detail)
    detail = f"{rows} rows, {positives} of class 1 ({100 * positives / rows:.1f}%)"
    return Check("holdout", True, rows, None, detail)


def scores_check(scored: Scored) -> Check:
    """The model must give every holdout row a probability within [0, 1]."""
    if "model" in scored.errors:
        detail = f"the model failed to score the holdout: {scored.errors['model']}"
        return Check("scores", False, None, None, detail)
    scores = scored.scores["model"]
    bad = int(np.count_nonzero(~((scores >= 0.0) & (scores <= 1.0))))
    if bad:
        detail = f"the model returned {bad} probabilities that are not numbers within [0, 1]"
        return Check("scores", False, bad, 0, detail)
    return Check("scores", True, 0, 0, f"{len(scores)} probabilities, all within [0, 1]")


def score_and_check(
    holdout: Holdout | None, problem: str, predictors: Mapping[str, Predictor], blocker: str | None
) -> tuple[Scored | None, list[Check]]:
    """Score the holdout with every model; returns the holdout and scores checks."""
    if holdout is None:
        return None, [Check("holdout", False, None, None, problem), not_run("scores", "holdout")]
    try:
        scored = score_holdout(holdout, predictors)
    except HoldoutProblem as exc:
        return None, [Check("holdout", False, None, None, str(exc)), not_run("scores", "holdout")]
    rows_check = holdout_check(holdout, scored.labels)
    if blocker is None and not rows_check.passed:
        blocker = "holdout"
    return scored, [rows_check, not_run("scores", blocker) if blocker else scores_check(scored)]


def holdout_metrics(scored: Scored) -> dict[str, float | None]:
    """The service's own metrics of the model on the holdout."""
    labels, scores = scored.labels, scored.scores["model"]
    predicted = (scores >= DECISION_THRESHOLD).astype(np.int8)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        labels, predicted, average="binary", zero_division=0
    )
    return {
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "rocAuc": float(skm.roc_auc_score(labels, scores)),
        "prAuc": float(skm.average_precision_score(labels, scores)),
        "positiveRate": float(labels.mean()),
        "decisionThreshold": DECISION_THRESHOLD,
    }


def no_metrics() -> dict[str, float | None]:
    """Every metric as None, for a model whose scores could not be measured."""
    return {**dict.fromkeys(METRIC_NAMES), "decisionThreshold": DECISION_THRESHOLD}


def threshold_check(
    name: str, value: float | None, limits: Mapping[str, Any], blocker: str | None
) -> Check:
    """A check that the metric `name` reaches its configured threshold."""
    if blocker is not None or value is None:
        return not_run(name, blocker or "scores")
    limit = float(limits[name])
    shown, shown_limit = _pair(value, limit)
    if value >= limit:
        return Check(name, True, value, limit, f"{name} {shown} meets the threshold {shown_limit}")
    return Check(name, False, value, limit, f"{name} {shown} is below the threshold {shown_limit}")


def _pair(value: float, limit: float) -> tuple[str, str]:
    """Both numbers with just enough decimals that a failing value never prints as its limit."""
    for decimals in range(2, 7):
        shown, shown_limit = f"{value:.{decimals}f}", f"{limit:.{decimals}f}"
        if shown != shown_limit or value == limit:
            break
    return shown, shown_limit


def parity_with_native(
    native_check: Check | None, scored: Scored | None, limit: float, blocker: str | None
) -> tuple[Check, dict[str, Any]]:
    """Largest probability difference between the ONNX model and the native booster."""
    if native_check is not None:  # parity was skipped, or model.txt could not be loaded
        check = native_check
    elif blocker is not None or scored is None:
        check = not_run("parity", blocker or "holdout")
    else:
        check = _parity_check(scored, limit)
    rows = 0 if scored is None else scored.rows
    summary = {"status": _status(check), "maxAbsDiff": check.value, "limit": limit}
    return check, {**summary, "rows": rows}


def _parity_check(scored: Scored, limit: float) -> Check:
    if "native" in scored.errors:
        detail = f"the native model failed to score the holdout: {scored.errors['native']}"
        return Check("parity", False, None, limit, detail)
    diff = np.abs(scored.scores["model"].astype(np.float64) - scored.scores["native"])
    max_diff = float(diff.max())
    if max_diff < limit:
        detail = f"probabilities match the native LightGBM model within {max_diff:.4g}"
        return Check("parity", True, max_diff, limit, detail)
    detail = (
        f"the ONNX model's probabilities differ from the native LightGBM model (model.txt) by "
        f"up to {max_diff:.4g}, limit {limit:.4g}: the ONNX export does not match the booster"
    )
    return Check("parity", False, max_diff, limit, detail)


def compare_with_deployed(
    info: dict[str, Any],
    scored: Scored | None,
    metrics: Mapping[str, float | None],
    limits: Mapping[str, Any],
    blocker: str | None,
) -> tuple[Check, dict[str, Any]]:
    """The new model's ROC AUC against the deployed model's on the same holdout."""
    name, max_drop = "notWorseThanDeployed", float(limits["maxMetricDrop"])
    info = {**info, "metric": "rocAuc", "new": metrics["rocAuc"], "deployed": None}
    info["maxMetricDrop"] = max_drop
    if scored is not None and "deployed" in scored.errors:
        info["status"] = "skipped (deployed model failed on the holdout)"
        info["reason"] = scored.errors["deployed"]
    if info["status"] != "compared":
        detail = info["status"] + (f": {info['reason']}" if "reason" in info else "")
        return Check(name, True, None, None, detail), info
    if blocker is not None or scored is None or metrics["rocAuc"] is None:
        return not_run(name, blocker or "holdout"), {**info, "status": "not run"}
    new_auc = float(metrics["rocAuc"])
    deployed_auc = float(skm.roc_auc_score(scored.labels, scored.scores["deployed"]))
    floor = deployed_auc - max_drop
    info.update(deployed=deployed_auc, status="passed" if new_auc >= floor else "failed")
    if new_auc >= floor:
        detail = f"ROC AUC {new_auc:.4f}; the deployed model has {deployed_auc:.4f}"
        return Check(name, True, new_auc, floor, detail), info
    detail = (
        f"ROC AUC {new_auc:.3f} is {deployed_auc - new_auc:.3f} below the deployed model's "
        f"{deployed_auc:.3f} on the same holdout (allowed drop {max_drop:.4g})"
    )
    return Check(name, False, new_auc, floor, detail), info


def _status(check: Check) -> str:
    if check.blocked_by is not None:
        return "not run"
    if check.detail.startswith("skipped"):
        return check.detail
    return "passed" if check.passed else "failed"
