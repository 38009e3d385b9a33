"""Apply backward rules to every ReLU spelling of a Keras model, for one (traced) forward pass.

Within :func:`apply_rules`:

- ``tf.nn.relu`` is replaced by a :func:`~convscope.backends.tf.relu.rule_relu` with the current
  rule. Keras reaches it from fused ``activation="relu"``, ``Activation("relu")``,
  ``keras.activations.relu``, ``keras.ops.relu`` and custom layers calling ``tf.nn.relu``;
- each ``keras.layers.ReLU`` layer's ``call`` applies the rule itself (``max_value`` and
  ``threshold`` included: gate ``[t < z < m]``); a leaky one (``negative_slope > 0``) is not a
  ReLU and keeps its true gradient, its internal ``relu`` calls included;
- each layer listed in the :class:`~convscope.rules.RuleMap` pushes its rule while it runs, so a
  ReLU gets the innermost listed layer's rule, else the default.

Not intercepted (a different function): ``tf.nn.relu6``, ``tf.maximum(z, 0)``, leaky ReLUs, and
a ``relu`` function a custom layer bound by name before the call (``from tensorflow.nn import relu``).
Every patch is undone on exit, also when the block raises. Call it inside the function a
``tf.function`` traces: the patches then exist only while tracing (``tf.nn.relu`` process-wide,
so another thread tracing Keras code at that very moment would see it too).

Example::

    with apply_rules(net, RuleMap(GuidedReLU())) as scope:
        out = net.call(x)           # every ReLU now back-propagates guided
    scope.calls                     # ReLU calls rewritten (tests use it)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import keras
import tensorflow as tf

from convscope.backends.tf.relu import check_rule, rule_capped_relu, rule_relu
from convscope.tf.scoped import patched
from convscope.rules import BackwardRule, Gradient, RuleMap



class Layers(Protocol):
    """What the rules need of a model (:class:`~convscope.backends.tf.model.KerasNet` has it)."""

    def layer(self, key: str) -> keras.Layer: ...
    def paths(self) -> dict[str, keras.Layer]: ...

Call = Callable[..., Any]


@dataclass
class RuleScope:
    """What :func:`apply_rules` did: ``calls`` counts the ReLU calls given a non-gradient rule."""

    calls: int = 0


def _pushing(inner: Call, stack: list[BackwardRule | None], rule: BackwardRule | None) -> Call:
    def call(*args: Any, **kwargs: Any) -> Any:
        stack.append(rule)
        try:
            return inner(*args, **kwargs)
        finally:
            stack.pop()

    return call


def _active(stack: list[BackwardRule | None]) -> BackwardRule | None:
    """The rule to apply now (None: the true gradient, so the ReLU is left alone)."""
    rule = stack[-1]
    return None if rule is None or isinstance(rule, Gradient) else rule


@contextmanager
def apply_rules(net: Layers, rules: RuleMap) -> Iterator[RuleScope]:
    """Within the block every ReLU the model runs back-propagates by ``rules``; undone on exit."""
    for rule in rules.rules():
        check_rule(rule)
    layers = [(net.layer(name), rule) for name, rule in rules.layers.items()]  # unknown names fail here
    stack: list[BackwardRule | None] = [rules.default]
    scope = RuleScope()
    relu = tf.nn.relu

    def ruled_relu(features: tf.Tensor, name: str | None = None) -> tf.Tensor:
        rule = _active(stack)
        if rule is None:
            return relu(features, name=name)
        scope.calls += 1
        return rule_relu(features, rule, relu)

    def relu_layer(layer: keras.layers.ReLU, inner: Call) -> Call:
        if layer.negative_slope != 0:
            return _pushing(inner, stack, None)  # leaky: not a ReLU
        plain = layer.max_value is None and layer.threshold == 0

        def call(inputs: tf.Tensor, *args: Any, **kwargs: Any) -> tf.Tensor:
            rule = _active(stack)
            if rule is None:
                return inner(inputs, *args, **kwargs)
            scope.calls += 1
            z = tf.convert_to_tensor(inputs)
            if plain:
                return rule_relu(z, rule, relu)
            return rule_capped_relu(z, rule, threshold=layer.threshold, max_value=layer.max_value)

        return call

    with ExitStack() as undo:
        for layer in net.paths().values():
            if isinstance(layer, keras.layers.ReLU):
                undo.enter_context(patched(layer, "call", relu_layer(layer, layer.call)))
        for layer, rule in layers:  # outside the ReLU wrappers: the rule is pushed before they read it
            undo.enter_context(patched(layer, "call", _pushing(layer.call, stack, rule)))
        undo.enter_context(patched(tf.nn, "relu", ruled_relu))
        yield scope
