"""Line charts as inline SVG (no plotting library): curves people compare at a glance.

``line_chart({"Grad-CAM": (xs, ys), ...}, x_label="fraction deleted", y_label="p(class)")``
returns the ``<svg>`` markup (an :class:`~convscope.render.html.Html` string for
:func:`~convscope.render.html.html_page`): axes from the data's range (y from 0 when all values
are >= 0), four ticks per axis, one colour per series from a fixed palette, a legend below.
NaN points break a line.

Example::

    page = html_page("curves", {"Deletion": [line_chart({"saliency": ([0, 1], [0.9, 0.1])})]})
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

from convscope.render.html import Html

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22")


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    return [low + (high - low) * i / count for i in range(count + 1)]


def _label(value: float) -> str:
    return f"{value:.3g}"


def line_chart(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str = "", x_label: str = "",
               y_label: str = "", width: int = 360, height: int = 220, x_ticks: Sequence[str] | None = None) -> Html:
    """An SVG chart of ``{name: (xs, ys)}`` (see the module); ``x_ticks`` labels the points of an
    axis of categories ``0..n-1`` instead of numbers."""
    points = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys) if math.isfinite(y)]
    left, right, top, bottom = 48, 12 if x_ticks is None else 36, 24 if title else 10, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    xs_all = [p[0] for p in points] or [0.0, 1.0]
    ys_all = [p[1] for p in points] or [0.0, 1.0]
    x0, x1 = min(xs_all), max(xs_all)
    y0, y1 = (0.0 if min(ys_all) >= 0 else min(ys_all)), max(ys_all)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 18 * len(series)}" '
             f'viewBox="0 0 {width} {height + 18 * len(series)}" font-family="sans-serif" font-size="10">']
    if title:
        parts.append(f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="12">{html.escape(title)}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>')
    for y in _ticks(y0, y1):
        parts.append(f'<line x1="{left - 3}" x2="{left}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#999"/>'
                     f'<text x="{left - 5}" y="{py(y) + 3:.1f}" text-anchor="end">{_label(y)}</text>')
    if x_ticks is not None:
        xt = [(float(i), t) for i, t in enumerate(x_ticks)]
    else:
        xt = [(x, _label(x)) for x in _ticks(x0, x1)]
    for x, text in xt:
        parts.append(f'<text x="{px(x):.1f}" y="{top + plot_h + 12}" text-anchor="middle">{html.escape(text)}</text>')
    if x_label:
        parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 26}" text-anchor="middle">'
                     f'{html.escape(x_label)}</text>')
    if y_label:
        parts.append(f'<text x="10" y="{top + plot_h / 2}" text-anchor="middle" '
                     f'transform="rotate(-90 10 {top + plot_h / 2})">{html.escape(y_label)}</text>')
    for i, (name, (xs, ys)) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        runs: list[list[str]] = [[]]
        for x, y in zip(xs, ys):
            if math.isfinite(y):
                runs[-1].append(f"{px(x):.1f},{py(y):.1f}")
            elif runs[-1]:
                runs.append([])
        for run in runs:
            if len(run) > 1:
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{" ".join(run)}"/>')
            elif run:
                x, y = run[0].split(",")
                parts.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{colour}"/>')
        legend_y = height + 18 * i + 4
        parts.append(f'<line x1="{left}" x2="{left + 18}" y1="{legend_y}" y2="{legend_y}" stroke="{colour}" '
                     f'stroke-width="3"/><text x="{left + 24}" y="{legend_y + 4}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return Html("".join(parts))
