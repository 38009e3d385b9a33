"""The gradient-weighted CAMs: each writes only its weighting of the feature maps ``A``.

With ``G = dS/dA`` (the gradient of the target's score), sums and means over positions ``(i, j)``:

- :class:`CAM`:             ``w_k = sum_ij G_kij``; no ReLU (Zhou et al. 2016)
- :class:`GradCAM`:         ``w_k = mean_ij G_kij``; ReLU (Selvaraju et al. 2017)
- :class:`GradCAMPlusPlus`: ``w_k = sum_ij relu(G_kij) a_kij`` with
  ``a = G^2 / (2 G^2 + sum_ij(A_k) G^3 + eps)`` (0 where G or the denominator is 0); ReLU
  (Chattopadhyay et al. 2018)
- :class:`XGradCAM`:        ``w_k = sum_ij G_kij A_kij / sum_ij A_kij`` (0 where the sum is 0); ReLU
  (Fu et al. 2020)
- :class:`HiResCAM`:        elementwise ``w_kij = G_kij``; ReLU (Draelos & Carin 2020)
- :class:`LayerCAM`:        elementwise ``w_kij = relu(G_kij)``; ReLU (Jiang et al. 2021)

For a global-average-pool + linear head, ``S = sum_k W_ck mean_ij(A_k) + b_c``, so
``G_kij = W_ck / (h w)``: CAM's weights are exactly the head's weights ``W_ck`` and Grad-CAM is
CAM divided by ``h w``. For other heads CAM keeps the same formula (a gradient sum).

Example::

    maps = GradCAMPlusPlus(model, "layer4").attribute(x, targets=[3, 7])
"""

from __future__ import annotations

from typing import Any

from convscope.backends.protocol import Tensor
from convscope.backends.torch.batching import MaxBatch
from convscope.methods.cam.base import CAMMethod, LayerSpec, LayerStep, Tokens
from convscope.methods.registry import register_method


@register_method("cam", "class activation map: feature maps weighted by the head's weights (sum of gradients)")
class CAM(CAMMethod):
    """``sum_k w_k A_k`` with ``w_k = sum_ij dS/dA_kij``: the linear head's weights ``W_ck`` for a
    global-average-pool + linear head (Zhou et al. 2016). No ReLU by default: the raw CAM is signed.

    Example: ``CAM(model).attribute(x, 3)``.
    """

    default_relu = False

    def weights(self, acts: Tensor, grads: Tensor | None, step: LayerStep) -> Tensor:
        assert grads is not None
        return step.ops.sum(grads, step.ops.space(grads))


@register_method("grad_cam", "Grad-CAM: feature maps weighted by their mean gradient, then ReLU")
class GradCAM(CAMMethod):
    """``relu(sum_k w_k A_k)`` with ``w_k = mean_ij dS/dA_kij`` (Selvaraju et al. 2017).

    Example: ``GradCAM(model, "layer4").attribute(x, target=predicted)``.
    """

    def weights(self, acts: Tensor, grads: Tensor | None, step: LayerStep) -> Tensor:
        assert grads is not None
        return step.ops.mean(grads, step.ops.space(grads))


@register_method("grad_cam_plus_plus", "Grad-CAM++: positive gradients weighted by second-order alphas, then ReLU")
class GradCAMPlusPlus(CAMMethod):
    """``relu(sum_k w_k A_k)``, ``w_k = sum_ij relu(G) a`` with ``a = G^2 / (2 G^2 + sum_ij(A_k) G^3 + eps)``.

    ``eps=0`` (default) is the paper's formula (its reference code: ``a = 0`` where the denominator
    is 0); pytorch-grad-cam adds ``eps=1e-6``, which matters when gradients are small
    (``G^2 ~ 1e-6``). Example: ``GradCAMPlusPlus(model, eps=1e-6).attribute(x, 3)``.
    """

    def __init__(self, model: Any, layer: LayerSpec = None, *, upsample: bool = True, relu: bool | None = None,
                 eigen_smooth: bool = False, eps: float = 0.0, tokens: Tokens | None = None,
                 max_batch: MaxBatch = None) -> None:
        super().__init__(model, layer, upsample=upsample, relu=relu, eigen_smooth=eigen_smooth, tokens=tokens,
                         max_batch=max_batch)
        self.eps = float(eps)

    def _config(self) -> tuple[Any, ...]:
        return (self.eps,)

    def weights(self, acts: Tensor, grads: Tensor | None, step: LayerStep) -> Tensor:
        assert grads is not None
        ops, space = step.ops, step.ops.space(grads)
        g2 = grads * grads
        den = 2 * g2 + ops.sum(acts, space, keepdims=True) * g2 * grads + self.eps
        alpha = ops.where(grads != 0, ops.divide(g2, den), ops.zeros_like(g2))
        return ops.sum(ops.relu(grads) * alpha, space)


@register_method("x_grad_cam", "XGrad-CAM: gradients averaged with the activations as weights, then ReLU")
class XGradCAM(CAMMethod):
    """``relu(sum_k w_k A_k)`` with ``w_k = sum_ij G_kij A_kij / sum_ij A_kij`` (Fu et al. 2020).

    A channel whose activations sum to 0 gets ``w_k = 0`` (pytorch-grad-cam: ``/(sum + 1e-7)``).
    Example: ``XGradCAM(model).attribute(x, 3)``.
    """

    def weights(self, acts: Tensor, grads: Tensor | None, step: LayerStep) -> Tensor:
        assert grads is not None
        ops, space = step.ops, step.ops.space(grads)
        return ops.divide(ops.sum(grads * acts, space), ops.sum(acts, space))


@register_method("hires_cam", "HiResCAM: feature maps times their gradient, unit by unit, summed over channels")
class HiResCAM(CAMMethod):
    """``relu(sum_k G_k * A_k)``, elementwise (Draelos & Carin 2020). With ``relu=False`` the map
    sums to ``sum(A * dS/dA)``, which is ``S - b_c`` for a global-average-pool + linear head.

    Example: ``HiResCAM(model, relu=False).attribute(x, 3)``.
    """

    def weights(self, acts: Tensor, grads: Tensor | None, step: LayerStep) -> Tensor:
        assert grads is not None
        return grads


@register_method("layer_cam", "LayerCAM: feature maps times their positive gradient, unit by unit, then ReLU")
class LayerCAM(CAMMethod):
    """``relu(sum_k relu(G_k) * A_k)``, elementwise (Jiang et al. 2021); works on early layers too.

    Example: ``LayerCAM(model, ["layer2", "layer3"]).attribute(x, 3)``.
    """

    def weights(self, acts: Tensor, grads: Tensor | None, step: LayerStep) -> Tensor:
        assert grads is not None
        return step.ops.relu(grads)
