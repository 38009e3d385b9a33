"""Backward rules on every ReLU spelling of Keras, scoped and exactly undone.

Oracle: hand-computed backward passes of a one-hidden-layer MLP ``s_k = W2[:, k] . f(x W1 + b1)``
in numpy: with ``z = x W1 + b1``, ``g = W2[:, k]`` and the ReLU's gate ``f'(z)``,

- Saliency:       ``dx = W1 (g * gate)``
- GuidedBackprop: ``dx = W1 (relu(g) * gate)``
- DeconvNet:      ``dx = W1 relu(g)``

The same MLP is written with each ReLU spelling Keras has; every one must give these maps.
After each call (also one that raises) every layer's attributes, the weights and ``tf.nn.relu``
are the very objects they were before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import keras  # noqa: E402

from convscope.backends.tf.model import keras_net  # noqa: E402
from convscope.backends.tf.rules import apply_rules  # noqa: E402
from convscope.errors import ConvscopeError  # noqa: E402
from convscope.methods import DeconvNet, GuidedBackprop, Saliency  # noqa: E402
from convscope.rules import BackwardRule, DeconvReLU, Gradient, GuidedReLU, RuleMap  # noqa: E402
from convscope.targets import Channel  # noqa: E402

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((4, 6)).astype(np.float32)
B1 = RNG.standard_normal(6).astype(np.float32) * 0.5
W2 = RNG.standard_normal((6, 3)).astype(np.float32)
X = RNG.standard_normal((5, 4)).astype(np.float32)


class TfRelu(keras.layers.Layer):
    def call(self, z: Any) -> Any:
        return tf.nn.relu(z)


class OpsRelu(keras.layers.Layer):
    def call(self, z: Any) -> Any:
        return keras.ops.relu(z)


class Subclassed(keras.Model):
    """The MLP as a subclassed model calling tf.nn.relu in its own call."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = keras.layers.Dense(6, name="hidden")
        self.out = keras.layers.Dense(3, use_bias=False, name="out")

    def call(self, x: Any) -> Any:
        return self.out(tf.nn.relu(self.hidden(x)))


def mlp(spelling: str) -> keras.Model:
    """The MLP with its ReLU written as ``spelling``; weights W1, B1, W2."""
    if spelling == "subclassed":
        model = Subclassed()
        model(X[:1])
    else:
        inputs = keras.Input((4,))
        fused = spelling == "fused"
        h = keras.layers.Dense(6, activation="relu" if fused else None, name="hidden")(inputs)
        relu = {"fused": None, "Activation": keras.layers.Activation("relu"), "ReLU": keras.layers.ReLU(),
                "Lambda": keras.layers.Lambda(keras.activations.relu), "tf.nn.relu": TfRelu(),
                "keras.ops.relu": OpsRelu(), "nested": None}[spelling]
        if spelling == "nested":
            inner_in = keras.Input((6,))
            inner = keras.Model(inner_in, keras.layers.ReLU(name="relu")(inner_in), name="block")
            h = inner(h)
        elif relu is not None:
            h = relu(h)
        model = keras.Model(inputs, keras.layers.Dense(3, use_bias=False, name="out")(h))
    model.get_layer("hidden").set_weights([W1, B1])
    model.get_layer("out").set_weights([W2])
    return model


def expected(rule: str, gate: np.ndarray, k: int = 1) -> np.ndarray:
    g = np.broadcast_to(W2[:, k], gate.shape)
    signal = {"saliency": g * gate, "guided": np.maximum(g, 0) * gate, "deconv": np.maximum(g, 0)}[rule]
    return signal @ W1.T


METHODS = {"saliency": Saliency, "guided": GuidedBackprop, "deconv": DeconvNet}
SPELLINGS = ["fused", "Activation", "ReLU", "Lambda", "tf.nn.relu", "keras.ops.relu", "nested", "subclassed"]


def snapshot(model: keras.Model) -> tuple[dict[int, dict[str, Any]], list[np.ndarray], Callable[..., Any]]:
    """Every layer's attributes, the weights and tf.nn.relu, after one plain call (Keras itself
    flips a model's ``_called`` flag on its first call)."""
    model(X[:1])
    layers = {id(layer): dict(vars(layer)) for layer in [model, *keras_net(model).paths().values()]}
    return layers, [w.copy() for w in model.get_weights()], tf.nn.relu


def assert_untouched(model: keras.Model, before: tuple[dict[int, dict[str, Any]], list[np.ndarray], Any]) -> None:
    layers, weights, relu = before
    after = {id(layer): vars(layer) for layer in [model, *keras_net(model).paths().values()]}
    assert after.keys() == layers.keys()
    for key, attrs in layers.items():
        assert after[key].keys() == attrs.keys()
        assert all(after[key][name] is value for name, value in attrs.items())
    for w, v in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(w, v)
    assert tf.nn.relu is relu


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_relu_spelling_gets_the_rule(spelling: str) -> None:
    model = mlp(spelling)
    before = snapshot(model)
    gate = (X @ W1 + B1 > 0).astype(np.float32)
    for rule, cls in METHODS.items():
        found = cls(model).attribute(X, 1)
        np.testing.assert_allclose(np.asarray(found), expected(rule, gate), rtol=1e-5, atol=1e-5)
    assert_untouched(model, before)
    # outside the methods the model back-propagates plain gradients again
    xt = tf.constant(X)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        score = tf.reduce_sum(model(xt)[:, 1])
    np.testing.assert_allclose(tape.gradient(score, xt).numpy(), expected("saliency", gate), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("options", "gate"), [
    ({"max_value": 0.8}, lambda z: (z > 0) & (z < 0.8)),
    ({"max_value": 6.0}, lambda z: (z > 0) & (z < 6.0)),  # Keras runs tf.nn.relu6 here
    ({"threshold": 0.3}, lambda z: z > 0.3),
])
def test_capped_and_thresholded_relu_layers_gate_where_they_pass(options: dict[str, float],
                                                                 gate: Callable[[np.ndarray], np.ndarray]) -> None:
    inputs = keras.Input((4,))
    h = keras.layers.ReLU(**options)(keras.layers.Dense(6, name="hidden")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, use_bias=False, name="out")(h))
    model.get_layer("hidden").set_weights([W1 * 3, B1])  # large pre-activations: the cap matters
    model.get_layer("out").set_weights([W2])
    z = X @ (W1 * 3) + B1
    g = gate(z).astype(np.float32)
    for rule, cls in METHODS.items():
        np.testing.assert_allclose(np.asarray(cls(model).attribute(X, 1)) / 3, expected(rule, g), rtol=1e-5, atol=1e-5)


