"""Images in: files and folders of images, through a model's preprocessing preset.

A :class:`Preprocess` resizes the shorter side to ``size``, centre-crops ``crop`` x ``crop`` and
normalises each channel, ``x = (pixel / 255 - mean) / std``. :func:`load_images` returns the
batch the model sees and the pixels a person sees (the cropped, unnormalised images), and for
each image the :class:`CropBox`: where that crop lies in the original picture. :class:`ImageStream`
reads many files a batch at a time, so memory does not grow with their number.

Example::

    pre = Preprocess(size=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    batch = load_images(["cat.jpg", "photos/"], pre)
    model(batch.tensor); batch.names; batch.boxes[0]
    for batch in ImageStream(["photos/"], pre, batch_size=16):
        ...
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from convscope.errors import ConvscopeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
IMAGES_PER_BATCH = 16  # image files an ImageStream reads at a time by default


def images_per_batch(max_batch: object) -> int:
    """Files to read at a time for model evaluations of at most ``max_batch`` samples:
    :data:`IMAGES_PER_BATCH`, or fewer for a smaller int ``max_batch`` (``"auto"``, None: the default)."""
    if isinstance(max_batch, int) and not isinstance(max_batch, bool) and max_batch >= 1:
        return min(max_batch, IMAGES_PER_BATCH)
    return IMAGES_PER_BATCH


@dataclass(frozen=True)
class CropBox:
    """Where a model's crop lies in the original ``width`` x ``height`` picture, in its pixel
    coordinates (floats: the crop was taken from a resized picture). ``(0, 0, w, h)`` is the whole
    picture. Example: a 512x256 picture, ``Preprocess(size=64, crop=64)``: the picture is resized
    to 128x64 and cropped at x = 32..96, so the box is ``CropBox(128, 0, 384, 256, 512, 256)``."""

    left: float
    top: float
    right: float
    bottom: float
    width: int
    height: int

    def scaled(self, width: int, height: int) -> CropBox:
        """The same box on the picture resized to ``width`` x ``height``."""
        sx, sy = width / self.width, height / self.height
        return CropBox(self.left * sx, self.top * sy, self.right * sx, self.bottom * sy, width, height)

    def pixels(self) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` rounded to whole pixels and clipped to the picture."""
        def clip(v: float, n: int) -> int:
            return min(max(round(v), 0), n)

        return (clip(self.left, self.width), clip(self.top, self.height), clip(self.right, self.width),
                clip(self.bottom, self.height))


@dataclass(frozen=True)
class Preprocess:
    """Resize (shorter side to ``size``), centre crop to ``crop``, normalise by ``mean``/``std``."""

    size: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` of a ``width`` x ``height`` picture with its shorter side resized to
        ``size`` (each side at least ``crop``); the picture's own size when it already fits."""
        scale = self.size / min(width, height)
        if (round(width * scale), round(height * scale)) == (width, height):
            return width, height
        return max(self.crop, round(width * scale)), max(self.crop, round(height * scale))

    def crop_box(self, width: int, height: int) -> CropBox:
        """Where :meth:`pixels` crops a ``width`` x ``height`` picture, in that picture's coordinates."""
        w, h = self.resized_size(width, height)
        left, top = (w - self.crop) // 2, (h - self.crop) // 2
        sx, sy = width / w, height / h
        return CropBox(left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy, width, height)

    def resized(self, image: "PIL.Image.Image") -> "PIL.Image.Image":  # type: ignore[name-defined]  # noqa: F821
        """The whole RGB picture, shorter side resized to ``size`` (what the crop is cut from)."""
        from PIL import Image

        image = image.convert("RGB")
        size = self.resized_size(*image.size)
        return image if size == image.size else image.resize(size, Image.BILINEAR)

    def pixels(self, image: "PIL.Image.Image") -> np.ndarray:  # type: ignore[name-defined]  # noqa: F821
        """The resized, cropped RGB image as uint8 [crop, crop, 3]."""
        image = self.resized(image)
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
    files: list[Path] = field(default_factory=list)  # the file of each image
    boxes: list[CropBox] = field(default_factory=list)  # where each crop lies in its original picture


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
    if isinstance(paths, (str, Path)):
        paths = [paths]
    batch = _read(image_files(paths), preprocess, skip_bad)
    if not batch.names:
        raise _nothing_read(batch.skipped)
    return batch


def _nothing_read(skipped: list[tuple[str, str]]) -> ConvscopeError:
    return ConvscopeError("none of the given images could be read", "Check the files: " + "; ".join(r for _, r in skipped))


def _read(files: Sequence[Path], preprocess: Preprocess, skip_bad: bool) -> ImageBatch:
    """The batch of the readable ``files`` (an empty one if none is; see :func:`load_images`)."""
    from PIL import Image, UnidentifiedImageError

    pixels, names, kept, boxes, skipped = [], [], [], [], []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                pixels.append(preprocess.pixels(im))
                boxes.append(preprocess.crop_box(*im.size))
            names.append(f.name)
            kept.append(f)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            reason = f"not a readable image ({type(exc).__name__}: {exc})"
            if not skip_bad:
                raise ConvscopeError(f"cannot read {str(f)!r}: {reason}",
                                     "Replace or remove the file (it may be truncated or not an image).") from None
            skipped.append((str(f), reason))
    crop = preprocess.crop
    stack = np.stack(pixels) if pixels else np.zeros((0, crop, crop, 3), np.uint8)
    return ImageBatch(preprocess.to_tensor(stack), stack, names, skipped, kept, boxes)


class ImageStream:
    """The images of ``paths`` (files and folders, as :func:`load_images` takes them), read
    ``batch_size`` files at a time: only one batch is in memory at once. ``len()`` is the number
    of files; the files are listed (and missing paths reported) when the stream is made, each
    batch read when it is reached. With ``skip_bad=True`` unreadable files are skipped and listed
    in ``.skipped`` (a batch with none readable is not yielded); a stream with no readable image
    at all raises at its end.

    Example: ``for batch in ImageStream(["photos/"], pre, batch_size=16): model(batch.tensor)``.
    """

    def __init__(self, paths: Sequence[str | Path] | str | Path, preprocess: Preprocess,
                 batch_size: int = IMAGES_PER_BATCH, *, skip_bad: bool = False) -> None:
        if batch_size < 1:
            raise ConvscopeError(f"batch_size={batch_size} must be positive", "Read e.g. 16 images at a time.")
        self.files = image_files([paths] if isinstance(paths, (str, Path)) else paths)
        self.preprocess, self.batch_size, self.skip_bad = preprocess, batch_size, skip_bad
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[ImageBatch]:
        self.skipped = []
        read = 0
        for start in range(0, len(self.files), self.batch_size):
            batch = _read(self.files[start:start + self.batch_size], self.preprocess, self.skip_bad)
            self.skipped += batch.skipped
            read += len(batch.names)
            if batch.names:
                yield batch
        if not read:
            raise _nothing_read(self.skipped)
