"""``Shapes``: a procedurally drawn, seed-deterministic dataset of six shape classes.

Each image shows one flat-coloured shape (``CLASSES``) at a random position, scale (covering
a uniform fraction in ``AREA_RANGE`` of the image, less where a shape must shrink to keep a
1-pixel margin), rotation and colour, on a textured background (smooth noise +
stripes + a colour ramp + pixel noise). The shape colour lies at least ``MIN_CONTRAST`` (RGB
distance, 0..255 units) from the mean background under the shape. Sample ``i`` depends only on
``(seed, i)`` through ``np.random.default_rng([seed, i])``, so any subset, order or shard of the
dataset yields the same pictures. Geometry conventions are in :mod:`convscope.data.draw`.

It is a map-style torch dataset without importing torch until an item is requested.

Example::

    ds = Shapes(10_000, seed=0)
    x, y = ds[3]                          # float32 tensor [3, 64, 64] in [0, 1], int label
    images, masks, labels = ds.arrays(0, 1000)   # uint8 [N,64,64,3], bool [N,64,64], int64 [N]
    x_normalised = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from convscope.data.draw import INNER_RADII, UNIT_AREAS, Texture, shape_masks, texture
from convscope.errors import ConvscopeError

if TYPE_CHECKING:
    import torch

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "star")

# Per-channel mean and standard deviation of the images scaled to [0, 1] (2,000 images of
# Shapes(2000, seed=0), all pixels pooled); normalise model inputs with (x - MEAN) / STD.
MEAN: tuple[float, float, float] = (0.4958, 0.5001, 0.5046)
STD: tuple[float, float, float] = (0.2315, 0.2307, 0.2313)

MIN_SIZE = 24
AREA_RANGE = (0.08, 0.30)
MIN_CONTRAST = 110.0

_COLOUR_CANDIDATES = 8
_GRID = 4
_CHUNK = 64
# Layout of the uniform numbers drawn per image: name -> count, in drawing order.
_LAYOUT: dict[str, int] = {
    "label": 1, "area": 1, "centre": 2, "angle": 1, "colours": 3 * _COLOUR_CANDIDATES,
    "base": 3, "grid_amp": 1, "grid": _GRID * _GRID * 3,
    "stripe": 3, "stripe_amp": 1, "stripe_colour": 3, "ramp_angle": 1, "ramp_colour": 3,
    "noise_amp": 1,
}
_OFFSETS = dict(zip(_LAYOUT, np.cumsum([0, *_LAYOUT.values()])[:-1].tolist()))
_DRAWS = sum(_LAYOUT.values())


class ShapesIndexError(ConvscopeError, IndexError):
    """An index outside the dataset (an ``IndexError`` too, so iteration stops cleanly)."""


@dataclass(frozen=True)
class ShapeSample:
    """One drawn sample and the parameters that drew it.

    ``centre`` is ``(x, y)`` in continuous pixels, ``scale`` the circumradius in pixels,
    ``angle`` degrees counter-clockwise on screen, ``colour`` the RGB value of every mask pixel;
    ``background`` is the same image without the shape.
    """

    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # bool [H, W]
    label: int
    name: str
    centre: tuple[float, float]
    scale: float
    angle: float
    colour: tuple[int, int, int]
    background: np.ndarray  # uint8 [H, W, 3]


@dataclass(frozen=True)
class _Drawn:
    """A drawn batch; ``images`` and ``backgrounds`` are uint8 channels-first ``[N, 3, H, W]``."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    centres: np.ndarray
    scales: np.ndarray
    angles: np.ndarray
    colours: np.ndarray
    backgrounds: np.ndarray


