"""Eigen-CAM: the feature maps projected on their first principal component (no gradients).

Per sample, with ``A`` reshaped to ``[positions, K]`` and centred per channel (``F = A - mean_ij A``),
``v`` is the first right singular vector of ``F`` and the map is ``relu(F v) = relu(sum_k v_k F_k)``
(Muhammad & Yeasin 2020; the centring follows pytorch-grad-cam). The SVD fixes ``v`` only up to
sign; convscope picks the sign with ``sum_k v_k >= 0`` (the direction in which the channels grow
together), so the map does not depend on the SVD routine. The target does not enter the map:
Eigen-CAM is class-agnostic (the target is still checked).

Example::

    maps = EigenCAM(model).attribute(x, 0)
"""

from __future__ import annotations

from convscope.backends.protocol import Ops, Tensor
from convscope.methods.cam.base import CAMMethod, LayerStep
from convscope.methods.cam.projection import centred, principal_direction
from convscope.methods.registry import register_method


@register_method("eigen_cam", "Eigen-CAM: feature maps projected on their first principal component (class-agnostic)")
class EigenCAM(CAMMethod):
    """``relu(sum_k v_k (A_k - mean A_k))`` with ``v`` the first principal direction, ``sum v >= 0``.

    Example: ``EigenCAM(model, "layer4").attribute(x, 0)``.
    """

    uses_gradients = False
    eigen_smooth_applies = False  # the map is the projection already (pytorch-grad-cam ignores the option too)

    def features(self, acts: Tensor, ops: Ops) -> Tensor:
        return centred(ops, acts)

    def weights(self, acts: Tensor, grads: Tensor | None, step: LayerStep) -> Tensor:
        ops = step.ops
        v = principal_direction(ops, acts)  # [n, K]
        return ops.where(ops.sum(v, 1, keepdims=True) < 0, -v, v)
