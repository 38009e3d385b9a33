"""Guided Grad-CAM: the composition of two methods, guided backprop times the upsampled Grad-CAM.

``map = GuidedBackprop(x) * bilinear(GradCAM(x))`` (Selvaraju et al. 2017): fine-grained like
guided backprop, class-discriminative like Grad-CAM. The Grad-CAM factor keeps its ReLU; the
product is signed like guided backprop and shaped like the input (or, with ``wrt=layer``, like
that layer's output, the Grad-CAM map resized to its resolution; linear and trilinear on 1-D and
3-D networks). Captum resizes with
``interpolate_mode="nearest"`` by default; convscope always uses bilinear.

Example::

    maps = GuidedGradCAM(model, "layer4").attribute(x, 3)     # [N, 3, H, W]
"""

from __future__ import annotations

from typing import Any

from convscope.backends.protocol import Engine, Tensor
from convscope.backends.torch.batching import MaxBatch
from convscope.errors import ConvscopeError
from convscope.methods.base import Method, Rows
from convscope.methods.cam.gradient import GradCAM
from convscope.methods.gradient import GuidedBackprop
from convscope.methods.registry import register_method
from convscope.targets import Target


@register_method("guided_grad_cam", "Guided Grad-CAM: guided backprop times the upsampled Grad-CAM map")
class GuidedGradCAM(Method):
    """``GuidedBackprop(x) * bilinear(GradCAM(x))`` at one Grad-CAM ``layer`` (None: chosen, see
    :func:`~convscope.methods.cam.layer.default_layer`); ``last_layers`` names it after a call.
    ``eigen_smooth`` goes to the Grad-CAM factor.

    Example: ``GuidedGradCAM(model).attribute(x, targets=[3, 5])``.
    """

    options = frozenset({"layer", "eigen_smooth"})
    scores_input = True
    #: layers and ReLU rules inside the model: not on a TorchScript model (:mod:`convscope.formats`)
    frameworks = ("torch", "tf")

    def __init__(self, model: Any, layer: Any = None, *, eigen_smooth: bool = False,
                 max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        if layer is not None and not isinstance(layer, self.backend.layer_types):
            raise ConvscopeError(f"layer={layer!r} is not one layer name or module",
                                 "Guided Grad-CAM uses one layer, e.g. layer='layer4'.")
        self.guided = GuidedBackprop(model, max_batch=max_batch)
        self.grad_cam = GradCAM(model, layer, upsample=False, eigen_smooth=eigen_smooth, max_batch=max_batch)

    @property
    def last_layers(self) -> tuple[str, ...]:
        """The Grad-CAM layer of the latest call."""
        return self.grad_cam.last_layers

    def _prepare(self, x: Tensor, wrt: Any) -> None:
        self.grad_cam._prepare(x, None)

    def _layers(self) -> tuple[Any, ...]:
        return self.grad_cam._layers()

    def _rules(self) -> Any:
        return self.guided._rules()

    def _compute(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any) -> list[Tensor]:
        """Guided backprop (to the input, or to layer ``wrt``) times the resized Grad-CAM map."""
        ops = engine.ops
        guided = self.guided._compute(engine, x, rows, targets, wrt)
        if ops.rank(guided[0]) != ops.rank(x):
            raise ConvscopeError(f"wrt={wrt!r} has output shape {list(guided[0].shape)}, not a feature map",
                                 "Guided Grad-CAM resizes the Grad-CAM map to the attributed tensor: use the "
                                 "input (wrt=None) or a convolutional layer.")
        cams = self.grad_cam._compute(engine, x, rows, targets, wrt)
        return [g * ops.resize(c, ops.spatial_shape(g)) for g, c in zip(guided, cams)]
