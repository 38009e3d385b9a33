"""ReLUs whose backward pass is a :class:`~convscope.rules.BackwardRule`, via ``tf.custom_gradient``.

The forward pass is exactly the ReLU's. With upstream signal ``g`` and ``gate = f'(z)`` (1 where
the ReLU passes its input, else 0):

- :class:`~convscope.rules.Gradient`:   ``g * gate``            (the true gradient)
- :class:`~convscope.rules.DeconvReLU`: ``relu(g)``             (the gate is ignored)
- :class:`~convscope.rules.GuidedReLU`: ``relu(g) * gate``

For ``relu(z)`` the gate is ``[z > 0] == [relu(z) > 0]`` (TF's fused ``ReluGrad``); for a Keras
``ReLU(max_value=m, threshold=t)`` layer it is ``[t < z < m]``.

Example::

    y = rule_relu(z, GuidedReLU(), tf.nn.relu)     # y == relu(z); dz = relu(dy) * [z > 0]
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from convscope.errors import ConvscopeError
from convscope.rules import BackwardRule, DeconvReLU, Gradient, GuidedReLU

_SUPPORTED = (Gradient, DeconvReLU, GuidedReLU)


def check_rule(rule: BackwardRule) -> BackwardRule:
    """``rule`` if the Keras backend can apply it, else a clear error."""
    if type(rule) not in _SUPPORTED:
        raise ConvscopeError(f"the backward rule {rule!r} has no TensorFlow form",
                             "On Keras models use Gradient(), DeconvReLU() or GuidedReLU() from convscope.rules.")
    return rule


def _signal(rule: BackwardRule, grad: tf.Tensor) -> tf.Tensor:
    """``g`` for the true gradient, else ``relu(g)`` (``tf.maximum``: ``tf.nn.relu`` may be patched)."""
    return grad if isinstance(rule, Gradient) else tf.maximum(grad, tf.constant(0, grad.dtype))


def rule_relu(features: tf.Tensor, rule: BackwardRule, relu: Callable[..., tf.Tensor]) -> tf.Tensor:
    """``relu(features)`` whose backward pass applies ``rule`` (``relu`` is the unpatched ReLU)."""

    @tf.custom_gradient
    def forward(z: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
        y = relu(z)

        def backward(g: tf.Tensor) -> tf.Tensor:
            signal = _signal(rule, g)
            return signal if isinstance(rule, DeconvReLU) else tf.raw_ops.ReluGrad(gradients=signal, features=y)

        return y, backward

    return forward(features)


def rule_capped_relu(features: tf.Tensor, rule: BackwardRule, *, threshold: float = 0.0,
                     max_value: float | None = None) -> tf.Tensor:
    """Keras' ``ReLU(max_value, threshold)`` (``z`` where ``t < z``, capped at ``m``; else 0) with ``rule``."""

    @tf.custom_gradient
    def forward(z: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
        zero = tf.zeros_like(z)
        y = tf.where(z > threshold, z, zero)
        gate = z > threshold
        if max_value is not None:
            y = tf.minimum(y, tf.cast(max_value, z.dtype))
            gate = tf.logical_and(gate, z < max_value)

        def backward(g: tf.Tensor) -> tf.Tensor:
            signal = _signal(rule, g)
            return signal if isinstance(rule, DeconvReLU) else tf.where(gate, signal, tf.zeros_like(signal))

        return y, backward

    return forward(features)
