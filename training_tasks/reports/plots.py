"""The report's figures: matplotlib on its Agg/SVG backends, one small SVG each, as data URIs.

matplotlib is imported here only, when a report is drawn (its import takes about 0.3 s). Figures
are built with `matplotlib.figure.Figure`, never pyplot: no global state, no display needed.
"""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

NEW, DEPLOYED, FAILED, NORMAL = "#1f6fb4", "#d9730d", "#c0392b", "#5d7f99"
SIZE_IN = (4.2, 3.4)
MAX_IMPORTANCE_BARS = 25
MAX_NAME_CHARS = 40
FIGURE_WIDTH_IN = 6.0
# Text stays text (small, searchable); the ids and date are fixed so a rebuild is identical.
SVG_RC = {"svg.fonttype": "none", "svg.hashsalt": "report", "font.size": 8}


def roc_figure(model: Mapping[str, Any], other: Mapping[str, Any] | None, other_label: str) -> str:
    """ROC curves, the operating point marked."""
    fig, ax = _axes("false positive rate", "true positive rate (recall)")
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linewidth=0.8, linestyle=":")
    curve = Curve("roc", "fpr", "tpr", "fpr", "recall", "AUC", "rocAuc")
    _curves(ax, curve, model, other, other_label)
    ax.legend(loc="lower right")
    return _svg(fig)


def pr_figure(model: Mapping[str, Any], other: Mapping[str, Any] | None, other_label: str) -> str:
    """Precision-recall curves, the operating point marked."""
    fig, ax = _axes("recall", "precision")
    curve = Curve("pr", "recall", "precision", "recall", "precision", "AP", "prAuc")
    _curves(ax, curve, model, other, other_label)
    ax.legend(loc="lower left")
    return _svg(fig)


@dataclass(frozen=True)
class Curve:
    """Where a curve's points, its operating point and its area are in the report data."""

    key: str  # "roc" or "pr"
    x: str
    y: str
    point_x: str  # the operating point's keys
    point_y: str
    area_name: str
    area_key: str


def _curves(
    ax: Any,
    curve: Curve,
    model: Mapping[str, Any],
    other: Mapping[str, Any] | None,
    other_label: str,
) -> None:
    """The deployed model's curve dashed under this version's, and this version's operating point."""
    for data, label, style in ((other, other_label, "--"), (model, "this version", "-")):
        if data is None:
            continue
        ax.plot(
            data[curve.key][curve.x],
            data[curve.key][curve.y],
            color=NEW if data is model else DEPLOYED,
            linestyle=style,
            label=f"{label} ({curve.area_name} {data[curve.area_key]:.3f})",
        )
    point = model["operatingPoint"]
    ax.plot(
        [point[curve.point_x]],
        [point[curve.point_y]],
        "o",
        color=NEW,
        markeredgecolor="black",
        label=f"threshold {point['threshold']:.3g}",
    )


def calibration_figure(
    model: Mapping[str, Any], other: Mapping[str, Any] | None, other_label: str
) -> str:
    """Observed failure rate against predicted probability, per probability bin."""
    fig, ax = _axes("mean predicted probability", "observed failure rate")
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linewidth=0.8, linestyle=":", label="perfect")
    if other is not None:
        cal = other["calibration"]
        ax.plot(
            cal["predicted"],
            cal["observed"],
            "s--",
            color=DEPLOYED,
            markersize=3,
            label=other_label,
        )
    cal = model["calibration"]
    ax.plot(cal["predicted"], cal["observed"], "o-", color=NEW, markersize=3, label="this version")
    ax.legend(loc="upper left")
    return _svg(fig)


def distribution_figure(model: Mapping[str, Any]) -> str:
    """The share of each class's rows per predicted probability, the threshold marked."""
    fig, ax = _axes("predicted failure probability", "share of the class's rows", square=False)
    hist = model["histogram"]
    for name, color in (("normal", NORMAL), ("failed", FAILED)):
        ax.stairs(
            hist[name], hist["edges"], color=color, fill=True, alpha=0.35, label=f"{name} rows"
        )
    threshold = model["operatingPoint"]["threshold"]
    ax.axvline(
        threshold, color="black", linewidth=0.9, linestyle="--", label=f"threshold {threshold:.3g}"
    )
    ax.legend(loc="upper center")
    return _svg(fig)


def importance_figure(gains: Sequence[tuple[str, float]]) -> str:
    """Total gain of each feature's splits, the largest first."""
    from matplotlib.figure import Figure

    shown = list(gains)[:MAX_IMPORTANCE_BARS]
    names = [name[:MAX_NAME_CHARS] for name, _ in shown]
    height_in = 0.9 + 0.2 * len(shown)
    fig = Figure(figsize=(FIGURE_WIDTH_IN, height_in))
    # Room for the longest name at about 0.055 in per character (a layout pass costs more).
    left_in = 0.2 + 0.055 * max((len(name) for name in names), default=1)
    fig.subplots_adjust(
        left=left_in / FIGURE_WIDTH_IN,
        right=0.96,
        bottom=0.55 / height_in,
        top=1 - 0.15 / height_in,
    )
    ax = fig.add_subplot()
    ax.barh(range(len(shown)), [gain for _, gain in reversed(shown)], color=NEW)
    # Set as tick labels, not categories: two names that are equal once cut stay two bars.
    ax.set_yticks(range(len(shown)), list(reversed(names)))
    ax.set_xlabel("total gain of the feature's splits")
    ax.grid(axis="x", color="#eeeeee")
    return _svg(fig)


def drawing_style() -> contextlib.AbstractContextManager[Any]:
    """The report's matplotlib settings, for the figures drawn inside it."""
    import matplotlib

    return matplotlib.rc_context(SVG_RC)  # type: ignore[arg-type]  # keys typed as literals


def _axes(xlabel: str, ylabel: str, *, square: bool = True) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    # Fixed margins: a constrained layout costs more than drawing the figure.
    fig = Figure(figsize=SIZE_IN)
    fig.subplots_adjust(left=0.15, right=0.97, bottom=0.13, top=0.97)
    ax = fig.add_subplot()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(color="#eeeeee")
    if square:
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
    return fig, ax


def _svg(fig: Figure) -> str:
    """The figure as an SVG data URI; an <img> never runs what an SVG might hold."""
    buffer = io.BytesIO()
    with drawing_style():
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
