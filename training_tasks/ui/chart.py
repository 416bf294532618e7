"""The metrics trend chart: an inline SVG drawn on the server, so the page needs no JavaScript.

Every version with validation metrics is a point per metric at its creation time; the deployed
version gets a labelled vertical line, a rejected one a red cross on the time axis. Each text
that came from the database is escaped here, since the markup goes into the page as it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime
from html import escape

from training_tasks.ui.views import TREND_METRICS

WIDTH, HEIGHT = 720, 280
LEFT, RIGHT, TOP, BOTTOM = 48, 130, 16, 36  # margins: axis labels left, legend right
COLOURS = {
    "accuracy": "#1f77b4",
    "precision": "#2ca02c",
    "recall": "#ff7f0e",
    "f1": "#9467bd",
    "rocAuc": "#8c564b",
}


def trend_svg(
    points: Sequence[tuple[str, datetime, str, dict[str, float]]], deployed: str | None
) -> str:
    """The chart of (version, created at, status, metrics), oldest first; '' with no metrics."""
    drawn = [p for p in points if any(name in p[3] for name in TREND_METRICS)]
    if not drawn:
        return ""
    x_of = _time_scale([p[1] for p in drawn])
    values = [v for p in drawn for name, v in p[3].items() if name in TREND_METRICS]
    # Zoomed to the values (to the next 0.05 below the lowest), so small changes show.
    low = max(0.0, min(0.95, math.floor((min(values) - 0.01) * 20) / 20))

    def y_of(value: float) -> float:
        share = (min(1.0, max(low, value)) - low) / (1.0 - low)
        return TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - share)

    parts = [
        f'<svg class="trend" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
        f'height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
        "<title>validation metrics of each version over time</title>",
        *_axes(drawn[0][1], drawn[-1][1], low, y_of),
    ]
    for version, created, status, _ in drawn:
        x = x_of(created)
        if version == deployed:
            parts.append(_deployed_marker(x, version))
        if status == "rejected":
            parts.append(_rejected_marker(x, version))
    for name in TREND_METRICS:
        series = [(x_of(p[1]), p[3][name], p[0]) for p in drawn if name in p[3]]
        parts += _series(name, series, y_of)
    parts += _legend()
    parts.append("</svg>")
    return "\n".join(parts)


def _time_scale(times: Sequence[datetime]) -> Callable[[datetime], float]:
    """x of a time; a single instant (or one version) sits in the middle."""
    first, last = times[0], times[-1]
    span_s = (last - first).total_seconds()
    plot_w = WIDTH - LEFT - RIGHT

    def x_of(at: datetime) -> float:
        if span_s <= 0:
            return LEFT + plot_w / 2
        return LEFT + plot_w * (at - first).total_seconds() / span_s

    return x_of


def _axes(first: datetime, last: datetime, low: float, y_of: Callable[[float], float]) -> list[str]:
    """Five grid lines from `low` to 1 and the first and last creation dates."""
    right, bottom = WIDTH - RIGHT, HEIGHT - BOTTOM
    out = []
    for step in range(5):
        tick = low + (1.0 - low) * step / 4
        y = y_of(tick)
        out.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{tick:.2f}</text>'
        )
    out.append(
        f'<text x="{LEFT}" y="{bottom + 18}" font-size="11">{first:%Y-%m-%d %H:%M}</text>'
        f'<text x="{right}" y="{bottom + 18}" text-anchor="end" font-size="11">'
        f"{last:%Y-%m-%d %H:%M} UTC</text>"
    )
    return out


def _deployed_marker(x: float, version: str) -> str:
    return (
        f'<g class="deployed-marker"><title>deployed: {escape(version)}</title>'
        f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM}" stroke="#2a7" '
        f'stroke-width="2" stroke-dasharray="4 3"/>'
        f'<text x="{x + 4:.1f}" y="{HEIGHT - BOTTOM - 6}" font-size="11" fill="#2a7">deployed</text></g>'
    )


def _rejected_marker(x: float, version: str) -> str:
    y = HEIGHT - BOTTOM
    return (
        f'<g class="rejected-marker"><title>rejected: {escape(version)}</title>'
        f'<path d="M{x - 4:.1f},{y - 4} l8,8 m0,-8 l-8,8" stroke="#c33" stroke-width="2"/></g>'
    )


def _series(
    name: str, series: list[tuple[float, float, str]], y_of: Callable[[float], float]
) -> list[str]:
    """A polyline through one metric's values, and a dot with a tooltip per version."""
    if not series:
        return []
    colour = COLOURS[name]
    path = " ".join(f"{x:.1f},{y_of(v):.1f}" for x, v, _ in series)
    out = [f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>']
    for x, value, version in series:
        out.append(
            f'<circle cx="{x:.1f}" cy="{y_of(value):.1f}" r="3.5" fill="{colour}">'
            f"<title>{escape(version)}: {name} {value:.4f}</title></circle>"
        )
    return out


def _legend() -> list[str]:
    x = WIDTH - RIGHT + 16
    return [
        f'<rect x="{x}" y="{TOP + 16 * i}" width="10" height="10" fill="{COLOURS[name]}"/>'
        f'<text x="{x + 16}" y="{TOP + 16 * i + 9}" font-size="11">{name}</text>'
        for i, name in enumerate(TREND_METRICS)
    ]
