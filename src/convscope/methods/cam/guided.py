"""Guided Grad-CAM: the composition of two methods, guided backprop times the upsampled Grad-CAM.

``map = GuidedBackprop(x) * bilinear(GradCAM(x))`` (Selvaraju et al. 2017): fine-grained like
guided backprop, class-discriminative like Grad-CAM. The Grad-CAM factor keeps its ReLU; the
product is signed like guided backprop and shaped like the input (or, with ``wrt=layer``, like
that layer's output, the Grad-CAM map resized to its resolution). Captum resizes with
``interpolate_mode="nearest"`` by default; convscope always uses bilinear.

Example::

    maps = GuidedGradCAM(model, "layer4").attribute(x, 3)     # [N, 3, H, W]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

from torch import Tensor, nn

from convscope.backends.torch.probes import LayerKey
from convscope.backends.torch.session import Session
from convscope.errors import ConvscopeError
from convscope.methods.base import Method, Wrt
from convscope.methods.batching import MaxBatch
from convscope.methods.cam.base import upsample
from convscope.methods.cam.gradient import GradCAM
from convscope.methods.gradient import GuidedBackprop
from convscope.methods.registry import register_method
from convscope.targets import Target, TargetLike


@register_method("guided_grad_cam", "Guided Grad-CAM: guided backprop times the upsampled Grad-CAM map")
class GuidedGradCAM(Method):
    """``GuidedBackprop(x) * bilinear(GradCAM(x))`` at one Grad-CAM ``layer`` (None: chosen, see
    :func:`~convscope.methods.cam.layer.default_layer`); ``last_layers`` names it after a call.
    ``eigen_smooth`` goes to the Grad-CAM factor.

    Example: ``GuidedGradCAM(model).attribute(x, targets=[3, 5])``.
    """

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, *, eigen_smooth: bool = False,
                 max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        if layer is not None and not isinstance(layer, (str, nn.Module)):
            raise ConvscopeError(f"layer={layer!r} is not one layer name or module",
                                 "Guided Grad-CAM uses one layer, e.g. layer='layer4'.")
        self.guided = GuidedBackprop(model, max_batch=max_batch)
        self.grad_cam = GradCAM(model, layer, upsample=False, eigen_smooth=eigen_smooth, max_batch=max_batch)

    @property
    def last_layers(self) -> tuple[str, ...]:
        """The Grad-CAM layer of the latest call."""
        return self.grad_cam.last_layers

    @overload
    def attribute(self, x: Tensor, target: TargetLike, wrt: Wrt = None) -> Tensor: ...

    @overload
    def attribute(self, x: Tensor, target: None = None, wrt: Wrt = None, *,
                  targets: Sequence[TargetLike]) -> list[Tensor]: ...

    def attribute(self, x: Tensor, target: TargetLike | None = None, wrt: Wrt = None, *,
                  targets: Sequence[TargetLike] | None = None) -> Tensor | list[Tensor]:
        """Guided backprop (to the input, or to layer ``wrt``) times the resized Grad-CAM map."""
        many = targets is not None
        guided = self.guided.attribute(x, target, wrt, targets=targets)  # type: ignore[call-overload]
        cams = self.grad_cam.attribute(x, target, targets=targets)  # type: ignore[call-overload]
        guided, cams = (guided, cams) if many else ([guided], [cams])
        if guided[0].dim() != 4:
            raise ConvscopeError(f"wrt={wrt!r} has output shape {list(guided[0].shape)}, not a feature map",
                                 "Guided Grad-CAM resizes the Grad-CAM map to the attributed tensor: use the "
                                 "input (wrt=None) or a convolutional layer.")
        maps = [g * upsample(c, g.shape[-2:]) for g, c in zip(guided, cams)]
        return maps if many else maps[0]

    def _compute(self, session: Session, x: Tensor, rows: slice, targets: list[Target],
                 wrt: LayerKey | None) -> list[Tensor]:
        # unreachable: attribute composes two methods, each with its own session and rules
        raise NotImplementedError("GuidedGradCAM.attribute composes GuidedBackprop and GradCAM")
