"""Image arrays at the render edge: conversion, layout, dtype and resizing.

Everything in :mod:`convscope.render` takes numpy arrays (torch tensors are converted with
``np.asarray(t.detach().cpu())`` here, without importing torch). Images are accepted as

* ``uint8`` in ``[0, 255]`` or float in ``[0, 1]`` (other integer dtypes with values in
  ``[0, 255]`` count as 8-bit);
* ``H x W`` (grayscale), ``H x W x C`` or ``C x H x W`` with ``C`` in 1, 3 or 4 (RGBA);
  an optional leading batch dimension of size 1 is dropped.

Layout rule when ``channel_axis`` is not given: a 3-D array whose first dimension is 1 or 3
and whose last dimension is not 1 or 3 is CHW; otherwise, if the last dimension is 1, 3 or 4,
it is HWC. Anything else raises :class:`ConvscopeError` asking for ``channel_axis``. So
``(3, 32, 32)`` and ``(3, 4, 4)`` are CHW, ``(32, 32, 3)`` and ``(3, 5, 3)`` are HWC; an RGBA
image only 1 or 3 pixels tall needs ``channel_axis=-1``.

Example::

    rgb = to_rgb_uint8(torch.rand(3, 8, 8))      # (8, 8, 3) uint8
    big = resize(rgb, (32, 32), "nearest")        # (32, 32, 3) uint8
"""

from __future__ import annotations

from typing import Any, Literal, cast

import numpy as np

from convscope.errors import ConvscopeError

Interpolation = Literal["bilinear", "nearest"]
_CHANNELS = (1, 3, 4)


def to_numpy(x: Any) -> np.ndarray:
    """``x`` as a numpy array; torch tensors via ``x.detach().cpu()`` (never modified).

    Works for numpy arrays, torch tensors (any device, ``requires_grad`` or not, bfloat16),
    TensorFlow tensors (``.numpy()``) and nested lists. The result may share memory with
    ``x``: callers must not write into it.
    """
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        t = x.detach().cpu()
        try:
            return np.asarray(t)
        except TypeError:  # dtypes numpy lacks (bfloat16): widen first
            return np.asarray(t.float())
    if hasattr(x, "numpy") and callable(x.numpy):  # TensorFlow eager tensors
        return np.asarray(x.numpy())
    return np.asarray(x)


def _drop_batch(a: np.ndarray, ndim: int) -> np.ndarray:
    """Drop a leading batch dimension of size 1 when ``a`` has ``ndim + 1`` dimensions."""
    if a.ndim == ndim + 1 and a.shape[0] == 1:
        return a[0]
    return a


def channels_last(
    x: Any, channel_axis: int | None = None, channels: tuple[int, ...] | None = _CHANNELS
) -> np.ndarray:
    """``x`` as an ``H x W x C`` array; 2-D input gets ``C = 1``.

    ``channel_axis`` names the channel dimension of a 3-D input explicitly; without it the
    module's layout rule decides (see the module docstring). ``channels`` lists the allowed
    channel counts (``None``: any, e.g. for a hidden layer's attribution).
    """
    a = _drop_batch(to_numpy(x), 3)
    if a.ndim == 2:
        return a[:, :, None]
    if a.ndim != 3:
        raise ConvscopeError(
            f"expected one image of shape HxW, HxWxC or CxHxW, got shape {tuple(a.shape)}",
            "pass a single image (e.g. x[0] for a batch)",
        )
    if channel_axis is None:
        first, last = a.shape[0], a.shape[-1]
        if first in (1, 3) and last not in (1, 3):
            channel_axis = 0
        elif last in _CHANNELS:
            channel_axis = -1
        else:
            raise ConvscopeError(
                f"cannot tell the channel dimension of shape {tuple(a.shape)}",
                "pass channel_axis=0 for CxHxW or channel_axis=-1 for HxWxC",
            )
    if not -3 <= channel_axis <= 2:
        raise ConvscopeError(
            f"channel_axis={channel_axis} is out of range for a 3-D array",
            "use 0 (CxHxW) or -1 (HxWxC)",
        )
    a = np.moveaxis(a, channel_axis, -1)
    if channels is not None and a.shape[-1] not in channels:
        raise ConvscopeError(
            f"image has {a.shape[-1]} channels (shape {tuple(a.shape)} with channels last)",
            f"use an image with {' or '.join(map(str, channels))} channels, or reduce the "
            "channels first (convscope.render.reduce_channels)",
        )
    return a


def to_unit_float(a: np.ndarray) -> np.ndarray:
    """Pixel values as float64 in ``[0, 1]``: ``uint8 / 255``; floats are checked, not scaled.

    Floats may stray from ``[0, 1]`` by at most 1e-6 (then clipped); larger excursions raise,
    because silently clipping a normalised (mean/std) image would show a wrong picture.
    """
    if a.dtype == np.bool_:
        return a.astype(np.float64)
    if np.issubdtype(a.dtype, np.integer):
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ConvscopeError(
                f"integer image values span [{a.min()}, {a.max()}], outside [0, 255]",
                "pass uint8 values in [0, 255] or floats in [0, 1]",
            )
        return a.astype(np.float64) / 255.0
    if not np.issubdtype(a.dtype, np.floating):
        raise ConvscopeError(f"unsupported image dtype {a.dtype}", "pass uint8 or float pixels")
    f = a.astype(np.float64)
    if not np.all(np.isfinite(f)):
        raise ConvscopeError("image contains NaN or infinite values", "check the computation")
    if f.size and (f.min() < -1e-6 or f.max() > 1 + 1e-6):
        raise ConvscopeError(
            f"float image values span [{f.min():.4g}, {f.max():.4g}], outside [0, 1]",
            "undo the dataset normalisation (x * std + mean) or rescale with "
            "convscope.render.normalize(x, mode='minmax')",
        )
    return np.clip(f, 0.0, 1.0)


