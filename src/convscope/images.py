"""Images in: files and folders of images, through a model's preprocessing preset.

A :class:`Preprocess` resizes the shorter side to ``size``, centre-crops ``crop`` x ``crop`` and
normalises each channel, ``x = (pixel / 255 - mean) / std``. :func:`load_images` returns the
batch the model sees and the pixels a person sees (the cropped, unnormalised images).

Example::

    pre = Preprocess(size=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    batch = load_images(["cat.jpg", "photos/"], pre)
    model(batch.tensor); batch.names
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from convscope.errors import ConvscopeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


@dataclass(frozen=True)
class Preprocess:
    """Resize (shorter side to ``size``), centre crop to ``crop``, normalise by ``mean``/``std``."""

    size: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def pixels(self, image: "PIL.Image.Image") -> np.ndarray:  # type: ignore[name-defined]  # noqa: F821
        """The resized, cropped RGB image as uint8 [crop, crop, 3]."""
        from PIL import Image

        image = image.convert("RGB")
        w, h = image.size
        scale = self.size / min(w, h)
        if (round(w * scale), round(h * scale)) != (w, h):
            image = image.resize((max(self.crop, round(w * scale)), max(self.crop, round(h * scale))),
                                 Image.BILINEAR)
        w, h = image.size
        left, top = (w - self.crop) // 2, (h - self.crop) // 2
        return np.asarray(image.crop((left, top, left + self.crop, top + self.crop)), dtype=np.uint8)

    def to_tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 [N,H,W,3] or [H,W,3] -> normalised float32 [N,3,H,W]."""
        arr = pixels[None] if pixels.ndim == 3 else pixels
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(255)
        return (x - torch.tensor(self.mean).view(1, 3, 1, 1)) / torch.tensor(self.std).view(1, 3, 1, 1)

    def to_pixels(self, x: torch.Tensor) -> np.ndarray:
        """Inverse of :meth:`to_tensor`: normalised [N,3,H,W] -> uint8 [N,H,W,3]."""
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        img = (x.detach() * std + mean).clamp(0, 1).mul(255).round().byte()
        return img.permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class ImageBatch:
    """What :func:`load_images` returns."""

    tensor: torch.Tensor  # normalised [N,3,H,W], what the model sees
    pixels: np.ndarray  # uint8 [N,H,W,3], what a person sees
    names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) when skip_bad=True


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders (recursively, sorted) into image files; a missing path is an error."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise ConvscopeError(f"the folder {str(p)!r} contains no images",
                                     "Point to a folder with .png/.jpg files, or name the image files directly.")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ConvscopeError(f"no such image file or folder: {str(p)!r}",
                                 "Check the path (relative paths are taken from the current directory).")
    return files


def load_images(paths: Sequence[str | Path] | str | Path, preprocess: Preprocess, *, skip_bad: bool = False) -> ImageBatch:
    """Load image files/folders through ``preprocess``.

    An unreadable image raises a :class:`ConvscopeError`, or is skipped and listed in
    ``.skipped`` when ``skip_bad=True``.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(paths, (str, Path)):
        paths = [paths]
    pixels, names, skipped = [], [], []
    for f in image_files(paths):
        try:
            with Image.open(f) as im:
                im.load()
                pixels.append(preprocess.pixels(im))
            names.append(f.name)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            reason = f"not a readable image ({type(exc).__name__}: {exc})"
            if not skip_bad:
                raise ConvscopeError(f"cannot read {str(f)!r}: {reason}",
                                     "Replace or remove the file (it may be truncated or not an image).") from None
            skipped.append((str(f), reason))
    if not pixels:
        raise ConvscopeError("none of the given images could be read", "Check the files: " + "; ".join(r for _, r in skipped))
    stack = np.stack(pixels)
    return ImageBatch(preprocess.to_tensor(stack), stack, names, skipped)
