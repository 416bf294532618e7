"""What only a window model is checked for: that its graph computes the window statistics it was
trained on, held to `window_statistics` (the float64 reference) on every holdout window, and
that the native booster, fed those reference statistics, scores like the graph.

The graph's intermediate `window_features` is read from a copy of the model, cut down in memory
to the operators in front of it; the model file itself is scored as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from training_tasks.config.window_features import WindowSpec, window_statistics
from training_tasks.stages.validate.model_checks import Check, Predictor, not_run, open_session

FEATURES_OUTPUT = "window_features"
CHECK_NAME = "windowFeatures"
# Of the largest statistic's magnitude, at least 1: float32 holds a level of 3,000 rpm only to
# 2.4e-4, so an absolute 1e-4 would reject a correct graph on large readings.
FEATURE_TOLERANCE = 1e-4


class PerChunk:
    """A function of the chunk being scored, computed once for every check that needs it."""

    def __init__(self, compute: Callable[[np.ndarray], np.ndarray]) -> None:
        self.compute = compute
        self._windows: np.ndarray | None = None
        self._value = np.empty(0, dtype=np.float32)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """`compute(windows)`, from the last call when `windows` is the same chunk."""
        if windows is not self._windows:  # each chunk is a new array, seen by each check in turn
            self._value = np.asarray(self.compute(windows))
            self._windows = windows
        return self._value


def reference_of(spec: WindowSpec) -> PerChunk:
    """The reference statistics [n, columns * stats] of each chunk of windows."""
    return PerChunk(lambda windows: window_statistics(windows, spec))


def window_native(native: Predictor, features: Callable[[np.ndarray], np.ndarray]) -> Predictor:
    """The native booster over [statistics..., derived...] as a predictor of windows, fed the
    statistics `features` gives: the graph's own, so parity judges the trees and the derived
    features alone (the statistics are held to the reference by the feature check)."""
    return lambda windows: native(features(windows))


class FeatureCheck:
    """Holds the graph's `window_features` to the reference, chunk by chunk, keeping the worst."""

    def __init__(
        self,
        graph: Callable[[np.ndarray], np.ndarray],
        reference: Callable[[np.ndarray], np.ndarray],
        names: list[str],
    ) -> None:
        self.graph, self.reference, self.names = graph, reference, names
        self.windows = 0
        self.max_abs_diff = 0.0
        self.worst: dict[str, Any] = {"scaled": 0.0}

    def __call__(self, windows: np.ndarray) -> None:
        """Compare one chunk; raises ValueError when the graph's tensor has the wrong shape."""
        graph, reference = self.graph(windows), self.reference(windows)
        if graph.shape != reference.shape:
            raise ValueError(
                f"the graph's {FEATURES_OUTPUT} has shape {list(graph.shape)}, the run's windows "
                f"give {list(reference.shape)} ({len(self.names)} statistics per window)"
            )
        diff = np.abs(graph.astype(np.float64) - reference)
        scaled = np.nan_to_num(diff / np.maximum(1.0, np.abs(reference)), nan=np.inf)
        at = int(np.argmax(scaled)) if scaled.size else 0
        if scaled.size and scaled.flat[at] > self.worst["scaled"]:
            row, column = divmod(at, len(self.names))
            self.worst = {
                "scaled": float(scaled.flat[at]),
                "diff": float(diff.flat[at]),
                "feature": self.names[column],
                "window": self.windows + row,
                "graph": float(graph[row, column]),
                "reference": float(reference[row, column]),
            }
        self.max_abs_diff = max(
            self.max_abs_diff, float(np.nan_to_num(diff, nan=np.inf).max(initial=0))
        )
        self.windows += len(windows)

    def verdict(self, error: str | None, blocker: str | None) -> Check:
        """The check of every window seen; `error`: why the copy of the graph failed."""
        if blocker is not None:
            return not_run(CHECK_NAME, blocker)
        if error is not None:
            detail = f"the model's {FEATURES_OUTPUT} cannot be computed on the holdout: {error}"
            return Check(CHECK_NAME, False, None, FEATURE_TOLERANCE, detail)
        worst = self.worst
        if worst["scaled"] <= FEATURE_TOLERANCE:
            detail = (
                f"the graph's {len(self.names)} window features match window_statistics on "
                f"{self.windows} holdout windows (largest difference {self.max_abs_diff:.3g})"
            )
            return Check(CHECK_NAME, True, worst["scaled"], FEATURE_TOLERANCE, detail)
        detail = (
            f"the graph's window features differ from window_statistics (the reference in "
            f"float64) by up to {worst['diff']:.4g} in {worst['feature']} (holdout window "
            f"{worst['window']}, counted from 0: graph {worst['graph']:.7g}, reference "
            f"{worst['reference']:.7g}), more than {FEATURE_TOLERANCE:g} x max(1, |value|): the "
            "model computes other features than the ones it was trained on; export it again"
        )
        return Check(CHECK_NAME, False, worst["scaled"], FEATURE_TOLERANCE, detail)

    def summary(self) -> dict[str, Any]:
        """The finding as the report records it."""
        worst = {key: value for key, value in self.worst.items() if key != "scaled"}
        return {
            "windows": self.windows,
            "maxAbsDiff": self.max_abs_diff,
            "maxScaledDiff": self.worst["scaled"],
            "limit": FEATURE_TOLERANCE,
            "worst": worst or None,
        }


def open_feature_check(
    onnx_bytes: bytes, reference: PerChunk, names: list[str]
) -> tuple[FeatureCheck | None, Check | None]:
    """The check over the graph's `window_features` (the graph's side is `check.graph`), or the
    failed check when the graph has none to read."""
    try:
        session = open_session(features_only(onnx_bytes))
    except ValueError as exc:
        return None, Check(CHECK_NAME, False, None, FEATURE_TOLERANCE, str(exc))
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        detail = f"the model's {FEATURES_OUTPUT} cannot be read out: {str(exc).strip()}"
        return None, Check(CHECK_NAME, False, None, FEATURE_TOLERANCE, detail)
    name = session.get_inputs()[0].name
    graph = PerChunk(lambda windows: session.run([FEATURES_OUTPUT], {name: windows})[0])
    return FeatureCheck(graph, reference, names), None


def features_only(onnx_bytes: bytes) -> bytes:
    """A copy of the model whose one output is its `window_features`, without what comes after."""
    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    if not any(FEATURES_OUTPUT in node.output for node in graph.node):
        raise ValueError(
            f"the model has no tensor {FEATURES_OUTPUT!r}: a window model computes its window "
            "statistics in the graph, in front of the trees; export it with the training script"
        )
    needed, kept = {FEATURES_OUTPUT}, []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [tensor for tensor in graph.initializer if tensor.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    del graph.output[:]
    graph.output.append(
        onnx.helper.make_tensor_value_info(FEATURES_OUTPUT, onnx.TensorProto.FLOAT, None)
    )
    return bytes(model.SerializeToString())
