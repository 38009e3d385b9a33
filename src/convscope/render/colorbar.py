"""A labelled colour bar: what the colours of a heat map mean, to put under a sheet.

Layout (pixels; ``lh`` the font's line height + 4, ``w(s)`` a text's width)::

    L      = max(length, w(low) + w(high) + 2 * font_size)        # the bar grows to fit its labels
    width  = 2 * pad + max(L, w(title))
    height = 2 * pad + (lh if title else 0) + thickness + lh
    bar    at x0 = pad + (width - 2 * pad - L) // 2, y0 = pad + (lh if title else 0), L x thickness

Column ``j`` of the bar is the colour map at ``t_j = lo + (1 - lo) * j / (L - 1)`` (``lo = 0``,
or ``-1`` for a diverging map), so its ends are the map's first and last colours. ``low`` is
written under the left end, ``high`` under the right end (right-aligned), ``title`` centred above.

Example::

    bar = colorbar("inferno", "0", "99.5th percentile", title="|attribution|")
    save_png("out/sheet.png", stack([sheet, bar]))
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from convscope.errors import ConvscopeError
from convscope.render.colormaps import Colormap, apply_colormap, get_colormap
from convscope.render.grid import Font, _font, _ink, _line_height, _text_width


def colorbar(
    cmap: str | Colormap,
    low: str,
    high: str,
    *,
    title: str = "",
    length: int = 256,
    thickness: int = 12,
    pad: int = 4,
    font_size: int = 12,
    background: int | tuple[int, int, int] = 255,
) -> np.ndarray:
    """A horizontal colour bar of ``cmap`` with its end labels, as ``H x W x 3`` uint8 (module doc).

    Example: ``colorbar("viridis", "0", "max", title="activation")``.
    """
    if length < 2 or thickness < 1 or pad < 0:
        raise ConvscopeError(f"bad colour bar geometry: length={length}, thickness={thickness}, pad={pad}",
                             "pass length >= 2, thickness >= 1 and pad >= 0")
    colormap = get_colormap(cmap)
    font = _font(font_size)
    lh = _line_height(font) + 4
    th = lh if title else 0
    bar_length = max(length, _text_width(font, low) + _text_width(font, high) + 2 * font_size)
    width = 2 * pad + max(bar_length, _text_width(font, title))
    height = 2 * pad + th + thickness + lh
    x0, y0 = pad + (width - 2 * pad - bar_length) // 2, pad + th
    lo = -1.0 if colormap.diverging else 0.0
    ramp = lo + (1.0 - lo) * np.arange(bar_length) / (bar_length - 1)
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[...] = np.asarray(background, dtype=np.uint8)
    canvas[y0 : y0 + thickness, x0 : x0 + bar_length] = apply_colormap(np.tile(ramp, (thickness, 1)), colormap)
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    ink = _ink(background)
    band = y0 + thickness
    _text(draw, font, low, x0, band, lh, ink)
    _text(draw, font, high, x0 + bar_length - _text_width(font, high), band, lh, ink)
    if title:
        _text(draw, font, title, (width - _text_width(font, title)) // 2, pad, lh, ink)
    return np.asarray(picture).copy()


def _text(draw: ImageDraw.ImageDraw, font: Font, text: str, x: int, y: int, h: int, ink: tuple[int, int, int]) -> None:
    """``text`` with its left edge at ``x``, centred vertically in the band ``y .. y + h``."""
    if not text:
        return
    left, top, _right, bottom = font.getbbox(text)
    draw.text((x - left, y + (h - (bottom - top)) / 2 - top), text, fill=ink, font=font)
