"""The model's scores on the holdout at its decision threshold: counts, metrics, 95% Wilson
intervals, ROC AUC and average precision from one sort, and what the intervals say about a gate.

Vectorized numpy only: the holdout can hold hundreds of thousands of rows, and this runs on
every training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# The two-sided 95% normal quantile.
Z_95 = 1.959963984540054
CONFIDENCE = 0.95
GATED_METRICS = ("accuracy", "precision", "recall")
METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "rocAuc", "prAuc", "positiveRate")
# What each rate is a share of: the count an interval is as wide as.
TRIALS_OF = {
    "accuracy": "rows",
    "precision": "predictedPositives",
    "recall": "positives",
    "f1": "truePositives+falsePositives+falseNegatives",
}


@dataclass(frozen=True)
class Counts:
    """The confusion counts of the model's decisions on the holdout."""

    rows: int
    positives: int
    predicted_positives: int
    true_positives: int

    @property
    def false_positives(self) -> int:
        """Rows the model alarms on that did not fail."""
        return self.predicted_positives - self.true_positives

    @property
    def false_negatives(self) -> int:
        """Failures the model does not alarm on."""
        return self.positives - self.true_positives

    @property
    def true_negatives(self) -> int:
        """Rows that neither failed nor raised an alarm."""
        return self.rows - self.positives - self.false_positives

    def as_dict(self) -> dict[str, int]:
        """The counts as camelCase JSON."""
        return {
            "rows": self.rows,
            "positives": self.positives,
            "predictedPositives": self.predicted_positives,
            "truePositives": self.true_positives,
            "falsePositives": self.false_positives,
            "falseNegatives": self.false_negatives,
            "trueNegatives": self.true_negatives,
        }

    def trials(self) -> dict[str, tuple[int, int]]:
        """(successes, trials) behind accuracy, precision, recall and F1's Jaccard index."""
        tp, union = self.true_positives, self.positives + self.false_positives
        return {
            "accuracy": (tp + self.true_negatives, self.rows),
            "precision": (tp, self.predicted_positives),
            "recall": (tp, self.positives),
            "f1": (tp, union),
        }


def decisions(scores: np.ndarray, threshold: float) -> np.ndarray:
    """The alarm of each row as the model file decides it: float32 probability >= float32 threshold."""
    return np.asarray(scores, dtype=np.float32) >= np.float32(threshold)


def count(labels: np.ndarray, scores: np.ndarray, threshold: float) -> Counts:
    """The confusion counts at `threshold` of 0/1 `labels` and the model's probabilities."""
    failed, alarmed = labels.astype(bool, copy=False), decisions(scores, threshold)
    return Counts(
        rows=len(labels),
        positives=int(np.count_nonzero(failed)),
        predicted_positives=int(np.count_nonzero(alarmed)),
        true_positives=int(np.count_nonzero(failed & alarmed)),
    )


def wilson(successes: int, trials: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of a binomial proportion; None with no trials."""
    if trials <= 0:
        return None
    z2 = z * z
    denominator = trials + z2
    center = (successes + z2 / 2) / denominator
    half = z * math.sqrt(successes * (trials - successes) / trials + z2 / 4) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def ranking_metrics(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """ROC AUC and average precision (PR AUC) from one sort, equal to scikit-learn's.

    Both need both classes; ties in the scores are one threshold, as in scikit-learn.
    """
    order = np.argsort(scores, kind="stable")[::-1]
    ranked, failed = scores[order], labels[order]
    # The last row of each run of equal scores: one operating point per distinct threshold.
    ends = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    true_pos = np.cumsum(failed, dtype=np.int64)[ends]
    false_pos = ends + 1 - true_pos
    positives, negatives = int(true_pos[-1]), int(false_pos[-1])
    tpr = np.r_[0.0, true_pos / positives]
    fpr = np.r_[0.0, false_pos / negatives]
    roc_auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    precision = true_pos / (true_pos + false_pos)
    average_precision = float(np.sum(np.diff(tpr) * precision))
    return roc_auc, average_precision


@dataclass(frozen=True)
class Judged:
    """The model's scores at its threshold, with the evidence behind each."""

    metrics: dict[str, float | None]
    counts: Counts | None
    intervals: dict[str, dict[str, Any]]


def judge_scores(labels: np.ndarray, scores: np.ndarray, threshold: float) -> Judged:
    """Metrics at `threshold` with their counts and 95% intervals; labels hold both classes."""
    counts = count(labels, scores, threshold)
    roc_auc, pr_auc = ranking_metrics(labels, scores)
    values = {name: _rate(*pair) for name, pair in counts.trials().items()}
    # F1 is 2J / (1 + J) of the Jaccard index J = TP / (TP + FP + FN).
    values["f1"] = 2 * values["f1"] / (1 + values["f1"])
    intervals = {name: _interval(name, values[name], *counts.trials()[name]) for name in values}
    metrics: dict[str, float | None] = {
        **values,
        "rocAuc": roc_auc,
        "prAuc": pr_auc,
        "positiveRate": counts.positives / counts.rows,
        "decisionThreshold": threshold,
    }
    return Judged(metrics, counts, intervals)


def no_scores(threshold: float | None) -> Judged:
    """Every metric as None, for a model whose scores could not be measured."""
    return Judged({**dict.fromkeys(METRIC_NAMES), "decisionThreshold": threshold}, None, {})


def _rate(successes: int, trials: int) -> float:
    return successes / trials if trials else 0.0  # no alarms: precision 0, as scikit-learn says


def _interval(name: str, value: float, successes: int, trials: int) -> dict[str, Any]:
    bounds = wilson(successes, trials)
    if bounds is not None and name == "f1":
        bounds = (2 * bounds[0] / (1 + bounds[0]), 2 * bounds[1] / (1 + bounds[1]))
    low, high = bounds if bounds is not None else (None, None)
    return {
        "value": value,
        "low": low,
        "high": high,
        "confidence": CONFIDENCE,
        "method": "wilson",
        "successes": successes,
        "trials": trials,
        "trialsOf": TRIALS_OF[name],
    }


def straddle_note(
    name: str, interval: Mapping[str, Any], gate: float, counts: Counts
) -> str | None:
    """The sentence for a gate inside the metric's 95% interval, or None when it is outside.

    Such a gate is passed or failed by chance as much as by the model: the verdict still
    follows the point value, and this says how little it shows.
    """
    low, high = interval["low"], interval["high"]
    if low is None or high is None or not low <= gate <= high:
        return None
    evidence = f"{counts.rows} rows" if name == "accuracy" else f"{counts.positives} positives"
    return (
        f"{name} {interval['value']:.3f}, 95% CI {low:.2f}\u2013{high:.2f} from {evidence}: "
        f"the interval straddles the {_gate(gate)} gate ({interval['successes']} of "
        f"{interval['trials']} {_plain(TRIALS_OF[name])})"
    )


def _gate(gate: float) -> str:
    return f"{gate:.2f}" if round(gate, 2) == gate else f"{gate:g}"


def _plain(trials_of: str) -> str:
    return {"predictedPositives": "predicted positives"}.get(trials_of, trials_of)
