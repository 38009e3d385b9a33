"""Uploaded pictures: checked before any of it reaches a model.

An upload is refused with a clear message and a 4xx status: empty (400), over the size limit
(413), more pixels than :data:`MAX_PIXELS` (413; a decompression bomb is refused before it is
decoded), not an image (415), or an image whose data is cut short or damaged (400). A good one is
decoded once and kept as RGB PNG bytes, named by the SHA-256 of what was sent.

Example::

    picture = read_upload(request_bytes, limit=8 << 20)   # -> Upload(key, rgb uint8 [H, W, 3], png)
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np

from convscope.serve.answers import Refused

MAX_BYTES = 8 << 20  #: default upload limit (8 MiB)
MAX_PIXELS = 40_000_000  #: the most pixels an upload may decode to (a 6300 x 6300 picture)


class UploadRefused(Refused):
    """An upload that is not a usable picture, with its HTTP status (400, 413 or 415)."""


@dataclass(frozen=True)
class Upload:
    """A checked upload: ``key`` (hex digest of its bytes), its RGB ``pixels`` and their ``png``."""

    key: str
    pixels: np.ndarray
    png: bytes


def too_large(size: int, limit: int) -> UploadRefused:
    return UploadRefused(f"the upload is {size:,} bytes, over the limit of {limit:,}",
                         "Send a smaller picture (or start the server with a larger --max-upload).", 413)


def read_upload(data: bytes, limit: int = MAX_BYTES) -> Upload:
    """The picture in ``data``, decoded and checked (see the module doc)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise UploadRefused("the upload is empty (0 bytes)", "Choose a PNG or JPEG picture.", 400)
    if len(data) > limit:
        raise too_large(len(data), limit)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise UploadRefused(f"the picture is {width}x{height} pixels, over {MAX_PIXELS:,} pixels",
                                        "Send a smaller picture.", 413)
                image.load()
                rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except UploadRefused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadRefused(f"the picture decodes to too many pixels ({exc})", "Send a smaller picture.", 413) from None
    except UnidentifiedImageError:
        raise UploadRefused("the upload is not a picture convscope can read",
                            "Choose a PNG, JPEG, GIF, BMP or WebP file.", 415) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UploadRefused(f"the picture is damaged or cut short ({exc})",
                            "Send the whole file again, or another picture.", 400) from None
    if rgb.size == 0:
        raise UploadRefused("the picture has no pixels", "Choose a picture at least one pixel wide.", 400)
    from convscope.render.png import to_png_bytes

    return Upload(hashlib.sha256(data).hexdigest()[:16], rgb, to_png_bytes(rgb))
