"""Boxes and region outlines drawn over an image (a detection's box, a segmentation region).

Both return a new ``H x W x 3`` uint8 image; the input is never changed. Coordinates are pixels of
the image drawn on: a box ``(x0, y0, x1, y1)`` covers the pixels whose centres lie in it (its
outline is the ring of such pixels ``width`` deep, clipped to the image); an outline is the set of
mask pixels with a 4-neighbour outside the mask (or on the image's border).

Example::

    shown = draw_box(overlay(image, heat), (10, 20, 60, 90), colour=(255, 255, 255))
    shown = draw_outline(shown, mask, colour=(0, 255, 255))
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convscope.render.image import to_rgb_uint8

Colour = tuple[int, int, int]


def box_mask(shape: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    """``[H, W]`` bool: the pixels of an ``H x W`` image whose centres lie in ``box``."""
    height, width = shape
    x0, y0, x1, y1 = box
    ys, xs = np.arange(height) + 0.5, np.arange(width) + 0.5
    return ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The pixels of ``mask`` within ``width`` pixels (4-neighbour steps) of its edge."""
    inner = mask.astype(bool)
    for _ in range(max(1, width)):
        padded = np.pad(inner, 1, constant_values=False)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask.astype(bool) & ~inner


def draw_outline(image: Any, mask: np.ndarray, colour: Colour = (0, 255, 255), width: int = 2) -> np.ndarray:
    """``image`` with the edge of ``mask`` (``[H, W]``, the image's size) painted ``colour``."""
    rgb = to_rgb_uint8(image).copy()
    rgb[outline(np.asarray(mask), width)] = colour
    return rgb


def draw_box(image: Any, box: tuple[float, float, float, float], colour: Colour = (255, 255, 255),
             width: int = 2) -> np.ndarray:
    """``image`` with the outline of ``box`` painted ``colour``, ``width`` pixels deep."""
    rgb = to_rgb_uint8(image)
    return draw_outline(rgb, box_mask(rgb.shape[:2], box), colour, width)


__all__ = ["box_mask", "draw_box", "draw_outline", "outline"]
