"""Seeded Gaussian draws made on the device that uses them.

``eps = randn(count, *shape)`` from ``torch.Generator(device).manual_seed(seed)``, in float32 and
then cast to the input's dtype: the same seed gives the same draws on the same kind of device,
and the global random state is untouched. Drawing on a GPU, not on the CPU and copying, matters:
50 noisy copies of a 224x224 image are 7.5 M draws, several times the cost of the GPU's
gradients. CPU and CUDA generators differ, so their draws (and the maps made from them) do too.

Example::

    eps = gaussian_draws(50, x.shape[1:], seed=0, like=x)  # [50, C, H, W] on x's device
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def gaussian_draws(count: int, shape: Sequence[int], seed: int, like: Tensor) -> Tensor:
    """``count`` standard normal tensors of ``shape`` on ``like``'s device, in ``like``'s dtype."""
    g = torch.Generator(device=like.device).manual_seed(seed)
    return torch.randn(count, *shape, generator=g, device=like.device).to(like.dtype)