def test_a_leaky_relu_is_not_a_relu() -> None:
    """ReLU(negative_slope=0.1, threshold=0.2) keeps its true gradient, internal relus included."""
    inputs = keras.Input((4,))
    h = keras.layers.ReLU(negative_slope=0.1, threshold=0.2)(keras.layers.Dense(6, name="hidden")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, use_bias=False, name="out")(h))
    model.get_layer("hidden").set_weights([W1, B1])
    model.get_layer("out").set_weights([W2])
    slope = np.where(X @ W1 + B1 > 0.2, 1.0, 0.1).astype(np.float32)
    want = (W2[:, 1] * slope) @ W1.T
    for cls in METHODS.values():
        np.testing.assert_allclose(np.asarray(cls(model).attribute(X, 1)), want, rtol=1e-5, atol=1e-5)
    with apply_rules(keras_net(model), RuleMap(GuidedReLU())) as scope:
        model(X)
    assert scope.calls == 0


def test_relu6_and_maximum_are_not_intercepted_but_every_relu_call_is_counted() -> None:
    inputs = keras.Input((4,))
    h = keras.layers.Dense(6, activation="relu")(inputs)
    h = keras.layers.Activation("relu6")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Dense(6, activation="relu")(h)
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    with apply_rules(keras_net(model), RuleMap(DeconvReLU())) as scope:
        model(X)
    assert scope.calls == 3


@pytest.mark.parametrize("nested", [False, True])
def test_per_layer_rules_apply_inside_that_layer_only(nested: bool) -> None:
    """Guided everywhere but the true gradient inside layer (or nested model) ``first``:
    x -> first: relu(x W1 + B1) -> second: relu(. w3) -> out: . W2."""
    w3 = RNG.standard_normal((6, 6)).astype(np.float32)
    inputs = keras.Input((4,))
    if nested:
        block_in = keras.Input((4,))
        first = keras.Model(block_in, keras.layers.ReLU()(keras.layers.Dense(6, name="dense")(block_in)), name="first")
        first.get_layer("dense").set_weights([W1, B1])
    else:
        first = keras.layers.Dense(6, activation="relu", name="first")
    h = keras.layers.Dense(6, activation="relu", use_bias=False, name="second")(first(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, use_bias=False, name="out")(h))
    if not nested:
        first.set_weights([W1, B1])
    model.get_layer("second").set_weights([w3])
    model.get_layer("out").set_weights([W2])
    z1 = X @ W1 + B1
    z2 = np.maximum(z1, 0) @ w3
    g1 = (np.maximum(W2[:, 1], 0) * (z2 > 0)) @ w3.T  # guided at the second ReLU
    want = (g1 * (z1 > 0)) @ W1.T  # the true gradient at the first
    found = GuidedBackprop(model, rules=RuleMap(GuidedReLU(), layers={"first": Gradient()})).attribute(X, 1)
    np.testing.assert_allclose(np.asarray(found), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConvscopeError, match="no layer named 'frist'.*'first'"):
        GuidedBackprop(model, rules=RuleMap(GuidedReLU(), layers={"frist": Gradient()})).attribute(X, 1)


class Exploding(keras.layers.Layer):
    """Raises in its call when armed (so inside the traced forward pass, after the patches)."""

    armed = False

    def call(self, z: Any) -> Any:
        if self.armed:
            raise RuntimeError("boom")
        return tf.nn.relu(z)


def test_every_patch_is_undone_when_the_forward_pass_raises() -> None:
    inputs = keras.Input((4,))
    exploding = Exploding(name="exploding")
    h = exploding(keras.layers.Dense(6, activation="relu", name="hidden")(inputs))
    model = keras.Model(inputs, keras.layers.ReLU(max_value=2.0)(keras.layers.Dense(3, name="out")(h)))
    before = snapshot(model)
    Exploding.armed = True
    try:
        with pytest.raises(ConvscopeError, match="(?s)forward pass failed.*boom"):
            GuidedBackprop(model, rules=RuleMap(GuidedReLU(), layers={"hidden": DeconvReLU()})).attribute(
                X, 0, wrt="hidden")
    finally:
        Exploding.armed = False
    assert_untouched(model, before)
    with pytest.raises(ConvscopeError, match="channel 9 is out of range"):  # raised while tracing
        DeconvNet(model).attribute(X, Channel("hidden", 9))
    assert_untouched(model, before)
    np.testing.assert_allclose(np.asarray(Saliency(model).attribute(X, 0)).shape, X.shape)


def test_rules_without_a_tensorflow_form_are_refused() -> None:
    class Halve(BackwardRule):
        def backward(self, grad: Any, output: Any) -> Any:
            return grad / 2

    with pytest.raises(ConvscopeError, match="no TensorFlow form"):
        GuidedBackprop(mlp("fused"), rules=Halve())
