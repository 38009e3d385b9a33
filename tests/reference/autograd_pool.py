"""The oracle for unpooling: autograd's gradient of PyTorch's own max-pool.

``autograd_unpool(x, values, *args)`` is ``torch.autograd.grad(F.max_poolNd(x, *args), x, values)``,
with ``args`` as ``F.max_poolNd`` takes them (kernel_size, stride, padding, dilation, ceil_mode).

Example::

    expected = autograd_unpool(x, values, 3, 2)  # what unpool(values, switches of 3x3 stride 2) must equal
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}  # by number of spatial axes


def autograd_unpool(x: torch.Tensor, values: torch.Tensor, *args: object) -> torch.Tensor:
    """The max-pool gradient with ``values`` upstream: what unpool must equal."""
    xr = x.detach().requires_grad_()
    (grad,) = torch.autograd.grad(POOL[x.dim() - 2](xr, *args), xr, values)
    return grad
