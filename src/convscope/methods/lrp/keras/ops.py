"""The LRP rules' tensor operations (:class:`~convscope.methods.lrp.ops.RuleOps`) in TensorFlow.

The transposed products come from a ``tf.GradientTape`` around the layer's own function, so any
linear Keras layer (convolutions, dense, pooling, a folded batch norm) gets its exact transpose.
They run inside the backward functions of :mod:`convscope.methods.lrp.keras.mode`.

Example::

    layer = Layer(lambda v, w, b: tf.matmul(v, w) + b, w, b, ops=TF)
    Epsilon().relevance(layer, x, r)        # the PyTorch formula, on tf tensors
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from convscope.methods.lrp.ops import Params, Products, RuleOps

__all__ = ["TF"]


class _TFOps:
    """:class:`~convscope.methods.lrp.ops.RuleOps` in TensorFlow."""

    def detach(self, t: tf.Tensor) -> tf.Tensor:
        return tf.stop_gradient(t)

    def pos(self, t: tf.Tensor) -> tf.Tensor:
        return tf.maximum(t, tf.constant(0, t.dtype))

    def neg(self, t: tf.Tensor) -> tf.Tensor:
        return tf.minimum(t, tf.constant(0, t.dtype))

    def ones_like(self, t: tf.Tensor) -> tf.Tensor:
        return tf.ones_like(t)

    def square(self, t: tf.Tensor) -> tf.Tensor:
        return tf.square(t)

    def stabilize(self, z: tf.Tensor, epsilon: float) -> tf.Tensor:
        return z + tf.where(z >= 0, tf.constant(epsilon, z.dtype), tf.constant(-epsilon, z.dtype))

    def cast(self, mask: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
        return tf.cast(mask, like.dtype)

    def bound(self, value: Any, like: tf.Tensor) -> tf.Tensor:  # noqa: ANN401
        if not tf.is_tensor(value):
            value = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
        return tf.broadcast_to(tf.cast(value, like.dtype), tf.shape(like))

    def products(self, fn: Callable[..., tf.Tensor], pairs: Sequence[tuple[tf.Tensor, Params]]) -> Products:
        leaves = [tf.stop_gradient(x) for x, _ in pairs]
        with tf.GradientTape(persistent=False) as tape:
            tape.watch(leaves)
            outs = [fn(leaf, *params) for leaf, (_, params) in zip(leaves, pairs)]

        def transposed(grads: Sequence[tf.Tensor]) -> list[tf.Tensor]:
            return tape.gradient(outs, leaves, output_gradients=list(grads),
                                 unconnected_gradients=tf.UnconnectedGradients.ZERO)

        return Products(outs, transposed)  # the tape recorded them, nothing else does


#: the TensorFlow operations (the Keras layers' :class:`~convscope.methods.lrp.rules.Layer` s carry them)
TF: RuleOps = _TFOps()
