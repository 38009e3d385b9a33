"""Augmentation smoothing on Keras models (formulas and options as in :mod:`convscope.methods.augment`):
the wrapped Keras method's maps averaged over mirrored and rescaled NHWC inputs.

Example::

    AugSmooth(GradCAM(keras_model, "block5_conv3")).attribute(x_nhwc, 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from convscope.backends.tf.method import (
    KerasMethod,
    as_input,
    implements,
    keras_wrapped,
)
from convscope.errors import ConvscopeError
from convscope.methods.augment import AugmentedMean, AugSmooth
from convscope.methods.cam import GradCAM


@implements(AugSmooth)
class KerasAugSmooth(AugmentedMean, KerasMethod):
    """:class:`~convscope.methods.AugSmooth` for a Keras method: NHWC inputs and maps, mirrored on
    the width axis (axis 2)."""

    def __init__(self, method: Any, *, use: type = GradCAM, flips: bool = True,
                 factors: Sequence[float] = (0.9, 1.0, 1.1), normalise: bool = False) -> None:
        method = keras_wrapped(method, use, "GradCAM", "AugSmooth(GradCAM(model))")
        super().__init__(method.model, max_batch=method.max_batch)
        self._configure(method, flips, factors, normalise)

    def images(self, x: Any) -> tf.Tensor:
        x = as_input(x)
        if x.shape.rank != 4:
            raise ConvscopeError(f"AugSmooth mirrors images, so it needs inputs [N, H, W, C], got shape "
                                 f"{x.shape.as_list()}", "Pass an image batch.")
        return x

    def mirror(self, t: tf.Tensor) -> tf.Tensor:
        return tf.reverse(t, axis=[2])

    def plane(self, t: tf.Tensor) -> tuple[int, ...]:
        return tuple(t.shape[1:3])

    def unit_range(self, maps: tf.Tensor) -> tf.Tensor:
        low = tf.reduce_min(maps, (1, 2), keepdims=True)
        span = tf.reduce_max(maps, (1, 2), keepdims=True) - low
        return tf.where(span > 0, (maps - low) / tf.where(span > 0, span, tf.ones_like(span)), tf.zeros_like(maps))