def to_uint8(a: np.ndarray) -> np.ndarray:
    """8-bit pixels: ``uint8`` passes through, other values become ``round(255 * x)``."""
    if a.dtype == np.uint8:
        return a
    return np.rint(to_unit_float(a) * 255.0).astype(np.uint8)


def to_image_uint8(x: Any, channel_axis: int | None = None) -> np.ndarray:
    """``x`` as ``H x W x C`` uint8 with ``C`` in 1, 3, 4 (alpha kept, gray not expanded)."""
    return np.ascontiguousarray(to_uint8(channels_last(x, channel_axis)))


def to_rgb_uint8(x: Any, channel_axis: int | None = None) -> np.ndarray:
    """``x`` as an ``H x W x 3`` uint8 RGB image: gray is repeated, an alpha channel dropped.

    Example: ``to_rgb_uint8(np.full((2, 2), 0.5))`` is a 2x2x3 array of 128s.
    """
    a = to_image_uint8(x, channel_axis)
    if a.shape[-1] == 1:
        return np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a[:, :, :3])


def _axis_taps(n_in: int, n_out: int, method: Interpolation) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights, each ``(n_out, taps)``, for resampling one axis.

    Output sample ``i`` sits at source coordinate ``c = (i + 0.5) * s - 0.5`` with
    ``s = n_in / n_out`` (pixel centres aligned, like PIL and ``align_corners=False``).
    ``nearest`` takes pixel ``floor((i + 0.5) * s)``. ``bilinear`` weighs source pixel ``j``
    by the triangle ``max(0, 1 - |j - c| / w)`` with ``w = max(s, 1)`` (so shrinking
    averages, i.e. is anti-aliased), over pixels inside the image, renormalised to sum 1.
    Only the pixels with ``|j - c| < w`` are listed (taps outside the image get weight 0).
    """
    scale = n_in / n_out
    if method == "nearest":
        idx = np.minimum(np.floor((np.arange(n_out) + 0.5) * scale).astype(np.intp), n_in - 1)
        return idx[:, None], np.ones((n_out, 1))
    centre = (np.arange(n_out) + 0.5) * scale - 0.5
    width = max(scale, 1.0)
    first = np.floor(centre - width).astype(np.intp) + 1  # leftmost j with j > c - w
    idx = first[:, None] + np.arange(int(np.ceil(2 * width)) + 1)[None, :]
    weight = np.maximum(0.0, 1.0 - np.abs(idx - centre[:, None]) / width)
    weight[(idx < 0) | (idx >= n_in)] = 0.0
    weight /= weight.sum(axis=1, keepdims=True)
    return np.clip(idx, 0, n_in - 1), weight


def resize(x: Any, size: tuple[int, int], method: Interpolation = "bilinear") -> np.ndarray:
    """Resample a 2-D ``H x W`` or ``H x W x C`` array to ``size = (height, width)``.

    Separable, rows then columns, with the taps of :func:`_axis_taps`:
    ``out[i] = sum_k weight[i, k] * x[idx[i, k]]``. Upscaling ``[0, 1]`` by 2 with
    ``bilinear`` gives ``[0, 0.25, 0.75, 1]``; ``nearest`` repeats pixels. uint8 input gives
    uint8 (rounded), float input float64. Example: ``resize(heat, (224, 224))``.
    """
    method = _check_method(method)
    a = to_numpy(x)
    if a.ndim not in (2, 3):
        raise ConvscopeError(
            f"resize expects HxW or HxWxC, got shape {tuple(a.shape)}", "pass one image"
        )
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ConvscopeError(f"resize target size {size} is empty", "pass a positive (h, w)")
    out = a.astype(np.float64)
    if a.shape[:2] == (height, width):
        return a.copy() if a.dtype == np.uint8 else out
    for axis, n_out in ((0, height), (1, width)):
        idx, weight = _axis_taps(out.shape[axis], n_out, method)
        shape = [1] * out.ndim
        shape[axis] = n_out
        acc = np.zeros(out.shape[:axis] + (n_out,) + out.shape[axis + 1 :])
        for k in range(idx.shape[1]):  # a few gathers per axis: no BLAS, no big temporaries
            acc += np.take(out, idx[:, k], axis=axis) * weight[:, k].reshape(shape)
        out = acc
    if a.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out


def _check_method(method: str) -> Interpolation:
    if method not in ("bilinear", "nearest"):
        raise ConvscopeError(f"unknown interpolation {method!r}", "use 'bilinear' or 'nearest'")
    return cast(Interpolation, method)
