"""Boxes and masks a person gives on a picture, moved to where the model sees them and back.

A model sees a crop of each picture, resized (:meth:`~convscope.images.Preprocess.crop_box` says
where it lies). A box ``x0, y0, x1, y1`` given in pixels of the picture file becomes a box in
pixels of the model's input (the crop, ``size`` x ``size``)::

    x_model = (x - crop.left) * size / (crop.right - crop.left)      (y alike, with top and bottom)

clipped to the crop; a box outside the picture, or outside the part of it the model sees, is a
clear error. A mask is a PNG of the picture's size (nonzero pixels inside the region), cut and
resized by the model's own preprocessing. :func:`to_picture` maps a model box back (a detection);
:func:`on_view` and :func:`mask_on_view` place boxes and masks on what a picture is drawn on (the
whole picture, possibly downscaled, or the crop).

Example::

    box = to_crop((40, 30, 200, 180), pre.crop_box(640, 480), 224)
    mask = mask_in_crop("person.png", pre, (640, 480))            # [224, 224] bool
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convscope.errors import ConvscopeError
from convscope.images import CropBox, Preprocess

Box = tuple[float, float, float, float]


def _scales(crop: CropBox, size: int) -> tuple[float, float]:
    return size / (crop.right - crop.left), size / (crop.bottom - crop.top)


def to_crop(box: Box, crop: CropBox, size: int, name: str = "the picture") -> Box:
    """``box`` (pixels of the picture) in pixels of the model's ``size`` x ``size`` input."""
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= crop.width and 0 <= y0 < y1 <= crop.height):
        raise ConvscopeError(f"the box {list(box)} lies outside {name} ({crop.width}x{crop.height} pixels) or is empty",
                             f"Give x0,y0,x1,y1 with 0 <= x0 < x1 <= {crop.width} and 0 <= y0 < y1 <= {crop.height}.")
    sx, sy = _scales(crop, size)
    moved = [min(max(v, 0.0), float(size)) for v in ((x0 - crop.left) * sx, (y0 - crop.top) * sy,
                                                      (x1 - crop.left) * sx, (y1 - crop.top) * sy)]
    if moved[2] - moved[0] < 1 or moved[3] - moved[1] < 1:
        shown = [round(v, 1) for v in (crop.left, crop.top, crop.right, crop.bottom)]
        raise ConvscopeError(f"the box {list(box)} lies outside the part of {name} the model sees (x0,y0,x1,y1 = "
                             f"{shown})", "Move the box into that part, or make the model see the whole picture "
                             "(a spec option ?size=N&crop=N with N the picture's shorter side).")
    return moved[0], moved[1], moved[2], moved[3]


def to_picture(box: Box, crop: CropBox, size: int) -> Box:
    """A box in pixels of the model's input back in pixels of the picture."""
    sx, sy = _scales(crop, size)
    return (crop.left + box[0] / sx, crop.top + box[1] / sy, crop.left + box[2] / sx, crop.top + box[3] / sy)


def mask_in_crop(path: str | Path, preprocess: Preprocess, picture_size: tuple[int, int]) -> np.ndarray:
    """The mask PNG at ``path`` (the picture's size; nonzero: inside) as the model sees it: ``[crop, crop]`` bool."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            image = im.convert("L")
    except (OSError, ValueError) as exc:
        raise ConvscopeError(f"cannot read the region mask {str(path)!r} ({exc})",
                             "Give a PNG mask of the picture's size, or a box x0,y0,x1,y1.") from None
    if image.size != tuple(picture_size):
        raise ConvscopeError(f"the region mask {Path(path).name!r} is {image.size[0]}x{image.size[1]} pixels but the "
                             f"picture is {picture_size[0]}x{picture_size[1]}",
                             "Draw the mask at the picture's size (nonzero pixels: the region).")
    return preprocess.pixels(image)[..., 0] >= 128


def on_view(box: Box, crop: CropBox, view: tuple[int, int], on_crop: bool, size: int) -> Box:
    """A box in pixels of the picture, placed on what it is drawn on: the ``view`` (H, W) of the
    whole picture, or (``on_crop``) the model's crop."""
    if on_crop:
        return to_crop(box, crop, size)
    sx, sy = view[1] / crop.width, view[0] / crop.height
    return box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy


def mask_on_view(mask: np.ndarray, crop: CropBox, view: tuple[int, int], on_crop: bool) -> np.ndarray:
    """A mask of the model's crop ``[size, size]`` placed on the ``view`` (H, W): nearest pixels,
    False outside the crop."""
    if on_crop:
        return mask
    left, top, right, bottom = crop.scaled(view[1], view[0]).pixels()
    placed = np.zeros(view, dtype=bool)
    if right > left and bottom > top:
        rows = (np.arange(bottom - top) + 0.5) * mask.shape[0] / (bottom - top)
        cols = (np.arange(right - left) + 0.5) * mask.shape[1] / (right - left)
        placed[top:bottom, left:right] = mask[rows.astype(int).clip(0, mask.shape[0] - 1)][
            :, cols.astype(int).clip(0, mask.shape[1] - 1)]
    return placed


__all__ = ["Box", "mask_in_crop", "mask_on_view", "on_view", "to_crop", "to_picture"]
