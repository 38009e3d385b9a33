"""First-principal-component projections of feature maps, for Eigen-CAM and ``eigen_smooth``.

Written once for both backends (``ops``: :class:`~convscope.backends.protocol.Ops`). Per sample, ``T [K, h, w]`` is read as ``h * w`` points in ``K`` dimensions and centred per channel,
``F = T - mean_ij T``; ``v`` is the first right singular vector of ``F`` (the direction of largest
variance) and the projection is ``F v = sum_k v_k F_k``, ``[1, h, w]``. The SVD fixes ``v`` only
up to sign, so each caller states which sign it keeps.

Example::

    v = principal_direction(ops, acts)                   # [n, K]
    smooth = principal_projection(ops, weighted, like=plain)   # [n, 1, h, w] (Keras: [n, h, w, 1])
"""

from __future__ import annotations

from convscope.backends.protocol import Ops, Tensor


def centred(ops: Ops, t: Tensor) -> Tensor:
    """``t - mean over positions`` for a batch of feature maps ``t``."""
    return t - ops.mean(t, ops.space(t), keepdims=True)


def principal_direction(ops: Ops, t: Tensor) -> Tensor:
    """The first right singular vector ``[n, K]`` of each sample's centred ``t`` (as ``[positions, K]``),
    with the sign the SVD routine gives."""
    return ops.principal_direction(centred(ops, t))


def principal_projection(ops: Ops, t: Tensor, like: Tensor) -> Tensor:
    """``F v`` (one channel), its sign chosen per sample so that it does not anti-correlate with
    ``like`` (one channel): ``sum_ij (F v)_ij (like_ij - mean like) >= 0``."""
    f = centred(ops, t)
    projection = ops.sum(ops.per_channel(ops.principal_direction(f), f) * f, ops.channel_axis, keepdims=True)
    agreement = ops.sum(projection * centred(ops, like), tuple(range(1, ops.rank(f))), keepdims=True)
    return ops.where(agreement < 0, -projection, projection)
