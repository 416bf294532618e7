"""Who scores the holdout: the model, its native booster and the deployed model, each fed its own
inputs out of the same chunk; and, for a window model, the check of its in-graph statistics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training_tasks.config.window_features import WindowSpec
from training_tasks.stages.validate.deployed import FEATURES_DIFFER, Deployed, unlike
from training_tasks.stages.validate.holdout import Holdout, HoldoutFile, Scorer
from training_tasks.stages.validate.loading import Loaded
from training_tasks.stages.validate.model_checks import (
    Check,
    OnnxModel,
    Predictor,
    open_native,
)
from training_tasks.stages.validate.recorded import DerivedFeature
from training_tasks.stages.validate.window_checks import (
    CHECK_NAME,
    FeatureCheck,
    PerChunk,
    open_feature_check,
    reference_of,
    window_native,
)


@dataclass
class WindowSide:
    """A window model's reference statistics and the check of its graph's own."""

    spec: WindowSpec
    reference: PerChunk
    check: FeatureCheck | None = None
    failed: Check | None = None  # the graph has no window features to check
    observers: dict[str, Callable[[np.ndarray], object]] = field(default_factory=dict)


def window_side(spec: WindowSpec | None, loaded: Loaded) -> WindowSide | None:
    """The window checks of a window model (None for a model of single readings)."""
    if spec is None:
        return None
    side = WindowSide(spec, reference_of(spec))
    if loaded.model is not None and loaded.onnx_bytes is not None:
        names = spec.feature_names()
        side.check, side.failed = open_feature_check(loaded.onnx_bytes, side.reference, names)
    if side.check is not None:
        side.observers[CHECK_NAME] = side.check
    return side


def native_scorer(
    path: Path | None,
    features: Sequence[str],
    derived: Sequence[DerivedFeature],
    limit: float,
    side: WindowSide | None,
) -> tuple[Predictor | None, Check | None, list[tuple[str, float]] | None]:
    """The native booster as a predictor of the model's own inputs, as `open_native` gives it;
    for a window model it is fed the graph's statistics of each window (the reference ones
    where the graph has none to read)."""
    if side is None:
        return open_native(path, features, derived, limit)
    native, check, importance = open_native(path, side.spec.feature_names(), derived, limit)
    if native is None:
        return None, check, importance
    statistics = side.check.graph if side.check is not None else side.reference
    return window_native(native, statistics), check, importance


def with_deployed_columns(
    holdout: HoldoutFile | None,
    deployed: Deployed | None,
    comparison: dict[str, Any],
    spec: WindowSpec | None,
) -> tuple[HoldoutFile | None, Deployed | None, dict[str, Any]]:
    """The holdout also reading the raw columns the deployed model names, if it has them; a
    deployed model of another kind (rows or windows, or other windows) is not compared."""
    if holdout is None or deployed is None:
        return holdout, deployed, comparison
    comparison = {**comparison, "deployedFeatures": deployed.features}
    reason = unlike(spec, deployed)
    if reason:
        return holdout, None, {**comparison, "status": FEATURES_DIFFER, "reason": reason}
    if not isinstance(holdout, Holdout):  # windows of the same columns: fed as they are
        return holdout, deployed, comparison
    extended, missing = holdout.with_columns(deployed.features)
    if missing:
        reason = f"the holdout has no numeric columns {missing}, which the deployed model takes"
        return holdout, None, {**comparison, "status": FEATURES_DIFFER, "reason": reason}
    return extended, deployed, comparison


def predictors(
    model: OnnxModel | None,
    native: Predictor | None,
    deployed: Deployed | None,
    holdout: HoldoutFile | None,
    features: list[str],
) -> dict[str, Scorer]:
    """Who scores the holdout, each fed its own columns; without a model the holdout is still
    read, to check its labels."""
    if model is None:
        return {}
    columns = holdout.features if isinstance(holdout, Holdout) else features
    own = _feeder(columns, features)
    found: dict[str, Scorer] = {"model": lambda rows: model.predict_with_alarm(own(rows))}
    if native is not None:
        found["native"] = lambda rows: native(own(rows))
    if deployed is not None:
        theirs, predict = _feeder(columns, deployed.features), deployed.model.predict
        found["deployed"] = lambda rows: predict(theirs(rows))
    return found


def _feeder(columns: list[str], wanted: list[str]) -> Callable[[np.ndarray], np.ndarray]:
    """Picks the `wanted` columns out of a holdout chunk of `columns`, as a C-ordered matrix."""
    if columns == wanted:
        return lambda rows: rows
    index = np.array([columns.index(name) for name in wanted], dtype=np.intp)
    return lambda rows: np.ascontiguousarray(rows[:, index])
