"""Image parameterizations: the tensors an optimizer changes, and how they become an image.

An :class:`ImageParam` holds a batch of ``N`` images of ``C x H x W`` as unconstrained tensors;
calling it returns the images in pixel space, ``[N, C, H, W]`` in ``[0, 1]``. Three pieces:

1. **spatial basis** - ``"pixel"``: the tensor is the image; ``"fft"``: the tensor is a real
   spectrum ``z`` and the image is ``irfft2(z * s, norm="ortho")`` with the 1/f scaling
   ``s(f) = 1 / max(f, 1 / max(H, W)) ** decay`` (``f`` the spatial frequency in cycles per
   pixel), so every frequency band starts with about the same energy as in natural images;
2. **colour** - with ``decorrelate=True`` the three channels are mixed per pixel,
   ``rgb = M @ t``, by the square root ``M`` of the colour covariance (normalised to a largest
   column norm of 1): the optimizer then moves along decorrelated colour axes.
   :data:`IMAGENET_COLOUR_SQRT` is the default; :func:`colour_sqrt` computes ``M`` from images;
3. **valid range** - ``"sigmoid"``: ``sigmoid(t)``; ``"clamp"``: ``clamp(t + 0.5, 0, 1)``.

:meth:`ImageParam.from_image` inverts the three steps, so a parameterization can start from a
given picture (DeepDream, inversion) and round-trips it.

Example::

    g = torch.Generator().manual_seed(0)
    param = image(6, 64, fft=True, decorrelate=True, generator=g)
    x = param()                        # [6, 3, 64, 64] in [0, 1]
    torch.optim.Adam(param.parameters(), lr=0.05)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from convscope.errors import ConvscopeError

Valid = Literal["sigmoid", "clamp"]

# The square root of the RGB covariance of ImageNet pixels (scaled to [0, 1]), as published with
# Lucid: columns are the principal colour axes, each scaled by the square root of its variance.
IMAGENET_COLOUR_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                                     [0.27, 0.00, -0.05],
                                     [0.27, -0.09, 0.03]])

_EPS = 1e-4  # sigmoid inverse: pixels are clipped into [eps, 1 - eps]


def colour_sqrt(images: Tensor) -> Tensor:
    """The square root ``M = U diag(sqrt(s))`` of the channel covariance ``C = U diag(s) U^T`` of
    ``images`` (``[N, C, H, W]``, every pixel one sample), so ``M @ M.T == C``; the sign of each
    column is chosen so its largest entry is positive.

    Example: ``colour_sqrt(torch.stack([Shapes(256)[i][0] for i in range(256)]))``.
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise ConvscopeError(f"colour_sqrt needs a batch [N, C, H, W], got shape {list(images.shape)}",
                             "Stack some images, e.g. torch.stack([Shapes(256)[i][0] for i in range(256)]).")
    pixels = images.detach().double().transpose(0, 1).reshape(images.shape[1], -1)
    cov = torch.cov(pixels)
    values, vectors = torch.linalg.eigh(cov)
    order = values.argsort(descending=True)
    values, vectors = values[order].clamp(min=0), vectors[:, order]
    signs = torch.sign(vectors.gather(0, vectors.abs().argmax(0, keepdim=True)))
    return (vectors * signs * values.sqrt()).float()


def _normalised(matrix: Tensor) -> Tensor:
    """``matrix`` divided by its largest column norm."""
    return matrix / matrix.norm(dim=0).max()


def rfft_frequencies(h: int, w: int) -> Tensor:
    """``|f|`` (cycles per pixel) of each coefficient of ``torch.fft.rfft2`` of an ``h x w`` image."""
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return (fx * fx + fy * fy).sqrt()


