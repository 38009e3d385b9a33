"""Random image transforms that make feature visualizations robust (Lucid's "transformation
robustness"): the optimized image must excite the unit also when shifted, scaled or rotated.

A transform is a callable ``t(x, generator) -> x'`` on a batch ``[N, C, H, W]``. Every random
draw comes from the explicit ``torch.Generator`` passed in (never the global RNG) and is made
once per call for the whole batch, so equal generators give equal transforms, whatever the
batch holds. Transforms compose with :func:`compose` (or :class:`Compose`):

- :class:`Pad` ``(width, value)``: constant padding on every side (``value=None``: reflect);
- :class:`Jitter` ``(d)``: a random crop that drops ``d`` rows and ``d`` columns in total
  (offsets uniform in ``0..d``);
- :class:`RandomScale` ``(scales)``: bilinear resize by a factor drawn from ``scales``;
- :class:`RandomRotate` ``(degrees)``: rotation about the centre by an angle drawn from
  ``degrees`` (bilinear, border pixels repeated);
- :class:`RandomAffine` ``(shift, scales, degrees)``: the three above in one resampling;
- :class:`Resize` ``(size)``: a fixed bilinear resize (for models with a fixed input size).

:func:`standard` is Lucid's default recipe scaled to the image size, fused into one resampling.

Example::

    t = compose(Pad(4), Jitter(4), RandomScale([0.9, 1.0, 1.1]), RandomRotate(range(-10, 11)))
    y = t(x, torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from convscope.errors import ConvscopeError


class Transform(Protocol):
    """``t(x, generator) -> Tensor``: a (random) transform of a batch of images."""

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor: ...


def _choice(values: Sequence[float], generator: torch.Generator) -> float:
    """One of ``values``, uniformly, drawn from ``generator``."""
    return float(values[int(torch.randint(len(values), (1,), generator=generator))])


def _choices(values: Sequence[float] | range, name: str) -> tuple[float, ...]:
    found = tuple(float(v) for v in values)
    if not found:
        raise ConvscopeError(f"{name} got no values to choose from", f"Pass e.g. {name}([0.9, 1.0, 1.1]).")
    return found


class Pad:
    """Pad ``width`` pixels on each side with ``value`` (``None``: reflect the image)."""

    def __init__(self, width: int, value: float | None = 0.5) -> None:
        if isinstance(width, bool) or not isinstance(width, int) or width < 0:
            raise ConvscopeError(f"Pad width {width!r} must be an int >= 0", "Write e.g. Pad(8).")
        self.width, self.value = width, value

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if self.width == 0:
            return x
        pad = (self.width,) * 4
        return F.pad(x, pad, mode="reflect") if self.value is None else F.pad(x, pad, value=self.value)

    def __repr__(self) -> str:
        return f"Pad({self.width}, value={self.value})"


class Jitter:
    """A random ``(H - d) x (W - d)`` crop: ``y = x[:, :, dy:dy + H - d, dx:dx + W - d]``, ``dy, dx``
    uniform in ``0..d``."""

    def __init__(self, d: int) -> None:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise ConvscopeError(f"Jitter distance {d!r} must be an int >= 0", "Write e.g. Jitter(8).")
        self.d = d

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if self.d == 0:
            return x
        h, w = x.shape[-2:]
        if self.d >= min(h, w):
            raise ConvscopeError(f"Jitter({self.d}) is too large for a {h}x{w} image", "Use a smaller distance.")
        dy, dx = torch.randint(self.d + 1, (2,), generator=generator).tolist()
        return x[..., dy:dy + h - self.d, dx:dx + w - self.d]

    def __repr__(self) -> str:
        return f"Jitter({self.d})"


class RandomScale:
    """Resize by a factor drawn from ``scales`` (bilinear): ``H' = round(H * s)``."""

    def __init__(self, scales: Sequence[float]) -> None:
        self.scales = _choices(scales, "RandomScale")
        if min(self.scales) <= 0:
            raise ConvscopeError(f"RandomScale factors {self.scales} must be positive", "Use e.g. [0.9, 1.0, 1.1].")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        s = _choice(self.scales, generator)
        h, w = x.shape[-2:]
        size = (max(1, round(h * s)), max(1, round(w * s)))
        return x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def __repr__(self) -> str:
        return f"RandomScale({list(self.scales)})"


