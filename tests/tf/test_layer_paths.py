"""One Keras layer naming (convscope.tf.paths) behind every Keras entry point.

The model nests all three kinds of holder: a functional model in a functional model, a
Sequential in it, and a custom (non-Model) layer with sublayers. Oracles: paths and layers
written out by hand and read with Keras' own ``get_layer`` / attributes; layer outputs computed
by calling the layers by hand under ``tf.GradientTape``; the rule-based ``DeconvNet`` for the
explicit mirror. Consistency: every entry point accepts the same names and gives the same error
text for a bad one.
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import keras  # noqa: E402

from convscope.backends.tf.model import keras_net  # noqa: E402
from convscope.errors import ConvscopeError  # noqa: E402
from convscope.methods import DeconvNet, Saliency  # noqa: E402
from convscope.targets import Channel  # noqa: E402
from convscope.tf import layer_gradient  # noqa: E402
from convscope.tf.deconv import reconstruct  # noqa: E402
from convscope.tf.layers import layer_names, layer_table, resolve_layer  # noqa: E402

L = keras.layers
RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 7, 7, 2)).astype(np.float32)


class Head(L.Layer):
    """A custom layer with sublayers: relu(squeeze(x)) * scale (its own weight)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.squeeze = L.Conv2D(3, 1, name="squeeze")
        self.act = L.ReLU(name="act")

    def build(self, shape: tuple[int, ...]) -> None:
        self.scale = self.add_weight(shape=(3,), initializer="ones", name="scale")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.act(self.squeeze(x)) * self.scale


def paths_net() -> keras.Model:
    """x -> stem -> trunk (functional: conv, relu) -> seq (Sequential: mix, act) -> head (custom:
    squeeze, act) -> gap -> logits. "act" is used twice; "conv" once."""
    keras.utils.set_random_seed(0)
    trunk_in = keras.Input((7, 7, 4))
    trunk = keras.Model(trunk_in, L.ReLU(name="relu")(L.Conv2D(4, 3, padding="same", name="conv")(trunk_in)),
                        name="trunk")
    seq = keras.Sequential([keras.Input((7, 7, 4)), L.Conv2D(5, 3, padding="same", name="mix"), L.ReLU(name="act")],
                           name="seq")
    inputs = keras.Input((7, 7, 2))
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="stem")(inputs)
    h = Head(name="head")(seq(trunk(h)))
    return keras.Model(inputs, L.Dense(3, name="logits")(L.GlobalAveragePooling2D(name="gap")(h)))


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return paths_net()


LISTED = ["stem", "trunk", "trunk/conv", "trunk/relu", "seq", "seq/mix", "seq/act", "head", "head/squeeze",
          "head/act", "gap", "logits"]


def by_hand(model: keras.Model) -> dict[str, keras.Layer]:
    trunk, seq, head = model.get_layer("trunk"), model.get_layer("seq"), model.get_layer("head")
    return {"stem": model.get_layer("stem"), "trunk": trunk, "trunk/conv": trunk.get_layer("conv"),
            "trunk/relu": trunk.get_layer("relu"), "seq": seq, "seq/mix": seq.get_layer("mix"),
            "seq/act": seq.get_layer("act"), "head": head, "head/squeeze": head.squeeze, "head/act": head.act,
            "gap": model.get_layer("gap"), "logits": model.get_layer("logits")}


def chain(model: keras.Model) -> list[tuple[str, keras.Layer]]:
    """The computation of paths_net spelled out layer by layer (path, layer), custom head opened up."""
    layers = by_hand(model)
    return [(p, layers[p]) for p in ("stem", "trunk/conv", "trunk/relu", "seq/mix", "seq/act", "head/squeeze",
                                     "head/act")]


def hand_gradient(model: keras.Model, path: str, channel: int) -> np.ndarray:
    """d sum(output of ``path``[..., channel]) / dx, calling the layers one by one."""
    x = tf.constant(X)
    with tf.GradientTape() as tape:
        tape.watch(x)
        h = x
        for name, layer in chain(model):
            h = layer(h)
            if name == path:
                break
        total = tf.reduce_sum(h[..., channel])
    return tape.gradient(total, x).numpy()


def test_every_layer_is_listed_by_path_in_definition_order(model: keras.Model) -> None:
    assert layer_names(model) == LISTED
    assert [row.name for row in layer_table(model)] == LISTED
    net = keras_net(model)
    layers = by_hand(model)
    for path in LISTED:
        assert resolve_layer(model, path) is layers[path] and net.layer(path) is layers[path]
        assert net.path(path) == path and net.path(layers[path]) == path


