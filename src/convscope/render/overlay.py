"""Blend a heat map over an image.

Example::

    heat = normalize(cam)                                  # H' x W' in [0, 1]
    rgb = overlay(image, heat, alpha=0.5, cmap="inferno")  # H x W x 3 uint8, image's size
    rgb = overlay(image, normalize(ig, mode="signed"), cmap="bwr", alpha_from_heat=True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convscope.errors import ConvscopeError
from convscope.render.colormaps import Colormap, apply_colormap, get_colormap
from convscope.render.image import Interpolation, resize, to_numpy, to_rgb_uint8


def overlay(
    image: Any,
    heat: Any,
    alpha: float = 0.5,
    cmap: str | Colormap = "inferno",
    alpha_from_heat: bool = False,
    interpolation: Interpolation = "bilinear",
    channel_axis: int | None = None,
) -> np.ndarray:
    """``round((1 - a) * image + a * cmap(heat))`` per pixel, as ``H x W x 3`` uint8.

    ``image`` is any image :mod:`convscope.render.image` accepts (uint8 or float in [0, 1],
    gray, HWC or CHW; ``channel_axis`` as there), on the 0-255 scale for the blend. ``heat``
    is a 2-D map already in the colour map's domain (``[0, 1]``, or ``[-1, 1]`` for a
    diverging map; see :func:`convscope.render.normalize`); it is resized to the image's
    size with ``interpolation`` before colouring. The weight is ``a = alpha`` everywhere, or
    ``a = alpha * |heat|`` with ``alpha_from_heat=True`` (cold regions show the image).
    ``alpha=0`` returns the image; ``alpha=1`` the coloured heat map.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConvscopeError(f"alpha={alpha} is outside [0, 1]", "pass an opacity in [0, 1]")
    rgb = to_rgb_uint8(image, channel_axis)
    h = to_numpy(heat)
    if h.ndim == 3 and h.shape[0] == 1:
        h = h[0]
    if h.ndim != 2:
        raise ConvscopeError(
            f"heat map must be 2-D, got shape {tuple(h.shape)}",
            "reduce its channels first: convscope.render.normalize(attr, reduce='sum')",
        )
    colormap = get_colormap(cmap)
    h = resize(h.astype(np.float64), rgb.shape[:2], interpolation)
    colour = apply_colormap(h, colormap).astype(np.float64)
    weight = alpha * np.clip(np.abs(h), 0.0, 1.0)[:, :, None] if alpha_from_heat else alpha
    blend = (1.0 - weight) * rgb + weight * colour
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)
