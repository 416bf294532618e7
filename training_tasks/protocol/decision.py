"""The decision a model file carries: its alarm output and the threshold it was chosen at.

A model exported with a decision policy has a second output `failure_alarm` (bool [N], the
decision `failure_probability >= threshold` made inside the graph) and the threshold in its
metadata under `decision_threshold`, so a client in any language makes the same decision from the
file alone. A model without them (exported before decisions were part of the model) is read as
threshold 0.5, the decision it was always judged at. Standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

ALARM_NAME = "failure_alarm"
THRESHOLD_KEY = "decision_threshold"
POLICY_KEY = "decision_policy"  # JSON: the policy the threshold was chosen by
DERIVED_KEY = "derived_features"  # JSON: [{"name", "expression", "ast"}], in input order after raw
DEFAULT_THRESHOLD = 0.5


class BadThreshold(ValueError):
    """A model's `decision_threshold` metadata is not a probability."""


def threshold_of(metadata: Mapping[str, str]) -> float:
    """The model's decision threshold from its ONNX metadata; 0.5 for a model without one."""
    raw = metadata.get(THRESHOLD_KEY)
    if raw is None:
        return DEFAULT_THRESHOLD
    try:
        value = float(raw)
    except ValueError:
        raise BadThreshold(
            f"{THRESHOLD_KEY} {raw[:40]!r} is not a number; export the model again"
        ) from None
    if not is_probability(value):
        raise BadThreshold(
            f"{THRESHOLD_KEY} {value!r} is not a probability between 0 and 1; export the model "
            "again"
        )
    return value


def is_probability(value: object) -> bool:
    """A finite number from 0 to 1 (not a bool): what a decision threshold must be."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and 0.0 <= value <= 1.0
