"""Guided Grad-CAM on Keras models: guided backprop times the bilinearly resized Grad-CAM map
(as :mod:`convscope.methods.cam.guided`), NHWC: the ``[N, h, w, 1]`` map broadcasts over channels.

Example::

    maps = GuidedGradCAM(keras_model, "block5_conv3").attribute(x_nhwc, 3)     # like x_nhwc
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from convscope.backends.tf.cam import KerasGradCAM, resize
from convscope.backends.tf.gradient import KerasGuidedBackprop
from convscope.backends.tf.method import KerasMethod, Wrt, implements
from convscope.backends.tf.targets import Scorer
from convscope.errors import ConvscopeError
from convscope.methods.batching import MaxBatch
from convscope.methods.cam import GuidedGradCAM
from convscope.targets import TargetLike


@implements(GuidedGradCAM)
class KerasGuidedGradCAM(KerasMethod):
    """``GuidedBackprop(x) * bilinear(GradCAM(x))`` at one Grad-CAM ``layer`` (None: chosen);
    ``last_layers`` names it after a call."""

    def __init__(self, model: keras.Model, layer: str | keras.Layer | None = None, *, eigen_smooth: bool = False,
                 max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        if layer is not None and not isinstance(layer, (str, keras.Layer)):
            raise ConvscopeError(f"layer={layer!r} is not one layer name or layer",
                                 "Guided Grad-CAM uses one layer, e.g. layer='block5_conv3'.")
        self.guided = KerasGuidedBackprop(model, max_batch=max_batch)
        self.grad_cam = KerasGradCAM(model, layer, upsample=False, eigen_smooth=eigen_smooth, max_batch=max_batch)

    @property
    def last_layers(self) -> tuple[str, ...]:
        """The Grad-CAM layer of the latest call."""
        return self.grad_cam.last_layers

    def attribute(self, x: Any, target: TargetLike | None = None, wrt: Wrt = None, *,
                  targets: Sequence[TargetLike] | None = None) -> tf.Tensor | list[tf.Tensor]:
        """Guided backprop (to the input, or to layer ``wrt``) times the resized Grad-CAM map."""
        many = targets is not None
        guided = self.guided.attribute(x, target, wrt, targets=targets)
        cams = self.grad_cam.attribute(x, target, targets=targets)
        guided, cams = (guided, cams) if many else ([guided], [cams])
        if guided[0].shape.rank != 4:
            raise ConvscopeError(f"wrt={wrt!r} has output shape {guided[0].shape.as_list()}, not a feature map",
                                 "Guided Grad-CAM resizes the Grad-CAM map to the attributed tensor: use the "
                                 "input (wrt=None) or a convolutional layer.")
        maps = [g * resize(c, g.shape[1:3]) for g, c in zip(guided, cams)]
        return maps if many else maps[0]

    def _compute(self, x: tf.Tensor, rows: tf.Tensor, scorers: list[Scorer], wrt: str | None) -> list[tf.Tensor]:
        raise NotImplementedError("GuidedGradCAM.attribute composes GuidedBackprop and GradCAM")