def test_table_shows_custom_sublayers_with_their_shapes_and_own_params(model: keras.Model) -> None:
    rows = {row.name: row for row in layer_table(model, X[:1])}
    x = tf.constant(X[:1])
    shapes = {}
    for name, layer in chain(model):
        x = layer(x)
        shapes[name] = tuple(x.shape)
    for path in ("head/squeeze", "head/act", "seq/mix", "trunk/conv"):
        assert rows[path].output_shape == shapes[path] and rows[path].calls == 1 and rows[path].depth == 2
    assert rows["head"].params == 3  # its scale only; squeeze's 5 * 3 + 3 are listed on squeeze
    assert rows["head/squeeze"].params == 5 * 3 + 3 and rows["trunk"].params == 0


def test_bare_names_used_once_resolve_everywhere(model: keras.Model) -> None:
    layers = by_hand(model)
    assert resolve_layer(model, "conv") is layers["trunk/conv"]
    assert resolve_layer(model, "squeeze") is layers["head/squeeze"]
    assert keras_net(model).path("mix") == "seq/mix"


@pytest.mark.parametrize("path", ["trunk/conv", "seq/mix", "trunk"])
def test_graph_layers_give_the_same_gradient_by_any_name(model: keras.Model, path: str) -> None:
    layer = by_hand(model)[path]
    expected = hand_gradient(model, "trunk/relu" if path == "trunk" else path, 1)
    for key in dict.fromkeys([path, path.rsplit("/", 1)[-1]]):
        np.testing.assert_allclose(layer_gradient(model, key, X, channel=1).numpy(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(Saliency(model).attribute(X, Channel(key, 1))), expected,
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer_gradient(model, layer, X, channel=1).numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(Saliency(model).attribute(X, Channel(layer, 1))), expected,
                               rtol=1e-5, atol=1e-6)  # a target may hold the layer object itself


def test_custom_sublayer_is_recorded_by_the_backend_and_refused_clearly_by_graph_rebuilders(
        model: keras.Model) -> None:
    expected = hand_gradient(model, "head/squeeze", 2)
    for key in ("head/squeeze", "squeeze"):
        np.testing.assert_allclose(np.asarray(Saliency(model).attribute(X, Channel(key, 2))), expected,
                                   rtol=1e-5, atol=1e-6)
        with pytest.raises(ConvscopeError, match="layer_gradient cannot reach layer 'head/squeeze': it is inside "
                                                 "'head', a custom Head layer.*Saliency"):
            layer_gradient(model, key, X, channel=2)
        with pytest.raises(ConvscopeError, match="deconvnet mirror cannot reach layer 'head/squeeze': it is "
                                                 "inside 'head', a custom Head layer.*DeconvNet"):
            reconstruct(model, X, Channel(key, 2))


def test_deconv_reconstruct_takes_the_same_names(model: keras.Model) -> None:
    expected = np.asarray(DeconvNet(model).attribute(X, Channel("trunk/conv", 3)))
    assert np.abs(expected).max() > 0
    for key in ("trunk/conv", "conv"):
        np.testing.assert_allclose(reconstruct(model, X, Channel(key, 3)).numpy(), expected, rtol=1e-4, atol=1e-5)


def entry_points(model: keras.Model, *, targets: bool = True) -> dict[str, object]:
    """Every Keras entry point that takes a layer; ``targets``: also those reached through a target
    (targets hold names: convscope.targets itself refuses other keys before any model is seen)."""
    points = {
        "resolve_layer": lambda key: resolve_layer(model, key),
        "backend path": lambda key: keras_net(model).path(key),
        "layer_gradient": lambda key: layer_gradient(model, key, X),
        "Saliency wrt": lambda key: Saliency(model).attribute(X, 0, wrt=key),
    }
    if targets:
        points["reconstruct"] = lambda key: reconstruct(model, X, Channel(key, 0))
        points["Saliency target"] = lambda key: Saliency(model).attribute(X, Channel(key, 0))
    return points


@pytest.mark.parametrize("key, match", [
    ("act", r"layer name 'act' is used in several nested models or layers\. Give the full path, one of: "
            + r"'seq/act', 'head/act'"),
    ("trunk/cnv", r"the model has no layer named 'trunk/cnv'\. Did you mean 'trunk/conv'.*convscope layers MODEL"),
    ("squeze", r"no layer named 'squeze'\. Did you mean .*'head/squeeze'"),
    (7, r"a Keras layer is given by its name or the layer itself, got int 7"),
])
def test_bad_names_give_the_same_error_everywhere(model: keras.Model, key: object, match: str) -> None:
    messages = {}
    for where, call in entry_points(model, targets=isinstance(key, str)).items():
        with pytest.raises(ConvscopeError, match=match) as error:
            call(key)
        messages[where] = str(error.value)
    assert len(set(messages.values())) == 1, messages


def test_a_layer_of_another_model_is_refused_everywhere(model: keras.Model) -> None:
    stranger = L.Dense(2, name="stem")
    for call in entry_points(model).values():
        with pytest.raises(ConvscopeError, match="layer 'stem' is not part of this model"):
            call(stranger)
