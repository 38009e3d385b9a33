"""First-principal-component projections of feature maps, for Eigen-CAM and ``eigen_smooth``.

Per sample, ``T [K, h, w]`` is read as ``h * w`` points in ``K`` dimensions and centred per channel,
``F = T - mean_ij T``; ``v`` is the first right singular vector of ``F`` (the direction of largest
variance) and the projection is ``F v = sum_k v_k F_k``, ``[1, h, w]``. The SVD fixes ``v`` only
up to sign, so each caller states which sign it keeps.

Example::

    v = principal_direction(acts)                   # [n, K]
    smooth = principal_projection(weighted, like=weighted.sum(1, keepdim=True))   # [n, 1, h, w]
"""

from __future__ import annotations

import torch
from torch import Tensor


def centred(t: Tensor) -> Tensor:
    """``t - mean over positions`` for ``t [n, K, h, w]``."""
    return t - t.mean((2, 3), keepdim=True)


def principal_direction(t: Tensor) -> Tensor:
    """The first right singular vector ``[n, K]`` of each sample's centred ``t [n, K, h, w]``
    (as ``[h * w, K]``), with the sign the SVD routine gives."""
    return _direction(centred(t))


def _direction(f: Tensor) -> Tensor:
    """:func:`principal_direction` of maps ``f`` that are centred already."""
    return torch.linalg.svd(f.flatten(2).transpose(1, 2), full_matrices=False).Vh[:, 0]


def principal_projection(t: Tensor, like: Tensor) -> Tensor:
    """``F v`` ``[n, 1, h, w]`` (see the module doc), its sign chosen per sample so that it does not
    anti-correlate with ``like [n, 1, h, w]``: ``sum_ij (F v)_ij (like_ij - mean like) >= 0``."""
    f = centred(t)
    projection = (_direction(f)[:, :, None, None] * f).sum(1, keepdim=True)
    agreement = (projection * centred(like)).sum((1, 2, 3), keepdim=True)
    return torch.where(agreement < 0, -projection, projection)
