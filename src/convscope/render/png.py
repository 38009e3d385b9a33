"""PNG encoding of images.

Example::

    save_png("out/cam.png", overlay(image, heat))     # creates out/, replaces atomically
    data = to_png_bytes(image)                         # bytes, e.g. for an HTML data URI
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from PIL import Image

from convscope.fileio import write_atomic
from convscope.render.image import to_image_uint8


def to_png_bytes(image: Any, channel_axis: int | None = None) -> bytes:
    """The PNG encoding of ``image`` (any accepted image; gray stays 8-bit gray, RGBA keeps
    its alpha). Decoding it gives back ``to_image_uint8(image)`` exactly (PNG is lossless).
    """
    pixels = to_image_uint8(image, channel_axis)  # H x W x C uint8, C in 1, 3, 4
    picture = Image.fromarray(pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(
    path: str | os.PathLike[str], image: Any, channel_axis: int | None = None
) -> Path:
    """Write ``image`` as a PNG file at ``path`` (parent directories created, atomic replace);
    returns the path.
    """
    return write_atomic(path, to_png_bytes(image, channel_axis))
