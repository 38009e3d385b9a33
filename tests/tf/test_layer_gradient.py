"""convscope.tf.layer_gradient: d(sum of a layer's output, or of one channel)/d(input) for Keras.

Oracles: hand-computed gradients of single Dense/Conv2D layers with fixed weights, and an eager
``tf.GradientTape`` over the layer objects called one by one. Tolerance against the eager tape:
rtol 1e-6 on float32, since graph and eager runs may order the same sums differently; the
hand-computed cases use small integer weights and are exact.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import keras  # noqa: E402

from convscope.errors import ConvscopeError  # noqa: E402
from convscope.tf import layer_gradient  # noqa: E402
from convscope.tf.gradients import _COMPILED  # noqa: E402

RNG = np.random.default_rng(0)


def eager_gradient(chain, x, channel=None, axis=-1):
    """The oracle: call ``chain``'s layers one by one under an eager tape."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = x
        for layer in chain:
            out = layer(out, training=False)
        total = tf.reduce_sum(out if channel is None else tf.gather(out, channel, axis=axis))
    return tape.gradient(total, x).numpy()


def small_cnn():
    """Functional: conv1 -> relu1 -> pool -> conv2 -> flat -> fc, and its layers in order."""
    keras.utils.set_random_seed(1)
    layers = [keras.layers.Conv2D(4, 3, name="conv1"), keras.layers.ReLU(name="relu1"),
              keras.layers.MaxPooling2D(2, name="pool"), keras.layers.Conv2D(3, 2, name="conv2"),
              keras.layers.Flatten(name="flat"), keras.layers.Dense(5, name="fc")]
    inputs = keras.Input((10, 10, 2))
    out = inputs
    for layer in layers:
        out = layer(out)
    return keras.Model(inputs, out), layers


def test_dense_gradient_is_the_row_sum_of_its_weights():
    inputs = keras.Input((3,))
    dense = keras.layers.Dense(2, name="dense")
    model = keras.Model(inputs, dense(inputs))
    weights = np.array([[1, 2], [3, 4], [5, 6]], np.float32)
    dense.set_weights([weights, np.array([0.5, -1.0], np.float32)])
    x = RNG.standard_normal((4, 3)).astype(np.float32)
    # d sum_k (x W + b)_k / dx_i = sum_k W_ik, the same for every sample
    np.testing.assert_array_equal(layer_gradient(model, "dense", x).numpy(), np.tile([[3, 7, 11]], (4, 1)))
    np.testing.assert_array_equal(layer_gradient(model, "dense", x, channel=1).numpy(), np.tile([[2, 4, 6]], (4, 1)))


def test_conv2d_gradient_hand_computed():
    inputs = keras.Input((3, 3, 1))
    conv = keras.layers.Conv2D(1, 2, use_bias=False, name="conv")
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.array([[1, 2], [3, 4]], np.float32).reshape(2, 2, 1, 1)])
    # each input pixel collects the kernel taps of the 2x2 output windows that cover it
    expected = np.array([[1, 3, 2], [4, 10, 6], [3, 7, 4]], np.float32)
    grads = layer_gradient(model, "conv", RNG.standard_normal((2, 3, 3, 1)).astype(np.float32)).numpy()
    np.testing.assert_array_equal(grads[..., 0], np.stack([expected, expected]))


def test_two_input_model_gives_one_gradient_per_input():
    a, b = keras.Input((2,)), keras.Input((3,))
    da, db = keras.layers.Dense(1, name="da"), keras.layers.Dense(1, name="db")
    model = keras.Model([a, b], keras.layers.Add(name="sum")([da(a), db(b)]))
    da.set_weights([np.array([[2], [3]], np.float32), np.zeros(1, np.float32)])
    db.set_weights([np.array([[1], [-1], [4]], np.float32), np.zeros(1, np.float32)])
    ga, gb = layer_gradient(model, "sum", [np.ones((2, 2), np.float32), np.ones((2, 3), np.float32)])
    np.testing.assert_array_equal(ga.numpy(), [[2, 3], [2, 3]])
    np.testing.assert_array_equal(gb.numpy(), [[1, -1, 4], [1, -1, 4]])


@pytest.mark.parametrize("name, channel", [("conv1", None), ("relu1", 2), ("pool", 0), ("conv2", 1), ("fc", 4)])
def test_functional_model_matches_eager_tape(name, channel):
    model, layers = small_cnn()
    x = RNG.standard_normal((3, 10, 10, 2)).astype(np.float32)
    chain = layers[: [layer.name for layer in layers].index(name) + 1]
    got = layer_gradient(model, name, x, channel=channel).numpy()
    np.testing.assert_allclose(got, eager_gradient(chain, x, channel), rtol=1e-6, atol=1e-6)
    assert got.shape == x.shape and np.abs(got).sum() > 0


