"""The user's whole picture: what was made on a model's crop, shown where that crop lies.

A model sees a crop of each picture (:meth:`~convscope.images.Preprocess.crop_box` says where).
:func:`overlay_on_picture` blends a heat map made on the crop over that region of the original
picture; outside the crop the model saw nothing, so the picture is left exactly as it is.
:func:`paste` puts an image made on the crop (a dreamed crop) back into the picture
(:func:`resized_picture`: the whole picture at the scale the crop was cut at). A picture
longer than ``max_side`` pixels is shown downscaled to that (:data:`MAX_SIDE` by default), so
memory per picture stays bounded.

Example::

    picture = open_picture("cat.jpg")
    shown = overlay_on_picture(picture, pre.crop_box(*Image.open("cat.jpg").size), heat)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convscope import render
from convscope.images import CropBox, Preprocess

MAX_SIDE = 1024  # pixels: the longest side a whole picture is drawn at


def open_picture(path: str | Path, max_side: int = MAX_SIDE) -> np.ndarray:
    """The picture at ``path`` as RGB uint8 [H, W, 3], downscaled (bilinear) so that its longer
    side is at most ``max_side``."""
    from PIL import Image

    with Image.open(path) as im:
        scale = min(1.0, max_side / max(im.size))
        size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        if scale < 1.0:
            im.draft("RGB", size)  # a JPEG decodes straight at a smaller scale
        image = im.convert("RGB")
        if image.size != size:
            image = image.resize(size, Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8).copy()


def resized_picture(path: str | Path, preprocess: Preprocess) -> tuple[np.ndarray, CropBox]:
    """The whole picture at ``path`` resized as ``preprocess`` resizes it before cropping (shorter
    side to ``size``), RGB uint8 [H, W, 3], and where the crop lies in it."""
    from PIL import Image

    with Image.open(path) as im:
        box = preprocess.crop_box(*im.size)
        resized = preprocess.resized(im)
    return np.asarray(resized, dtype=np.uint8).copy(), box.scaled(*resized.size)


def region(picture: np.ndarray, box: CropBox) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)``: the whole pixels of ``picture`` under ``box`` (a box of the
    original picture, scaled to the size ``picture`` is drawn at)."""
    height, width = picture.shape[:2]
    return box.scaled(width, height).pixels()


def overlay_on_picture(picture: np.ndarray, box: CropBox, heat: np.ndarray, alpha: float = 0.6,
                       cmap: str = "inferno") -> np.ndarray:
    """``picture`` with ``heat`` (a map of the crop, in ``[0, 1]``) blended over the crop's region
    (:func:`convscope.render.overlay`, the heat resized to the region); every pixel outside the
    region is the picture's own."""
    left, top, right, bottom = region(picture, box)
    shown = picture.copy()
    if right > left and bottom > top:
        shown[top:bottom, left:right] = render.overlay(picture[top:bottom, left:right], heat, alpha=alpha, cmap=cmap)
    return shown


def paste(picture: np.ndarray, box: CropBox, image: np.ndarray) -> np.ndarray:
    """``picture`` with ``image`` (made on the crop, RGB uint8) resized into the crop's region."""
    left, top, right, bottom = region(picture, box)
    shown = picture.copy()
    if right > left and bottom > top:
        shown[top:bottom, left:right] = render.resize(image, (bottom - top, right - left))
    return shown


def captioned(picture: np.ndarray, caption: str, min_width: int = 128) -> np.ndarray:
    """``picture`` with a one-line caption band below it; a picture narrower than ``min_width`` is
    padded on the right with white so a short caption fits (a longer one is cut with "...")."""
    height, width = picture.shape[:2]
    if width < min_width:
        picture = np.pad(picture, ((0, 0), (0, min_width - width), (0, 0)), constant_values=255)
    return render.grid([picture], labels=[caption], pad=0, tile_size=picture.shape[:2])


__all__ = ["MAX_SIDE", "captioned", "open_picture", "overlay_on_picture", "paste", "region", "resized_picture"]
