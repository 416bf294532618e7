"""Curve data of a model's holdout scores: ROC, precision-recall, calibration, score
distributions and the confusion counts at the decision threshold, downsampled for plotting.

One sort of the scores, vectorized numpy: it runs on every validation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# A curve drawn with more points than this looks the same; the file only grows.
MAX_CURVE_POINTS = 300
CALIBRATION_BINS = 10
HISTOGRAM_BINS = 40
SIGNIFICANT_DIGITS = 5


def score_evidence(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Everything the report draws of one model's scores; labels hold both classes."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="stable")[::-1]
    ranked, failed = scores[order], labels[order]
    # The last row of each run of equal scores: one operating point per distinct threshold.
    ends = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    true_pos = np.cumsum(failed, dtype=np.int64)[ends]
    false_pos = ends + 1 - true_pos
    positives, negatives = int(true_pos[-1]), int(false_pos[-1])
    tpr = np.r_[0.0, true_pos / positives]
    fpr = np.r_[0.0, false_pos / negatives]
    precision = np.r_[1.0, true_pos / (true_pos + false_pos)]
    roc_keep, pr_keep = _thin(fpr, tpr), _thin(tpr, precision)
    return {
        "rows": len(labels),
        "positives": positives,
        "rocAuc": float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)),
        "prAuc": float(np.sum(np.diff(tpr) * precision[1:])),
        "roc": {"fpr": _round(fpr[roc_keep]), "tpr": _round(tpr[roc_keep])},
        "pr": {"recall": _round(tpr[pr_keep]), "precision": _round(precision[pr_keep])},
        "operatingPoint": operating_point(labels, scores, threshold),
        "calibration": calibration(labels, scores),
        "histogram": histogram(labels, scores),
    }


def operating_point(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """The confusion counts and rates at `threshold`, decided as the model file decides."""
    alarmed = np.asarray(scores, dtype=np.float32) >= np.float32(threshold)
    tp = int(np.count_nonzero(labels & alarmed))
    fp = int(np.count_nonzero(alarmed)) - tp
    positives = int(np.count_nonzero(labels))
    fn, tn = positives - tp, len(labels) - positives - fp
    return {
        "threshold": float(threshold),
        "truePositives": tp,
        "falsePositives": fp,
        "falseNegatives": fn,
        "trueNegatives": tn,
        "fpr": fp / (fp + tn) if fp + tn else 0.0,
        "recall": tp / positives if positives else 0.0,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
    }


def calibration(labels: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    """Mean predicted probability against the observed failure rate in equal-width bins."""
    bins = np.clip((scores * CALIBRATION_BINS).astype(np.int64), 0, CALIBRATION_BINS - 1)
    rows = np.bincount(bins, minlength=CALIBRATION_BINS)
    predicted = np.bincount(bins, weights=scores, minlength=CALIBRATION_BINS)
    observed = np.bincount(bins, weights=labels.astype(np.float64), minlength=CALIBRATION_BINS)
    used = rows > 0
    return {
        "predicted": _round(predicted[used] / rows[used]),
        "observed": _round(observed[used] / rows[used]),
        "rows": [int(n) for n in rows[used]],
    }


def histogram(labels: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    """The share of each class's rows per score bin over [0, 1]."""
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    shares = {}
    for name, rows in (("failed", scores[labels]), ("normal", scores[~labels])):
        counts, _ = np.histogram(np.clip(rows, 0.0, 1.0), bins=edges)
        shares[name] = _round(counts / max(1, len(rows)))
    return {"edges": _round(edges), **shares}


def _thin(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of at most MAX_CURVE_POINTS points spread evenly along the curve's length."""
    if len(x) <= MAX_CURVE_POINTS:
        return np.arange(len(x))
    along = np.r_[0.0, np.cumsum(np.hypot(np.diff(x), np.diff(y)))]
    targets = np.linspace(0.0, along[-1], MAX_CURVE_POINTS)
    picked = np.searchsorted(along, targets).clip(0, len(x) - 1)
    return np.unique(np.r_[0, picked, len(x) - 1])


def _round(values: np.ndarray) -> list[float]:
    """Plain floats with SIGNIFICANT_DIGITS digits: the JSON stays small and the plot the same."""
    return [float(f"{value:.{SIGNIFICANT_DIGITS}g}") for value in np.asarray(values).tolist()]
