"""What the model file records about its decision and derived features, against what the run
recorded: the run's training config (from the database) and the script's metrics.json.

Pure functions over the ONNX metadata map; each returns sentences naming the key and both values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training_tasks.config.derived import check_ast, compile_features
from training_tasks.config.training import TrainingConfig
from training_tasks.config.window_features import WindowSpec
from training_tasks.protocol.decision import (
    DEFAULT_THRESHOLD,
    DERIVED_KEY,
    THRESHOLD_KEY,
    BadThreshold,
    is_probability,
    threshold_of,
)

DerivedFeature = Mapping[str, Any]  # {"name", "expression", "ast"}, as config/derived.py compiles
WINDOW_KEY = "window"  # JSON: {"interval", "intervalSeconds", "length", "columns", "stats"}
WINDOW_FEATURES_KEY = "window_feature_columns"  # JSON: the statistics' names, in input order
WINDOW_FIELDS = ("interval", "intervalSeconds", "length", "columns", "stats")


@dataclass(frozen=True)
class RunRecord:
    """What the run recorded that the model file must repeat.

    `derived_features` None: no run is known (a model file judged on its own), so the model's
    metadata is taken as it is. `thresholds`: where the run recorded its decision threshold
    (for example "decisionPolicy", "metrics.json") and the value found there; None where a
    threshold should have been recorded and was not.
    """

    derived_features: Sequence[DerivedFeature] | None = None
    thresholds: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelDecision:
    """The model's decision threshold and derived features as its metadata records them."""

    threshold: float | None  # DEFAULT_THRESHOLD where it records none; None: unreadable
    derived_features: list[DerivedFeature]
    problems: list[str]


def read_decision(
    meta: Mapping[str, str], run: RunRecord, features: Sequence[str]
) -> ModelDecision:
    """The model's recorded decision, and every way it differs from what the run recorded.

    `features`: the raw feature columns the model's derived features may read."""
    problems: list[str] = []
    threshold: float | None
    try:
        threshold = threshold_of(meta)
    except BadThreshold as exc:
        threshold = None
        problems.append(f"the model's {exc}")
    else:
        problems += _threshold_problems(meta, threshold, run.thresholds)
    derived, problem = _derived_of(meta, features)
    if problem:
        problems.append(problem)
    elif run.derived_features is not None:
        problems += _derived_problems(derived, list(run.derived_features))
    return ModelDecision(threshold, derived, problems)


def _threshold_problems(
    meta: Mapping[str, str], threshold: float, recorded: Mapping[str, object]
) -> list[str]:
    shown = repr(threshold) if THRESHOLD_KEY in meta else f"not recorded (read as {threshold!r})"
    problems = []
    for where, value in recorded.items():
        if value is None:
            problems.append(
                f"the run's {where} records no {THRESHOLD_KEY}, though its decision policy has "
                "the script choose one; the training script must write it"
            )
        elif not is_probability(value):
            problems.append(f"the run's {where} {THRESHOLD_KEY} {value!r} is not a probability")
        # Decided in float32 by the graph: thresholds equal as float32 make the same decisions.
        elif np.float32(value) != np.float32(threshold):  # type: ignore[arg-type]
            problems.append(
                f"the model's {THRESHOLD_KEY} is {shown} but the run's {where} records {value!r}"
            )
    return problems


def window_problems(meta: Mapping[str, str], spec: WindowSpec) -> list[str]:
    """How a window model's `window` and `window_feature_columns` differ from the run's spec."""
    wanted = {key: spec.to_wire()[key] for key in WINDOW_FIELDS}
    problems = []
    recorded = _json_of(meta, WINDOW_KEY)
    if not isinstance(recorded, dict):
        problems.append(f"the model does not record its window spec as JSON in {WINDOW_KEY!r}")
    elif {key: recorded.get(key) for key in WINDOW_FIELDS} != wanted:
        shown = {key: recorded.get(key) for key in WINDOW_FIELDS}
        problems.append(f"the model's window is {shown} but the run's windows is {wanted}")
    names = _json_of(meta, WINDOW_FEATURES_KEY)
    if names != spec.feature_names():
        problems.append(
            f"the model's {WINDOW_FEATURES_KEY} is {names} but the run's windows give "
            f"{spec.feature_names()}"
        )
    return problems


def _json_of(meta: Mapping[str, str], key: str) -> Any:
    """The JSON value of a metadata entry; None where it is missing or unreadable."""
    try:
        return json.loads(meta[key])
    except (KeyError, ValueError, RecursionError):  # RecursionError: nested too deep to read
        return None


def _derived_of(
    meta: Mapping[str, str], features: Sequence[str]
) -> tuple[list[DerivedFeature], str]:
    """The model's derived features ([] for a model without any), or why they cannot be read.

    The metadata comes from the training script's file, so it is checked like any input before
    validation evaluates it (a model judged without a run is scored on its own features)."""
    raw = meta.get(DERIVED_KEY)
    if raw is None:
        return [], ""
    try:
        derived = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can read
        derived = None
    if not isinstance(derived, list) or not all(_is_feature(item) for item in derived):
        return [], (
            f"the model's {DERIVED_KEY} metadata is not a JSON list of "
            '{"name", "expression", "ast"} objects; export the model again'
        )
    for item in derived:
        problem = check_ast(item["ast"], features, f"the model's {DERIVED_KEY} {item['name']!r}")
        if problem:
            return [], f"{problem}; export the model again"
    return derived, ""


def _is_feature(item: object) -> bool:
    return (
        isinstance(item, dict)
        and isinstance(item.get("name"), str)
        and isinstance(item.get("expression"), str)
        and isinstance(item.get("ast"), dict)
    )


def _derived_problems(model: list[DerivedFeature], run: list[DerivedFeature]) -> list[str]:
    def key(items: list[DerivedFeature]) -> list[tuple[Any, ...]]:
        return [(d["name"], d["expression"], d["ast"]) for d in items]

    if key(model) == key(run):
        return []
    shown_model, shown_run = _summary(model), _summary(run)
    differ = " (their parsed forms differ)" if shown_model == shown_run else ""
    return [
        f"the model's {DERIVED_KEY} is {shown_model} but the run's derivedFeatures is "
        f"{shown_run}{differ}"
    ]


def _summary(derived: list[DerivedFeature]) -> str:
    return "[" + ", ".join(f"{d['name']} = {d['expression']}" for d in derived) + "]"


def recorded_by_run(
    config: TrainingConfig, script_metrics: Mapping[str, Any] | None
) -> tuple[list[dict[str, Any]], dict[str, object]]:
    """The derived features and decision threshold a run recorded, as validation checks them.

    The derived features are compiled from the run's config, as the train stage gave them to
    the script. The threshold: a fixed policy's own, and the one metrics.json reports (None
    there when a choosing policy left it unreported).
    """
    derived = compile_features(config.derived_features, config.tree_features)
    policy, reported = config.decision_policy, dict(script_metrics or {})
    thresholds: dict[str, object] = {}
    if policy.get("type") == "fixed":
        thresholds["decisionPolicy"] = policy.get("threshold", DEFAULT_THRESHOLD)
    if "decision_threshold" in reported or policy.get("type") != "fixed":
        thresholds["metrics.json"] = reported.get("decision_threshold")
    return derived, thresholds
