"""The holdout side of the validate stage: read it, and score it with every model in one pass."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from training_tasks.files import UnsafeFile, open_regular, sha256_fd
from training_tasks.stages.validate.model_checks import BATCH_ROWS, Check, not_run

CHUNK_ROWS = 65_536
# The holdout is written by extract, not by a script, and read in chunks: no practical cap.
MAX_HOLDOUT_BYTES = 1 << 40
# A scorer gives each row's probability, and the model's own alarms when it has them.
Scorer = Callable[[np.ndarray], np.ndarray | tuple[np.ndarray, np.ndarray | None]]


class HoldoutProblem(ValueError):
    """The holdout file cannot be used to judge the model."""


class HoldoutFile(Protocol):
    """An opened holdout as scoring reads it: what each model is fed, chunk by chunk."""

    @property
    def path(self) -> Path:
        """Where the holdout is."""

    @property
    def parquet(self) -> pq.ParquetFile:
        """The file, opened once and verified."""

    @property
    def sample(self) -> np.ndarray:
        """The first inputs, for warm-up and latency."""

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(model inputs, int8 labels) per chunk."""

    def close(self) -> None:
        """Close the file."""


# Reads an opened, verified holdout file: (holdout, "") or (None, the problem).
Reader = Callable[[BinaryIO, Path], tuple["HoldoutFile | None", str]]


@dataclass(frozen=True)
class Holdout:
    """An opened holdout; it is read in chunks so memory does not grow with its row count."""

    path: Path
    parquet: pq.ParquetFile
    features: list[str]  # the model's columns first, then any another model needs
    target: str
    sample: np.ndarray  # the first rows of the model's columns, for warm-up and latency

    def with_columns(self, names: Sequence[str]) -> tuple[Holdout, list[str]]:
        """This holdout also reading `names` (after its own columns); else the ones it lacks."""
        schema = self.parquet.schema_arrow
        missing = [
            name
            for name in names
            if name not in schema.names or not is_number(schema.field(name).type)
        ]
        if missing:
            return self, missing
        extra = [name for name in dict.fromkeys(names) if name not in self.features]
        return replace(self, features=[*self.features, *extra]), []

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
        return labels_of(column, self.target)


def labels_of(column: pa.Array, target: str) -> np.ndarray:
    """The 0/1 labels of a target column as int8; raises HoldoutProblem on any other value."""
    if column.null_count:
        raise HoldoutProblem(f"the target column {target!r} has missing values")
    values = column.to_numpy(zero_copy_only=False)
    if np.any((values != 0) & (values != 1)):
        raise HoldoutProblem(f"the target column {target!r} has values other than 0 and 1")
    return values.astype(np.int8)


def open_holdout(
    path: Path,
    features: list[str],
    target: str,
    expected_sha256: str | None = None,
    read: Reader | None = None,
) -> tuple[HoldoutFile | None, str]:
    """Open the holdout Parquet file, verify it is the one extract wrote, and check its columns;
    else None and the problem. The file is hashed and then read through one descriptor.

    `read` reads a holdout of another layout (windows); by default one row is one example."""
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
        holdout: HoldoutFile | None = None
        if not problem:
            if read is None:
                holdout, problem = _read_holdout(handle, Path(path), features, target)
            else:
                holdout, problem = read(handle, Path(path))
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
            if not is_number(kind):
                return None, f"column {name!r} of the holdout is {kind}, not a number"
        sample = _first_rows(parquet, features)
    except (OSError, pa.ArrowException) as exc:
        return None, f"the holdout {path} cannot be read: {exc}"
    return Holdout(path, parquet, features, target, sample), ""


def is_number(kind: pa.DataType) -> bool:
    return bool(pa.types.is_floating(kind) or pa.types.is_integer(kind) or kind == pa.bool_())


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


def sample_rows(holdout: HoldoutFile | None, shape: tuple[int, ...]) -> np.ndarray:
    """Inputs for warm-up and latency: the holdout's first ones, or zeros of `shape` (one
    input's) when it has none."""
    if holdout is not None and len(holdout.sample):
        return holdout.sample
    return np.zeros((BATCH_ROWS, *shape), dtype=np.float32)


@dataclass(frozen=True)
class Scored:
    """Labels of the whole holdout and the probabilities each model gave them."""

    labels: np.ndarray
    scores: dict[str, np.ndarray]
    errors: dict[str, str]
    # The alarms a model decided itself (its `failure_alarm` output), by model.
    alarms: dict[str, np.ndarray]

    @property
    def rows(self) -> int:
        """How many labelled rows the holdout has."""
        return len(self.labels)


def score_holdout(
    holdout: HoldoutFile,
    predictors: Mapping[str, Scorer],
    observers: Mapping[str, Callable[[np.ndarray], object]] | None = None,
) -> Scored:
    """Score each holdout chunk with every model in one pass; a model that fails is recorded.

    `observers` see each chunk's inputs too (a check that keeps its own findings); one that
    raises is recorded under its name in `errors` and not called again."""
    labels: list[np.ndarray] = []
    scores: dict[str, list[np.ndarray]] = {name: [] for name in predictors}
    alarms: dict[str, list[np.ndarray]] = {}
    errors: dict[str, str] = {}
    for features, chunk_labels in holdout.chunks():
        labels.append(chunk_labels)
        _observe(observers or {}, features, errors)
        for name, predict in predictors.items():
            if name in errors:
                continue
            try:
                out = predict(features)
            except Exception as exc:  # onnxruntime and LightGBM raise unrelated exception types
                errors[name] = str(exc).strip()
                continue
            if isinstance(out, tuple):
                out, chunk_alarms = out
                if chunk_alarms is not None:
                    alarms.setdefault(name, []).append(chunk_alarms)
            scores[name].append(out)
    return Scored(
        labels=np.concatenate(labels) if labels else np.empty(0, dtype=np.int8),
        scores={name: _concat(parts) for name, parts in scores.items() if name not in errors},
        errors=errors,
        alarms={
            name: np.concatenate(parts) for name, parts in alarms.items() if name not in errors
        },
    )


def _observe(
    observers: Mapping[str, Callable[[np.ndarray], object]],
    features: np.ndarray,
    errors: dict[str, str],
) -> None:
    for name, observe in observers.items():
        if name in errors:
            continue
        try:
            observe(features)
        except Exception as exc:  # onnxruntime raises unrelated exception types
            errors[name] = str(exc).strip()


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)


def holdout_check(holdout: HoldoutFile, labels: np.ndarray) -> Check:
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
    holdout: HoldoutFile | None,
    problem: str,
    predictors: Mapping[str, Scorer],
    blocker: str | None,
    observers: Mapping[str, Callable[[np.ndarray], object]] | None = None,
) -> tuple[Scored | None, list[Check]]:
    """Score the holdout with every model; returns the holdout and scores checks."""
    if holdout is None:
        return None, [Check("holdout", False, None, None, problem), not_run("scores", "holdout")]
    try:
        scored = score_holdout(holdout, predictors, observers)
    except HoldoutProblem as exc:
        return None, [Check("holdout", False, None, None, str(exc)), not_run("scores", "holdout")]
    rows_check = holdout_check(holdout, scored.labels)
    if blocker is None and not rows_check.passed:
        blocker = "holdout"
    return scored, [rows_check, not_run("scores", blocker) if blocker else scores_check(scored)]