class RandomRotate:
    """Rotate about the image centre by an angle (degrees, counter-clockwise) drawn from ``degrees``."""

    def __init__(self, degrees: Sequence[float] | range) -> None:
        self.degrees = _choices(degrees, "RandomRotate")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        angle = math.radians(_choice(self.degrees, generator))
        if angle == 0.0:
            return x
        cos, sin = math.cos(angle), math.sin(angle)
        h, w = x.shape[-2:]  # affine_grid works in [-1, 1] coordinates: undo the aspect ratio
        theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta[None], [1, *x.shape[1:]], align_corners=False).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def __repr__(self) -> str:
        return f"RandomRotate({list(self.degrees)})"


class RandomAffine:
    """Shift, scale and rotate in one bilinear resampling, same size out as in: with ``c`` the
    image centre, ``y(p) = x(c + R(-a) (p - c) / s + d)`` (``x`` extended by ``value`` outside),
    the angle ``a`` (degrees, counter-clockwise) drawn from ``degrees``, the factor ``s`` from
    ``scales`` (``s > 1`` enlarges) and each shift ``d`` uniform in ``-shift..shift`` pixels.

    Example: ``RandomAffine(shift=8, scales=[0.9, 1.0, 1.1], degrees=range(-10, 11))``.
    """

    def __init__(self, shift: int = 0, scales: Sequence[float] = (1.0,), degrees: Sequence[float] | range = (0.0,),
                 value: float = 0.5) -> None:
        if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
            raise ConvscopeError(f"RandomAffine shift {shift!r} must be an int >= 0", "Write e.g. shift=8.")
        self.shift, self.value = shift, float(value)
        self.scales = RandomScale(scales).scales
        self.degrees = _choices(degrees, "RandomAffine")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        s = _choice(self.scales, generator)
        angle = math.radians(_choice(self.degrees, generator))
        dy, dx = (torch.randint(2 * self.shift + 1, (2,), generator=generator) - self.shift).tolist()
        h, w = x.shape[-2:]
        cos, sin = math.cos(angle) / s, math.sin(angle) / s  # affine_grid's [-1, 1] coordinates: undo the aspect
        theta = torch.tensor([[cos, -sin * h / w, 2 * dx / w], [sin * w / h, cos, 2 * dy / h]], dtype=x.dtype,
                             device=x.device)
        # one grid for the whole batch (every image moves alike), shared by all of them
        grid = F.affine_grid(theta[None], [1, *x.shape[1:]], align_corners=False).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x - self.value, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False) + self.value

    def __repr__(self) -> str:
        return f"RandomAffine(shift={self.shift}, scales={list(self.scales)}, degrees={list(self.degrees)})"


class Resize:
    """Resize to ``size`` (``(h, w)`` or an int for square), bilinear: no randomness. It feeds images
    of another size to a model with a fixed input size (e.g. DeepDream octaves)."""

    def __init__(self, size: int | tuple[int, int]) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if len(self.size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.size):
            raise ConvscopeError(f"Resize size {size!r} must be a positive int or (h, w)", "Write e.g. Resize(64).")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class Compose:
    """Apply ``transforms`` in order, all drawing from the one generator."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        for t in transforms:
            if not callable(t):
                raise ConvscopeError(f"{t!r} is not a transform", "Pass callables t(x, generator) -> Tensor.")
        self.transforms = tuple(transforms)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        for t in self.transforms:
            x = t(x, generator)
        return x

    def __repr__(self) -> str:
        return f"Compose({list(self.transforms)})"


def compose(*transforms: Transform) -> Compose:
    """``compose(a, b, c)(x, g) == c(b(a(x, g), g), g)``."""
    return Compose(transforms)


def standard(size: int | tuple[int, int] = 224) -> RandomAffine:
    """Lucid's standard robustness recipe (pad 12 with grey, jitter 8, scale 0.9..1.1, rotate
    -10..10 degrees, jitter 4, for 224-pixel images) as one resampling of the same size:
    :class:`RandomAffine` with shifts up to 12 pixels scaled to ``size``, so the model always sees
    the size it expects and each step pays for one interpolation, not four.

    The unfused chain, for comparison: ``compose(Pad(12), Jitter(8), RandomScale(...),
    RandomRotate(...), Jitter(4), Resize(size))``."""
    k = (size if isinstance(size, int) else max(size)) / 224
    return RandomAffine(shift=max(1, round(12 * k)), scales=[1 + (i - 5) / 50 for i in range(11)],
                        degrees=list(range(-10, 11)) + [0] * 5, value=0.5)


__all__ = ["Compose", "Jitter", "Pad", "RandomAffine", "RandomRotate", "RandomScale", "Resize", "Transform", "compose", "standard"]
