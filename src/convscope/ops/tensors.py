"""The tensor operations of the backend protocol (:class:`convscope.backends.protocol.Ops`) in
PyTorch, channels-first: a batch is ``[N, C, *space]``. They live in the core, not in
``backends/torch``, because a :class:`~convscope.targets.Record` made outside an engine (tests,
the deconvnets, feature visualization) is a PyTorch record and scores with them.

Example::

    from convscope.ops import tensors as ops
    ops.mean(grads, ops.space(grads))           # [n, K] Grad-CAM weights
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


channel_axis = 1


def rank(t: Tensor) -> int:
    return t.dim()


def space(t: Tensor) -> tuple[int, ...]:
    return tuple(range(2, t.dim()))


def spatial_shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape[2:])


def per_channel(w: Tensor, like: Tensor) -> Tensor:
    return w.reshape(*w.shape[:2], *([1] * (like.dim() - 2)))


def per_row(v: Tensor, like: Tensor) -> Tensor:
    return v.to(like.device, like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def channel_maps(acts: Tensor, samples: Tensor, channels: Tensor) -> Tensor:
    return acts[samples, channels][:, None]


def mirror(t: Tensor) -> Tensor:
    return t.flip(-1)


def sum(t: Tensor, axes: Sequence[int] | int, keepdims: bool = False) -> Tensor:  # noqa: A001 - the op's name
    return t.sum(axes, keepdim=keepdims)


def mean(t: Tensor, axes: Sequence[int] | int, keepdims: bool = False) -> Tensor:
    return t.mean(axes, keepdim=keepdims)


def amax(t: Tensor, axes: Sequence[int] | int, keepdims: bool = False) -> Tensor:
    return t.amax(axes, keepdim=keepdims)


def amin(t: Tensor, axes: Sequence[int] | int, keepdims: bool = False) -> Tensor:
    return t.amin(axes, keepdim=keepdims)


def relu(t: Tensor) -> Tensor:
    return torch.relu(t)


def where(cond: Tensor, a: Tensor | float, b: Tensor | float) -> Tensor:
    return torch.where(cond, a, b)


def divide(num: Tensor, den: Tensor) -> Tensor:
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), torch.zeros_like(num))


def softmax(t: Tensor, axis: int) -> Tensor:
    return torch.softmax(t, dim=axis)


def zeros_like(t: Tensor) -> Tensor:
    return torch.zeros_like(t)


def zeros(shape: Sequence[int], like: Tensor) -> Tensor:
    return torch.zeros(tuple(shape), dtype=like.dtype, device=like.device)


def full(shape: Sequence[int], value: float, like: Tensor) -> Tensor:
    return torch.full(tuple(shape), float(value), dtype=like.dtype, device=like.device)


def cat(parts: Sequence[Tensor], axis: int = 0) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(list(parts), axis)


def stack(parts: Sequence[Tensor], axis: int = 0) -> Tensor:
    return torch.stack(list(parts), axis)


def take(t: Tensor, index: Tensor | slice) -> Tensor:
    return t[index] if isinstance(index, slice) else t[index.to(t.device)]


def channel(t: Tensor, c: int) -> Tensor:
    return t[:, c]


def flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def vector(t: Tensor) -> Tensor:
    return t.reshape(-1)


def fill_rows(like: Tensor, value: float) -> Tensor:
    return torch.full((like.shape[0],), float(value), dtype=like.dtype, device=like.device)


def is_tensor(value: object) -> bool:
    return isinstance(value, Tensor)


def _on_device(index: Tensor, device: torch.device) -> Tensor:
    """``index`` on ``device``; a host tensor goes to CUDA by a pinned, asynchronous copy (a copy
    from ordinary host memory waits for all the work queued on the device first)."""
    if device.type == "cuda" and index.device.type == "cpu":
        return index.pin_memory().to(device, non_blocking=True)
    return index.to(device)


def pick(t: Tensor, index: Tensor) -> Tensor:
    if index.dim() == 0:  # one column: a Python int (indexing with a host tensor would wait for the device)
        return t[:, int(index)]
    if index.dim() == 1 and index.device.type == "cpu" and len(index) and bool((index == index[0]).all()):
        return t[:, int(index[0])]  # one column for the whole chunk (SmoothGrad, IG): no copy to the device
    if index.dim() == 1:
        return t.gather(1, _on_device(index, t.device)[:, None])[:, 0]
    return t.gather(1, _on_device(index, t.device))


def top_k(t: Tensor, k: int) -> Tensor:
    if k == 1:
        return t.argmax(1, keepdim=True)  # the first maximum
    return torch.sort(t, dim=1, descending=True, stable=True).indices[:, :k]


def detach(t: Tensor) -> Tensor:
    return t.detach()


_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}  # by the number of spatial axes


def resize(maps: Tensor, size: Sequence[int], align_corners: bool = False) -> Tensor:
    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode=_INTERPOLATION[len(size)], align_corners=align_corners)


def principal_direction(t: Tensor) -> Tensor:
    return torch.linalg.svd(t.flatten(2).transpose(1, 2), full_matrices=False).Vh[:, 0]


def nonzero(mask: Tensor) -> tuple[Tensor, Tensor]:
    rows, cols = mask.nonzero(as_tuple=True)
    return rows, cols


def scatter(t: Tensor, rows: Tensor, cols: Tensor, values: Tensor) -> Tensor:
    out = t.clone()
    out[rows, cols] = values.to(out.dtype)
    return out


def index_add(total: Tensor, index: Tensor, part: Tensor) -> Tensor:
    return total.index_add_(0, index.to(total.device), part)


def abs(t: Tensor) -> Tensor:  # noqa: A001 - the op's name
    return t.abs()


def one_hot(index: Tensor, depth: int, like: Tensor) -> Tensor:
    return F.one_hot(index.to(like.device), depth).to(like.dtype)


def outer(channels: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    return channels[:, :, None, None] * rows[:, None, :, None] * cols[:, None, None, :]


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, min(math.ceil(3 * sigma), min(x.shape[2:]) - 1))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def convert(value: object, like: Tensor) -> Tensor | None:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    return value.to(like.device, like.dtype) if isinstance(value, Tensor) else None


def constant(a: np.ndarray, like: Tensor) -> Tensor:
    t = torch.as_tensor(a)
    return t.to(like.device, like.dtype) if t.is_floating_point() else t.to(like.device)


def numpy(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