def _uniforms(seed: int, start: int, stop: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image uniforms ``[N, _DRAWS]`` (float64) and pixel noise ``[N, 3, H, W]`` in [-1, 1)."""
    draws = np.empty((stop - start, _DRAWS))
    noise = np.empty((stop - start, 3, size, size), dtype=np.float32)
    for row, i in enumerate(range(start, stop)):
        rng = np.random.default_rng([seed, i])
        draws[row] = rng.random(_DRAWS)
        rng.random(out=noise[row], dtype=np.float32)
    noise *= 2.0
    noise -= 1.0
    return draws, noise


def _field(draws: np.ndarray, name: str) -> np.ndarray:
    """The columns of ``draws`` that ``_LAYOUT`` assigns to ``name``: ``[N, count]``."""
    return draws[:, _OFFSETS[name]:_OFFSETS[name] + _LAYOUT[name]]


def _texture_params(draws: np.ndarray, noise: np.ndarray) -> Texture:
    """Map uniforms to background parameters (0..255 units): base colour in [40, 215]^3, smooth
    noise of amplitude 10..45, stripes of 1.5..8 cycles per image and amplitude <= 35 per
    channel, a ramp of <= 50 per channel, pixel noise of amplitude 3..15 (scales ``noise``)."""
    n = len(draws)
    stripe = _field(draws, "stripe")
    noise *= (3.0 + 12.0 * _field(draws, "noise_amp")[:, 0]).astype(np.float32)[:, None, None, None]
    return Texture(
        base=40.0 + 175.0 * _field(draws, "base"),
        grid=(2.0 * _field(draws, "grid") - 1.0).reshape(n, 3, _GRID, _GRID)
        * (10.0 + 35.0 * _field(draws, "grid_amp"))[:, :, None, None],
        stripe_freq=1.5 + 6.5 * stripe[:, 0],
        stripe_angle=np.pi * stripe[:, 1],
        stripe_phase=2.0 * np.pi * stripe[:, 2],
        stripe_colour=(2.0 * _field(draws, "stripe_colour") - 1.0) * 35.0 * _field(draws, "stripe_amp"),
        ramp_angle=2.0 * np.pi * _field(draws, "ramp_angle")[:, 0],
        ramp_colour=(2.0 * _field(draws, "ramp_colour") - 1.0) * 50.0,
        noise=noise,
    )


def _pick_colours(candidates: np.ndarray, backgrounds: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The first candidate at least ``MIN_CONTRAST`` from the mean background under the mask,
    else the RGB cube corner farthest from it (always >= 127.5 * sqrt(3) away).

    ``backgrounds`` is uint8 ``[N, 3, H, W]``; the sums are exact integers (order-free)."""
    counts = masks.sum(axis=(1, 2))[:, None]
    sums = (backgrounds * masks[:, None]).sum(axis=(2, 3), dtype=np.int64)
    local = sums / counts
    far = np.linalg.norm(candidates - local[:, None, :], axis=2) >= MIN_CONTRAST
    first = np.argmax(far, axis=1)
    chosen = candidates[np.arange(len(candidates)), first]
    corner = np.where(local > 127.5, 0, 255)
    return np.where(far.any(axis=1)[:, None], chosen, corner).astype(np.uint8)


def _draw(seed: int, start: int, stop: int, size: int) -> _Drawn:
    """Draw samples ``start..stop-1``; each depends only on ``(seed, i)``."""
    draws, noise = _uniforms(seed, start, stop, size)
    labels = np.minimum((_field(draws, "label")[:, 0] * len(CLASSES)).astype(np.int64), len(CLASSES) - 1)
    area = AREA_RANGE[0] + (AREA_RANGE[1] - AREA_RANGE[0]) * _field(draws, "area")[:, 0]
    scales = np.sqrt(area * size * size / UNIT_AREAS[labels])
    scales = np.clip(scales, 1.0 / INNER_RADII[labels], size / 2.0 - 1.0)  # non-empty, 1 px margin
    centres = scales[:, None] + 1.0 + _field(draws, "centre") * (size - 2.0 * scales[:, None] - 2.0)
    angles = 360.0 * _field(draws, "angle")[:, 0]
    masks = shape_masks(labels, centres, scales, angles, size)

    background = texture(_texture_params(draws, noise), size)
    np.clip(background, 0.0, 255.0, out=background)
    backgrounds = np.rint(background).astype(np.uint8)
    candidates = np.rint(255.0 * _field(draws, "colours")).reshape(-1, _COLOUR_CANDIDATES, 3)
    colours = _pick_colours(candidates, backgrounds, masks)
    images = np.where(masks[:, None], colours[:, :, None, None], backgrounds)
    return _Drawn(images, masks, labels, centres, scales, angles, colours, backgrounds)


def _hwc(image: np.ndarray) -> np.ndarray:
    """``[3, H, W]`` -> contiguous ``[H, W, 3]``."""
    return np.ascontiguousarray(image.transpose(1, 2, 0))


def _check_int(value: Any, name: str, low: int, hint: str) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise ConvscopeError(f"{name} must be an integer, got {type(value).__name__} {value!r}", hint) from None
    if number < low:
        raise ConvscopeError(f"{name} must be >= {low}, got {number}", hint)
    return number


class Shapes:
    """``n`` synthetic shape images of ``size x size`` pixels, drawn from ``seed``.

    A map-style dataset: ``ds[i] -> (float32 tensor [3, H, W] in [0, 1], label)``; use
    :meth:`arrays` for fast batches, :meth:`mask` and :meth:`sample` for ground truth.
    """

    class_names: tuple[str, ...] = CLASSES

    def __init__(self, n: int, seed: int = 0, size: int = 64) -> None:
        self.n = _check_int(n, "n (the number of images)", 0, "Pass a count such as Shapes(10_000).")
        self.seed = _check_int(seed, "seed", 0, "Pass a non-negative integer seed, e.g. seed=0.")
        self.size = _check_int(size, "size", MIN_SIZE,
                               f"Images smaller than {MIN_SIZE} px cannot show every shape; use size >= {MIN_SIZE}.")

    def __repr__(self) -> str:
        return f"Shapes(n={self.n}, seed={self.seed}, size={self.size})"

    def __len__(self) -> int:
        return self.n

    def _index(self, i: Any) -> int:
        try:
            index = operator.index(i)
        except TypeError:
            raise ConvscopeError(f"a Shapes index must be an integer, got {type(i).__name__}",
                                 "Use ds[i] with an int; for batches use ds.arrays(start, stop).") from None
        if not -self.n <= index < self.n:
            raise ShapesIndexError(f"index {index} is out of range for {self!r}",
                                   f"Use 0 <= i < {self.n} (or a negative index from the end).")
        return index % self.n

    def _range(self, start: int, stop: int | None) -> tuple[int, int]:
        stop = self.n if stop is None else stop
        try:
            start, stop = operator.index(start), operator.index(stop)
        except TypeError:
            raise ConvscopeError(f"start and stop must be integers, got {start!r} and {stop!r}",
                                 "Use ds.arrays(0, 1000).") from None
        if not 0 <= start <= stop <= self.n:
            raise ConvscopeError(f"range [{start}, {stop}) is not inside {self!r}",
                                 f"Use 0 <= start <= stop <= {self.n}.")
        return start, stop

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        import torch

        k = self._index(i)
        drawn = _draw(self.seed, k, k + 1, self.size)
        image = torch.from_numpy(drawn.images[0]).to(torch.float32) / 255.0
        return image, int(drawn.labels[0])

    def mask(self, i: int) -> np.ndarray:
        """The ground-truth object mask of sample ``i``: bool ``[H, W]``."""
        k = self._index(i)
        return _draw(self.seed, k, k + 1, self.size).masks[0]

    def sample(self, i: int) -> ShapeSample:
        """Sample ``i`` with its mask, background and drawing parameters."""
        k = self._index(i)
        d = _draw(self.seed, k, k + 1, self.size)
        return ShapeSample(
            image=_hwc(d.images[0]), mask=d.masks[0], label=int(d.labels[0]), name=CLASSES[d.labels[0]],
            centre=(float(d.centres[0, 0]), float(d.centres[0, 1])), scale=float(d.scales[0]),
            angle=float(d.angles[0]), colour=(int(d.colours[0, 0]), int(d.colours[0, 1]), int(d.colours[0, 2])),
            background=_hwc(d.backgrounds[0]))

    def arrays(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Samples ``start..stop-1`` as ``(images uint8 [N,H,W,3], masks bool [N,H,W], labels int64 [N])``."""
        start, stop = self._range(start, stop)
        n, s = stop - start, self.size
        images = np.empty((n, s, s, 3), dtype=np.uint8)
        masks = np.empty((n, s, s), dtype=bool)
        labels = np.empty(n, dtype=np.int64)
        for lo in range(start, stop, _CHUNK):  # bounded memory; chunks cannot change the pixels
            hi = min(lo + _CHUNK, stop)
            d = _draw(self.seed, lo, hi, s)
            images[lo - start:hi - start] = d.images.transpose(0, 2, 3, 1)
            masks[lo - start:hi - start] = d.masks
            labels[lo - start:hi - start] = d.labels
        return images, masks, labels

    def tensors(self, start: int = 0, stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``start..stop-1`` as ``(float32 [N, 3, H, W] in [0, 1], int64 labels [N])``."""
        import torch

        images, _, labels = self.arrays(start, stop)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float32).div_(255.0).contiguous()
        return x, torch.from_numpy(labels)