class ImageParam:
    """A batch of images as optimizable tensors; ``param()`` is the images in ``[0, 1]``.

    The tensors start as ``sd``-scaled normal noise drawn from ``generator`` (default: a generator
    seeded with 0; the global RNG is never used), on ``device``.
    """

    def __init__(self, shape: Sequence[int], *, fft: bool = True, decorrelate: bool = True,
                 valid: Valid = "sigmoid", colour: Tensor | None = None, decay: float = 1.0, sd: float = 0.01,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None) -> None:
        n, c, h, w = _check_shape(shape)
        if valid not in ("sigmoid", "clamp"):
            raise ConvscopeError(f"valid={valid!r} is not a range mapping", "Use valid='sigmoid' or valid='clamp'.")
        if decorrelate and c != 3:
            raise ConvscopeError(f"decorrelated colour needs 3 channels, not {c}", "Pass decorrelate=False.")
        self.shape = (n, c, h, w)
        self.fft, self.valid = fft, valid
        self.colour = _normalised(IMAGENET_COLOUR_SQRT if colour is None else colour.float()) if decorrelate else None
        if self.colour is not None and self.colour.shape != (3, 3):
            raise ConvscopeError(f"colour matrix has shape {list(self.colour.shape)}", "Pass a 3x3 matrix.")
        self.scale = 1.0 / rfft_frequencies(h, w).clamp(min=1.0 / max(h, w)) ** decay if fft else None
        raw = (n, c, h, w // 2 + 1, 2) if fft else (n, c, h, w)
        generator = generator or torch.Generator().manual_seed(0)  # never the global RNG
        self.tensor = (torch.randn(raw, generator=generator) * sd).to(device)
        if self.colour is not None:
            self.colour = self.colour.to(self.tensor.device)
        if self.scale is not None:
            self.scale = self.scale.to(self.tensor.device)
        self.tensor.requires_grad_()

    def parameters(self) -> list[Tensor]:
        """The tensors to optimize."""
        return [self.tensor]

    def __call__(self) -> Tensor:
        """The images, ``[N, C, H, W]`` in ``[0, 1]``."""
        t = self.tensor
        if self.scale is not None:
            t = torch.fft.irfft2(torch.view_as_complex(t) * self.scale, s=self.shape[2:], norm="ortho")
        if self.colour is not None:
            t = torch.einsum("ij,njhw->nihw", self.colour, t)
        return torch.sigmoid(t) if self.valid == "sigmoid" else (t + 0.5).clamp(0, 1)

    @torch.no_grad()
    def set_image(self, image: Tensor) -> ImageParam:
        """Set the tensors so that ``self()`` is ``image`` (``[N, C, H, W]`` in ``[0, 1]``; with
        ``valid="sigmoid"`` pixels are clipped into ``[1e-4, 1 - 1e-4]`` first). Returns self."""
        if tuple(image.shape) != self.shape:
            raise ConvscopeError(f"image of shape {list(image.shape)} does not fit a parameterization of "
                                 f"shape {list(self.shape)}", "Create the parameterization from the image's shape.")
        x = image.to(self.tensor.device, torch.float32)
        t = torch.logit(x.clamp(_EPS, 1 - _EPS)) if self.valid == "sigmoid" else x - 0.5
        if self.colour is not None:
            t = torch.einsum("ij,njhw->nihw", torch.linalg.inv(self.colour), t)
        if self.scale is not None:
            t = torch.view_as_real(torch.fft.rfft2(t, norm="ortho") / self.scale).contiguous()
        self.tensor.copy_(t)
        return self

    @classmethod
    def from_image(cls, image: Tensor, **options: object) -> ImageParam:
        """A parameterization (``options`` as for the constructor) that starts at ``image``."""
        if image.dim() != 4:
            raise ConvscopeError(f"from_image needs a batch [N, C, H, W], got shape {list(image.shape)}",
                                 "Add the batch dimension: image.unsqueeze(0).")
        return cls(tuple(image.shape), device=image.device, **options).set_image(image)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return (f"ImageParam({list(self.shape)}, fft={self.fft}, decorrelate={self.colour is not None}, "
                f"valid={self.valid!r})")


def image(n: int, size: int | tuple[int, int], *, channels: int = 3, **options: object) -> ImageParam:
    """``n`` images of ``size`` (an int for square images, or ``(h, w)``); ``options`` as for
    :class:`ImageParam` (``fft``, ``decorrelate``, ``valid``, ``colour``, ``sd``, ``generator``...).

    Example: ``image(16, 64, fft=True, generator=torch.Generator().manual_seed(0))``.
    """
    h, w = (size, size) if isinstance(size, int) else size
    return ImageParam((n, channels, h, w), **options)  # type: ignore[arg-type]


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int, int]:
    if len(shape) != 4 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ConvscopeError(f"image shape {list(shape)} is not [N, C, H, W] of positive ints",
                             "Give e.g. (6, 3, 64, 64).")
    return (shape[0], shape[1], shape[2], shape[3])


__all__ = ["IMAGENET_COLOUR_SQRT", "ImageParam", "Valid", "colour_sqrt", "image", "rfft_frequencies"]
