"""Gradient methods on Keras models: one compiled backward pass per target (formulas as in
:mod:`convscope.methods.gradient`), NHWC maps shaped like the input or like layer ``wrt``'s output.

- ``Saliency``: ``ds/da``;  ``InputXGradient``: ``a * ds/da``;
- ``DeconvNet`` / ``GuidedBackprop``: ``ds/da`` with the deconvnet / guided rule at every ReLU.

Example::

    maps = GuidedBackprop(keras_model).attribute(x_nhwc, target=MaxNeuron("block4_conv3", 7))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import keras
import tensorflow as tf

from convscope.backends.tf.method import KerasMethod, implements
from convscope.backends.tf.model import KerasNet
from convscope.backends.tf.relu import check_rule
from convscope.backends.tf.targets import Scorer, score_all
from convscope.methods.batching import MaxBatch
from convscope.methods.gradient import DeconvNet, GuidedBackprop, InputXGradient, Saliency
from convscope.rules import BackwardRule, DeconvReLU, Gradient, GuidedReLU, RuleMap, as_rule_map


def rules_key(rules: RuleMap | None) -> tuple[Any, ...]:
    """A hashable description of a rule map (None: plain gradients)."""
    return () if rules is None or rules.is_gradient else (rules.default, tuple(rules.layers.items()))


def gradient_fn(net: KerasNet, scorers: list[Scorer], wrt: str | None, rules: RuleMap | None,
                multiply: bool) -> Callable[..., list[tf.Tensor]]:
    """``f(x, rows, feeds)`` -> per target ``ds/da`` (times ``a`` when ``multiply``), ``a`` = input or layer ``wrt``."""
    layers = tuple(dict.fromkeys([*(layer for s in scorers for layer in s.layers), *([wrt] if wrt else [])]))

    def fn(x: tf.Tensor, rows: tf.Tensor, feeds: tuple[tf.Tensor, ...]) -> list[tf.Tensor]:
        with tf.GradientTape(persistent=len(scorers) > 1) as tape:
            tape.watch(x)
            record = net.run(x, layers, rules=rules)
            scores = [tf.reduce_sum(s) for s in score_all(scorers, record, rows, feeds)]
        base = x if wrt is None else record.acts[wrt]
        grads = [tape.gradient(s, base, unconnected_gradients=tf.UnconnectedGradients.ZERO) for s in scores]
        return [base * g if multiply else g for g in grads]

    return fn


class KerasGradientMethod(KerasMethod):
    """``combine(a, ds/da)`` with the ReLU rules of ``rules`` (default: the class's preset)."""

    default_rule: ClassVar[BackwardRule] = Gradient()
    multiply: ClassVar[bool] = False  # InputXGradient: a * ds/da

    def __init__(self, model: keras.Model, *, max_batch: MaxBatch = None,
                 rules: RuleMap | BackwardRule | None = None) -> None:
        super().__init__(model, max_batch=max_batch)
        self.rules = as_rule_map(rules, self.default_rule)
        for rule in self.rules.rules():
            check_rule(rule)

    def _compute(self, x: tf.Tensor, rows: tf.Tensor, scorers: list[Scorer], wrt: str | None) -> list[tf.Tensor]:
        net, rules, multiply = self.net, self.rules, self.multiply
        return self.compiled(("gradient", multiply, rules_key(rules), wrt),
                             lambda: gradient_fn(net, scorers, wrt, rules, multiply), scorers, x, rows)


@implements(Saliency)
class KerasSaliency(KerasGradientMethod):
    """``ds/da`` on a Keras model. Example: ``Saliency(keras_model).attribute(x, Channel("conv2", 5))``."""


@implements(InputXGradient)
class KerasInputXGradient(KerasGradientMethod):
    """``a * ds/da`` on a Keras model. Example: ``InputXGradient(keras_model).attribute(x, 3)``."""

    multiply = True


@implements(DeconvNet)
class KerasDeconvNet(KerasGradientMethod):
    """``ds/da`` with ``relu(g)`` at every ReLU. Example: ``DeconvNet(keras_model).attribute(x, 3)``."""

    default_rule = DeconvReLU()


@implements(GuidedBackprop)
class KerasGuidedBackprop(KerasGradientMethod):
    """``ds/da`` with ``relu(g) * [z > 0]`` at every ReLU. Example: ``GuidedBackprop(keras_model).attribute(x, 3)``."""

    default_rule = GuidedReLU()
