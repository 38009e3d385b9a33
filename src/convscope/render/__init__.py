"""Rendering: numpy (or torch) arrays in; images, PNG files and HTML pages out.

Computation returns tensors; this package turns them into pictures. It needs only numpy and
Pillow: matplotlib is never imported at import time (only to look up a colour map name we do
not define), and torch is never imported (tensors are converted at the edge).

Example::

    from convscope import render
    heat = render.heat(cam, "positive")           # as the method's display kind says
    sheet = render.grid([image, render.overlay(image, heat)], labels=["input", "Grad-CAM"])
    sheet = render.stack([sheet, render.colorbar("inferno", "0", "99.5th percentile")])
    render.save_png("out/cam.png", sheet)
    render.save_html("out/cam.html", render.html_page("Grad-CAM", {"shapes-vgg": [sheet]}))
"""

from __future__ import annotations

from convscope.render.colorbar import colorbar
from convscope.render.colormaps import BUILTIN_COLORMAPS, Colormap, apply_colormap, get_colormap
from convscope.fileio import write_atomic
from convscope.render.display import DISPLAY_KINDS, DISPLAYS, Display, get_display, heat
from convscope.render.grid import grid, stack
from convscope.render.html import Figure, Html, figure, html_page, img_tag, link, save_html
from convscope.render.image import channels_last, resize, to_image_uint8, to_numpy, to_rgb_uint8
from convscope.render.normalize import MODES, REDUCTIONS, normalize, reduce_channels
from convscope.render.overlay import overlay
from convscope.render.png import save_png, to_png_bytes
from convscope.render.shapes import draw_box, draw_outline

__all__ = [
    "BUILTIN_COLORMAPS",
    "DISPLAYS",
    "DISPLAY_KINDS",
    "MODES",
    "REDUCTIONS",
    "Colormap",
    "Display",
    "Figure",
    "Html",
    "apply_colormap",
    "channels_last",
    "colorbar",
    "draw_box",
    "draw_outline",
    "figure",
    "get_colormap",
    "get_display",
    "grid",
    "heat",
    "html_page",
    "img_tag",
    "link",
    "normalize",
    "overlay",
    "reduce_channels",
    "resize",
    "save_html",
    "save_png",
    "stack",
    "to_image_uint8",
    "to_numpy",
    "to_png_bytes",
    "to_rgb_uint8",
    "write_atomic",
]
