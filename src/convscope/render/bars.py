"""Horizontal bar charts as pictures (numpy ``uint8`` RGB), drawn with Pillow alone.

One row per label: the label on the left, a bar from 0 to the value (blue, red where negative), and
a dashed vertical line at ``reference`` (1.0 for "the whole score"). The axis spans
``[min(0, values, reference), max(0, values, reference)]``; a NaN value draws no bar and shows
``missing`` (what it means, e.g. "folded") instead. The value is printed at the right edge.

Layout (pixels; ``lh`` the font's line height)::

    width  = label_w + pad + plot_w + pad + value_w
    height = pad + (lh + pad if title) + rows * (lh + 6) + pad

Example::

    picture = bar_chart(["layer1", "fc", "input"], [1.0, 0.98, 0.97], reference=1.0,
                        title="relevance / score")
    save_png("conservation.png", picture)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from convscope.errors import ConvscopeError
from convscope.render.grid import _fit, _font, _ink, _line_height, _text_width

__all__ = ["bar_chart"]

_POSITIVE, _NEGATIVE, _REFERENCE = (31, 119, 180), (214, 39, 40), (90, 90, 90)


def bar_chart(labels: Sequence[str], values: Sequence[float], *, reference: float | None = None, title: str = "",
              plot_width: int = 220, label_width: int = 140, missing: str = "n/a", font_size: int = 12,
              background: int | tuple[int, int, int] = 255) -> np.ndarray:
    """The chart of ``values`` (see the module docstring) as an ``[H, W, 3]`` uint8 array."""
    if len(labels) != len(values) or not labels:
        raise ConvscopeError(f"bar_chart got {len(labels)} labels and {len(values)} values",
                             "Pass one label per value, at least one.")
    font = _font(font_size)
    lh, pad = _line_height(font), 6
    shown = [f"{v:.4g}" if math.isfinite(v) else missing for v in values]
    value_w = max(_text_width(font, s) for s in shown) + pad
    width = label_width + pad + plot_width + pad + value_w
    top = pad + (lh + pad if title else 0)
    row_h = lh + 6
    height = top + len(values) * row_h + pad
    bg = (background,) * 3 if isinstance(background, int) else tuple(background)
    picture = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(picture)
    ink = _ink(background)
    if title:
        draw.text((pad, pad), _fit(font, title, width - 2 * pad), fill=ink, font=font)
    finite = [v for v in values if math.isfinite(v)] + [0.0] + ([reference] if reference is not None else [])
    low, high = min(finite), max(finite)
    span = (high - low) or 1.0
    x0 = label_width + pad

    def px(v: float) -> float:
        return x0 + (v - low) / span * plot_width

    for i, (label, value, text) in enumerate(zip(labels, values, shown)):
        y = top + i * row_h
        draw.text((pad, y + 1), _fit(font, label, label_width - pad), fill=ink, font=font)
        if math.isfinite(value):
            a, b = sorted((px(0.0), px(value)))
            draw.rectangle([a, y + 2, max(b, a + 1), y + row_h - 3], fill=_POSITIVE if value >= 0 else _NEGATIVE)
        draw.text((x0 + plot_width + pad, y + 1), text, fill=ink, font=font)
    draw.line([px(0.0), top, px(0.0), height - pad], fill=ink, width=1)
    if reference is not None:
        xr = px(reference)
        for y in range(top, height - pad, 6):
            draw.line([xr, y, xr, min(y + 3, height - pad)], fill=_REFERENCE, width=1)
    return np.asarray(picture, dtype=np.uint8)
