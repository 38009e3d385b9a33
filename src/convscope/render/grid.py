"""Lay images out in a labelled grid.

Layout (all sizes in pixels; ``th x tw`` the common tile size, ``lh`` the label band height,
``rw`` the row-label column width, 0 without row labels)::

    height = nrows * (th + lh) + (nrows + 1) * pad
    width  = (rw + pad if rw else 0) + ncols * tw + (ncols + 1) * pad
    tile (r, c) at y = pad + r * (th + lh + pad) + (lh if labels go above else 0),
                   x = pad + (rw + pad if rw else 0) + c * (tw + pad)

Example::

    sheet = grid([image, overlay(image, heat)], labels=["input", "Grad-CAM"], ncols=2)
    save_png("out/sheet.png", sheet)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from convscope.errors import ConvscopeError
from convscope.render.image import Interpolation, resize, to_numpy, to_rgb_uint8

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def grid(
    images: Sequence[Any] | np.ndarray,
    labels: Sequence[str] | None = None,
    ncols: int | None = None,
    pad: int = 2,
    label_height: int | None = None,
    row_labels: Sequence[str] | None = None,
    tile_size: tuple[int, int] | None = None,
    label_position: Literal["below", "above"] = "below",
    background: int | tuple[int, int, int] = 255,
    font_size: int = 12,
    interpolation: Interpolation = "bilinear",
    channel_axis: int | None = None,
) -> np.ndarray:
    """A grid of ``images`` (a sequence, or a batch ``N x ...``) as an ``H x W x 3`` uint8 sheet.

    Tiles are filled row by row, ``ncols`` per row (default ``ceil(sqrt(n))``), and resized
    with ``interpolation`` to ``tile_size = (h, w)`` (default: the largest tile by area).
    ``labels`` (one per tile, drawn centred ``label_position`` the tile, cut with "..." to
    fit) and ``row_labels`` (one per row, drawn in a left column) use PIL's default font;
    ``label_height`` defaults to the font's line height + 4 when there are labels, else 0.
    ``pad`` pixels of ``background`` separate tiles and frame the sheet.
    """
    tiles = [to_rgb_uint8(im, channel_axis) for im in _as_list(images)]
    if not tiles:
        raise ConvscopeError("grid got no images", "pass at least one image")
    if pad < 0 or (label_height is not None and label_height < 0) or (ncols or 1) < 1:
        raise ConvscopeError(
            f"bad grid geometry: pad={pad}, label_height={label_height}, ncols={ncols}",
            "pass pad >= 0, label_height >= 0 and ncols >= 1",
        )
    n = len(tiles)
    ncols = min(n, ncols or math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncols)
    _check_count(labels, n, "labels", "one per image")
    _check_count(row_labels, nrows, "row_labels", f"one per row ({n} images, {ncols} per row)")
    th, tw = tile_size or max((t.shape[:2] for t in tiles), key=lambda s: s[0] * s[1])
    font = _font(font_size)
    lh = label_height if label_height is not None else (_line_height(font) + 4 if labels else 0)
    rw = max((_text_width(font, s) for s in row_labels), default=0) + 4 if row_labels else 0
    left = pad + (rw + pad if rw else 0)
    height = nrows * (th + lh) + (nrows + 1) * pad
    width = left + ncols * (tw + pad)
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[...] = np.asarray(background, dtype=np.uint8)
    above = label_position == "above"
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        y = pad + r * (th + lh + pad) + (lh if above else 0)
        x = left + c * (tw + pad)
        canvas[y : y + th, x : x + tw] = resize(tile, (th, tw), interpolation)
    if not labels and not row_labels:
        return canvas
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    ink = _ink(background)
    for i, text in enumerate(labels or []):
        r, c = divmod(i, ncols)
        band = pad + r * (th + lh + pad) + (0 if above else th)
        _draw_centred(draw, font, text, left + c * (tw + pad), band, tw, lh, ink)
    for r, text in enumerate(row_labels or []):
        top = pad + r * (th + lh + pad) + (lh if above else 0)
        _draw_centred(draw, font, text, pad, top, rw, th, ink)
    return np.asarray(picture).copy()


def _as_list(images: Sequence[Any] | np.ndarray) -> list[Any]:
    """A batch array or tensor (4-D, or 3-D of gray images) becomes a list of images."""
    if isinstance(images, (list, tuple)):
        return list(images)
    return list(to_numpy(images))


def _check_count(texts: Sequence[str] | None, expected: int, name: str, rule: str) -> None:
    if texts is not None and len(texts) != expected:
        raise ConvscopeError(
            f"{name} has {len(texts)} entries but the grid needs {expected}", f"pass {rule}"
        )


def _font(size: int) -> Font:
    try:  # Pillow >= 10.1 with FreeType: a scalable default font
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # older Pillow or no FreeType: the bitmap font
        return ImageFont.load_default()


def _line_height(font: Font) -> int:
    top, bottom = font.getbbox("Ag")[1::2]
    return int(math.ceil(bottom - top))


def _text_width(font: Font, text: str) -> int:
    return int(math.ceil(font.getlength(text)))


def _fit(font: Font, text: str, width: int) -> str:
    """``text``, or its longest prefix + "..." that fits in ``width`` pixels."""
    if _text_width(font, text) <= width:
        return text
    for end in range(len(text) - 1, 0, -1):
        if _text_width(font, text[:end] + "...") <= width:
            return text[:end] + "..."
    return ""


def _draw_centred(
    draw: ImageDraw.ImageDraw, font: Font, text: str, x: int, y: int, w: int, h: int,
    ink: tuple[int, int, int],
) -> None:
    """Draw ``text`` centred in the box ``(x, y, w, h)`` (nothing when the box is empty)."""
    text = _fit(font, str(text), w)
    if not text or h <= 0:
        return
    left, top, right, bottom = font.getbbox(text)
    tx = x + (w - (right - left)) / 2 - left
    ty = y + (h - (bottom - top)) / 2 - top
    draw.text((tx, ty), text, fill=ink, font=font)


def _ink(background: int | tuple[int, int, int]) -> tuple[int, int, int]:
    """Dark grey text on light backgrounds, near-white on dark ones."""
    luma = float(np.mean(np.asarray(background, dtype=np.float64)))
    return (40, 40, 40) if luma >= 128 else (235, 235, 235)


def stack(images: Sequence[Any], gap: int = 4, background: int | tuple[int, int, int] = 255) -> np.ndarray:
    """Images one under another, each centred horizontally (at ``(W - w) // 2``), ``gap`` rows of
    ``background`` between them; ``W`` is the widest image. Example: ``stack([sheet, colorbar(...)])``.
    """
    tiles = [to_rgb_uint8(im) for im in images]
    if not tiles or gap < 0:
        raise ConvscopeError(f"stack got {len(tiles)} images and gap={gap}", "pass at least one image and gap >= 0")
    width = max(t.shape[1] for t in tiles)
    canvas = np.empty((sum(t.shape[0] for t in tiles) + gap * (len(tiles) - 1), width, 3), dtype=np.uint8)
    canvas[...] = np.asarray(background, dtype=np.uint8)
    y = 0
    for t in tiles:
        x = (width - t.shape[1]) // 2
        canvas[y : y + t.shape[0], x : x + t.shape[1]] = t
        y += t.shape[0] + gap
    return canvas