def test_sequential_without_input_and_dropout_in_inference_mode():
    keras.utils.set_random_seed(2)
    conv, relu = keras.layers.Conv2D(3, 3, name="conv"), keras.layers.ReLU(name="relu")
    model = keras.Sequential([conv, keras.layers.Dropout(0.9), relu, keras.layers.GlobalAveragePooling2D()])
    model.build((None, 6, 6, 1))
    x = RNG.standard_normal((2, 6, 6, 1)).astype(np.float32)
    first = layer_gradient(model, "relu", x, channel=1).numpy()
    np.testing.assert_array_equal(layer_gradient(model, "relu", x, channel=1).numpy(), first)  # no dropout noise
    np.testing.assert_allclose(first, eager_gradient([conv, relu], x, channel=1), rtol=1e-6, atol=1e-6)


def test_nested_models_by_path_and_by_bare_name():
    keras.utils.set_random_seed(3)
    inner_in = keras.Input((6, 6, 1))
    inner_conv, inner_relu = keras.layers.Conv2D(2, 3, name="inner_conv"), keras.layers.ReLU(name="inner_relu")
    inner = keras.Model(inner_in, inner_relu(inner_conv(inner_in)), name="block")
    outer_in = keras.Input((6, 6, 1))
    scale = keras.layers.Rescaling(2.0, offset=1.0, name="scale")
    outer = keras.Model(outer_in, keras.layers.Flatten(name="flat")(inner(scale(outer_in))))
    x = RNG.standard_normal((2, 6, 6, 1)).astype(np.float32)
    expected = eager_gradient([scale, inner_conv], x, channel=1)
    np.testing.assert_allclose(layer_gradient(outer, "block/inner_conv", x, channel=1).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(layer_gradient(outer, "inner_conv", x, channel=1).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(layer_gradient(outer, "block", x).numpy(),
                               eager_gradient([scale, inner_conv, inner_relu], x), rtol=1e-6, atol=1e-6)


def test_channels_first_layer_selects_axis_1():
    inputs = keras.Input((2, 3, 3))
    model = keras.Model(inputs, keras.layers.ZeroPadding2D(1, data_format="channels_first", name="pad")(inputs))
    x = RNG.standard_normal((2, 2, 3, 3)).astype(np.float32)
    expected = np.zeros_like(x)
    expected[:, 1] = 1.0  # the padded copy of channel 1 depends on x[:, 1] only, with slope 1
    np.testing.assert_array_equal(layer_gradient(model, "pad", x, channel=1).numpy(), expected)


def test_unknown_layer_lists_close_names():
    model, _ = small_cnn()
    with pytest.raises(ConvscopeError, match=r"no layer named 'conv3'.*Did you mean .*'conv1'"):
        layer_gradient(model, "conv3", np.zeros((1, 10, 10, 2), np.float32))


def test_ambiguous_bare_name_lists_the_paths():
    def block(name):
        inputs = keras.Input((4,))
        return keras.Model(inputs, keras.layers.Dense(2, name="fc")(inputs), name=name)

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Add()([block("left")(inputs), block("right")(inputs)]))
    with pytest.raises(ConvscopeError, match="'left/fc', 'right/fc'"):
        layer_gradient(model, "fc", np.zeros((1, 4), np.float32))


@pytest.mark.parametrize("channel, match", [
    (5, "out of range.*has 5 channels"), (-1, "non-negative"), (1.5, "non-negative"), (True, "non-negative")])
def test_bad_channel(channel, match):
    model, _ = small_cnn()
    with pytest.raises(ConvscopeError, match=match):
        layer_gradient(model, "fc", np.zeros((1, 10, 10, 2), np.float32), channel=channel)


def test_unbuilt_sequential_is_an_error_and_is_not_built_for_you():
    model = keras.Sequential([keras.layers.Dense(2, name="fc")])
    with pytest.raises(ConvscopeError, match="not built"):
        layer_gradient(model, "fc", np.zeros((1, 3), np.float32))
    assert not model.built


def test_compiled_once_per_layer_and_channel_never_mutates_and_frees_the_model():
    model, layers = small_cnn()
    weights = [w.copy() for w in model.get_weights()]
    x = RNG.standard_normal((2, 10, 10, 2)).astype(np.float32)
    x_before = x.copy()
    layer_gradient(model, "conv2", x)
    layer_gradient(model, "conv2", x + 1)
    layer_gradient(model, "conv2", x, channel=0)
    compiled = _COMPILED[model]
    assert set(compiled) == {("conv2", None), ("conv2", 0)}
    assert compiled[("conv2", None)].experimental_get_tracing_count() == 1
    np.testing.assert_array_equal(x, x_before)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights))
    assert model.layers[1:] == layers and all(layer.trainable for layer in layers)

    ref = weakref.ref(model)
    del model, compiled, layers
    gc.collect()
    assert ref() is None  # the cache holds no strong reference to the model


def test_seed_recipe_tf_gradients_no_longer_works_eagerly():
    x = tf.ones((1, 3))
    with pytest.raises(RuntimeError, match="GradientTape"):
        tf.gradients(tf.reduce_sum(x * 2), x)
