"""Model outputs other than one tensor: a dict of batched tensors (torchvision's segmenters return
``{"out": [N, K, H, W], "aux": ...}``) or a list of one dict per sample (its detectors return
``[{"boxes": [D, 4], "labels": [D], "scores": [D]}, ...]``).

A *structured* output is kept as the model returned it: targets read it (a segmentation region, a
detection, or any callable ``f(output) -> Tensor[N]``). This module says how many samples one
holds, describes it for error messages and repeats one sample's output for a batch.

Example::

    batch_size({"out": torch.zeros(2, 21, 8, 8)})          # 2
    batch_size([{"boxes": torch.zeros(3, 4)}] * 5)         # 5
    describe([{"boxes": torch.zeros(3, 4)}])               # "a list of 1 dict (keys boxes)"
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from convscope.ops.nested import tensors_in


def is_per_sample(output: object) -> bool:
    """A list (or tuple) of one mapping per sample: a detector's output."""
    return isinstance(output, (list, tuple)) and bool(output) and all(isinstance(o, Mapping) for o in output)


def batch_size(output: object) -> int | None:
    """The samples ``output`` holds: a tensor's first dimension, a list of per-sample dicts' length,
    the common first dimension of a dict's tensors; None where it holds no batch."""
    if isinstance(output, Tensor):
        return int(output.shape[0]) if output.dim() else None
    if is_per_sample(output):
        return len(output)
    if isinstance(output, Mapping):
        sizes = {int(v.shape[0]) for v in output.values() if isinstance(v, Tensor) and v.dim()}
        if len(sizes) == 1 and all(isinstance(v, Tensor) for v in output.values()):
            return sizes.pop()
    return None


def describe(output: object) -> str:
    """A short description of ``output`` for an error message: a shape, or its structure."""
    if isinstance(output, Tensor):
        return str(list(output.shape))
    if is_per_sample(output):
        keys = ", ".join(map(str, output[0]))
        return f"a list of {len(output)} dict{'s' if len(output) > 1 else ''} (keys {keys})"
    if isinstance(output, Mapping):
        parts = ", ".join(f"{k!r}: {describe(v)}" for k, v in output.items())
        return f"a dict {{{parts}}}"
    return type(output).__name__


def like_rows(output: object, value: float) -> Tensor:
    """A tensor ``[N]`` filled with ``value`` on the device and in the float type of ``output``'s tensors."""
    first = next((t for t in tensors_in(output) if t.is_floating_point()), None)
    n = batch_size(output) or 0
    if first is None:
        return torch.full((n,), float(value))
    return torch.full((n,), float(value), dtype=first.dtype, device=first.device)


def repeat_rows(output: Any, n: int) -> Any:
    """The output of one sample (a batch of 1) as the output of ``n`` identical samples."""
    if isinstance(output, Tensor):
        return output.expand(n, *output.shape[1:])
    if is_per_sample(output):
        return [output[0]] * n
    if isinstance(output, Mapping):
        return {k: repeat_rows(v, n) for k, v in output.items()}
    return output


__all__ = ["batch_size", "describe", "is_per_sample", "like_rows", "repeat_rows"]
