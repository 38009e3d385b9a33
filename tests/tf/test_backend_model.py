"""Keras models in convscope: dispatch, layer names (nested models too), targets read NHWC, input checks.

Oracles: layer outputs read with ``keras.Model(inputs, layer.output)`` (Keras itself) and the
seeds each target plants, computed by hand in numpy (``d score / d act`` through Saliency with
``wrt=layer``), plus linearity of the target algebra.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import keras  # noqa: E402

from convscope.backends.tf.model import keras_net  # noqa: E402
from convscope.errors import ConvscopeError  # noqa: E402
from convscope.methods import GradCAM, GradientSHAP, Method, Saliency, SmoothGrad  # noqa: E402
from convscope.targets import Channel, Class, Direction, MaxNeuron, Neuron  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.standard_normal((3, 8, 8, 2)).astype(np.float32)


def nested_net() -> keras.Model:
    """input -> conv "stem" -> nested model "block" (conv "conv", relu "relu") -> pool -> dense "logits"."""
    keras.utils.set_random_seed(0)
    block_in = keras.Input((8, 8, 4))
    block = keras.Model(block_in, keras.layers.ReLU(name="relu")(keras.layers.Conv2D(5, 3, padding="same",
                                                                                     name="conv")(block_in)),
                        name="block")
    inputs = keras.Input((8, 8, 2))
    h = block(keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stem")(inputs))
    h = keras.layers.Flatten(name="flat")(keras.layers.MaxPooling2D(2, name="pool")(h))
    return keras.Model(inputs, keras.layers.Dense(4, name="logits")(h))


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return nested_net()


def act(model: keras.Model, path: str, x: np.ndarray = X) -> np.ndarray:
    """A layer's output, read by Keras itself (for "block/conv": through the nested model)."""
    if path.startswith("block/"):
        stem = keras.Model(model.input, model.get_layer("stem").output)(x)
        block = model.get_layer("block")
        return np.asarray(keras.Model(block.input, block.get_layer(path.split("/")[1]).output)(stem))
    return np.asarray(keras.Model(model.input, model.get_layer(path).output)(x))


def seed(model: keras.Model, target: object, layer: str) -> np.ndarray:
    return np.asarray(Saliency(model).attribute(X, target, wrt=layer))


def test_the_same_classes_run_on_keras(model: keras.Model) -> None:
    method = Saliency(model)
    assert type(method) is Saliency and method.backend.name == "tf"
    assert isinstance(SmoothGrad(method, samples=2), SmoothGrad)

    class MySaliency(Saliency):  # a user's subclass runs on Keras too: the method is written once
        def combine(self, value, grad):  # noqa: ANN001, ANN202
            return 2 * grad

    np.testing.assert_allclose(np.asarray(MySaliency(model).attribute(X, 1)), 2 * np.asarray(method.attribute(X, 1)))

    class TorchOnly(Saliency):
        frameworks = ("torch",)

    with pytest.raises(ConvscopeError, match="TorchOnly runs on torch models only, not on a tf model"):
        TorchOnly(model)


def test_importing_convscope_methods_does_not_import_tensorflow() -> None:
    code = ("import sys, convscope, convscope.methods, convscope.backends.tf; convscope.Saliency; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_layers_are_found_by_path_or_by_a_name_used_once(model: keras.Model) -> None:
    net = keras_net(model)
    assert net.path("block/conv") == net.path("conv") == "block/conv"
    assert net.layer("conv") is model.get_layer("block").get_layer("conv")
    assert net.path(model.get_layer("stem")) == "stem"
    with pytest.raises(ConvscopeError, match="no layer named 'blok/conv'.*'block/conv'"):
        net.path("blok/conv")
    np.testing.assert_allclose(seed(model, Channel("conv", 1), "block/conv")[..., 1], 1.0)


def test_a_name_used_in_two_nested_models_must_be_given_in_full() -> None:
    inner = [keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, name="dense")], name=n) for n in ("a", "b")]
    inputs = keras.Input((3,))
    model = keras.Model(inputs, inner[1](inner[0](inputs)))
    with pytest.raises(ConvscopeError, match="used in several nested models.*'a/dense', 'b/dense'"):
        keras_net(model).path("dense")
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    grad = np.asarray(Saliency(model).attribute(x, Channel("a/dense", 2), wrt="a/dense"))
    np.testing.assert_array_equal(grad, np.eye(3, dtype=np.float32)[[2, 2]])


def test_channel_neuron_and_direction_seed_channels_last(model: keras.Model) -> None:
    a = act(model, "stem")
    ones = np.zeros_like(a)
    ones[..., 2] = 1
    np.testing.assert_allclose(seed(model, Channel("stem", 2), "stem"), ones)
    np.testing.assert_allclose(seed(model, Channel("stem", 2, reduce="mean"), "stem"), ones / 64)
    one = np.zeros_like(a)
    one[:, 3, 5, 1] = 1
    np.testing.assert_allclose(seed(model, Neuron("stem", 1, 3, 5), "stem"), one)
    v = np.array([0.5, -1.0, 2.0, 0.0], np.float32)
    np.testing.assert_allclose(seed(model, Direction("stem", v), "stem"), np.broadcast_to(v, a.shape))
    logits = np.asarray(Saliency(model).attribute(X, Neuron("logits", 3), wrt="logits"))
    np.testing.assert_array_equal(logits, np.eye(4, dtype=np.float32)[[3, 3, 3]])


def test_per_sample_classes_pick_each_samples_logit(model: keras.Model) -> None:
    found = np.asarray(Saliency(model, max_batch=2).attribute(X, [2, 0, 3], wrt="logits"))
    np.testing.assert_array_equal(found, np.eye(4, dtype=np.float32)[[2, 0, 3]])
    np.testing.assert_array_equal(np.asarray(Saliency(model).attribute(X, np.array([1, 1, 0]), wrt="logits")),
                                  np.eye(4, dtype=np.float32)[[1, 1, 0]])


@settings(max_examples=12, deadline=None)
@given(channel=st.integers(0, 4), rank=st.integers(0, 5), ties=st.booleans())
def test_max_neuron_seeds_the_ranked_unit_with_its_activation(channel: int, rank: int, ties: bool) -> None:
    """The seed of MaxNeuron is the activation at the rank-th strongest unit (ties: first in
    row-major order) and 0 elsewhere; the oracle is a stable numpy sort."""
    inputs = keras.Input((4, 4, 5))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Identity(name="id")(inputs))))
    x = RNG.integers(0, 3 if ties else 1000, (2, 4, 4, 5)).astype(np.float32)
    found = np.asarray(Saliency(model).attribute(x, MaxNeuron("id", channel, rank=rank), wrt="id"))
    want = np.zeros_like(x)
    for n in range(2):
        flat = x[n, :, :, channel].reshape(-1)
        pos = np.argsort(-flat, kind="stable")[rank]
        want[n, pos // 4, pos % 4, channel] = flat[pos]
    np.testing.assert_array_equal(found, want)


def test_target_algebra_is_linear(model: keras.Model) -> None:
    combined = Class(1) - 0.5 * Channel("block/relu", 3) + 2
    parts = Saliency(model).attribute(X, targets=[combined, 1, Channel("block/relu", 3)])
    np.testing.assert_allclose(np.asarray(parts[0]), np.asarray(parts[1]) - 0.5 * np.asarray(parts[2]),
                               rtol=1e-5, atol=1e-6)
    fn = np.asarray(Saliency(model).attribute(X, lambda out: out[:, 1] - out[:, 2]))
    two = Saliency(model).attribute(X, targets=[1, 2])
    np.testing.assert_allclose(fn, np.asarray(two[0]) - np.asarray(two[1]), rtol=1e-5, atol=1e-6)


def test_bad_inputs_and_targets_get_clear_errors(model: keras.Model) -> None:
    import torch

    cases = [
        (lambda: Saliency(model).attribute(X.astype(np.int32), 1), "dtype int32.*astype"),
        (lambda: Saliency(model).attribute(torch.zeros(1, 2, 8, 8), 1), "torch tensor.*Keras layout"),
        (lambda: Saliency(model).attribute(X[:0], 1), "holds no samples"),
        (lambda: Saliency(model).attribute(X, 7), "class index 7 is out of range for 4 classes"),
        (lambda: Saliency(model).attribute(X, [1, 2]), "2 per-sample indices for a batch of 3"),
        (lambda: Saliency(model).attribute(X, Channel("stem", 4)), "channel 4 is out of range.*4 channels"),
        (lambda: Saliency(model).attribute(X, Neuron("stem", 1, 9, 0)), r"position \(9, 0\) does not fit"),
        (lambda: Saliency(model).attribute(X, Channel("stm", 1)), "no layer named 'stm'.*'stem'"),
        (lambda: Saliency(model).attribute(X, 1, wrt="pol"), "no layer named 'pol'.*'pool'"),
        (lambda: Saliency(model).attribute(X[:, :4], 1), "forward pass failed.*NHWC"),
        (lambda: GradCAM(model, "logits").attribute(X, 1), "not a feature map"),
        (lambda: Saliency(model, max_batch=0), "max_batch=0"),
        (lambda: GradientSHAP(model, baselines=np.zeros((2, 8, 8, 3))).attribute(X, 1),
         r"baselines of shape \[2, 8, 8, 3\] are not a batch of samples like the input \[3, 8, 8, 2\]"),
    ]
    for call, message in cases:
        with pytest.raises(ConvscopeError, match=f"(?s){message}"):
            call()


def test_the_default_cam_layer_is_the_last_spatial_output_and_a_nested_model_wins(model: keras.Model) -> None:
    assert keras_net(model).default_layer(tf.constant(X)) == "pool"
    block_in = keras.Input((8, 8, 4))
    block = keras.Model(block_in, keras.layers.Conv2D(3, 3, padding="same", activation="relu")(block_in), name="block")
    trunk_in = keras.Input((8, 8, 2))
    trunk = keras.Model(trunk_in, block(keras.layers.Conv2D(4, 3, padding="same")(trunk_in)), name="trunk")
    inputs = keras.Input((8, 8, 2))
    outer = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(trunk(inputs))))
    cam = GradCAM(outer)
    assert cam.attribute(X, 0).shape == (3, 8, 8, 1)
    assert cam.last_layers == ("trunk",)


def test_results_do_not_depend_on_max_batch(model: keras.Model) -> None:
    ref = np.asarray(Saliency(model).attribute(X, [0, 1, 2]))
    for max_batch in (1, 2, "auto"):
        np.testing.assert_allclose(np.asarray(Saliency(model, max_batch=max_batch).attribute(X, [0, 1, 2])), ref,
                                   rtol=1e-6, atol=1e-7)


def test_compiled_functions_do_not_keep_the_model_alive() -> None:
    import gc
    import weakref

    from convscope.methods import IntegratedGradients, Occlusion, ScoreCAM

    def run_all() -> weakref.ref:
        model = nested_net()
        for method in (Saliency(model), GradCAM(model), ScoreCAM(model), SmoothGrad(model, samples=2),
                       IntegratedGradients(model, steps=2), Occlusion(model, window=4)):
            method.attribute(X[:1], 1)
        return weakref.ref(model)

    ref = run_all()
    gc.collect()
    assert ref() is None


def test_the_supported_methods_are_listed() -> None:
    from convscope.methods.registry import supported

    from convscope.methods import methods

    issue = {"saliency", "input_x_gradient", "deconvnet", "guided_backprop", "grad_cam", "grad_cam_plus_plus",
             "layer_cam", "score_cam", "integrated_gradients", "smooth_grad", "occlusion"}
    assert issue <= set(supported("tf")) <= set(methods())


def test_new_classes_and_batch_sizes_reuse_the_compiled_graphs(model: keras.Model) -> None:
    method = Saliency(model, max_batch=2)
    method.attribute(X, 0)  # chunks of 2 and 1 samples: one graph for both
    net = keras_net(model)
    traced = net.traces()
    method.attribute(X[:1], 3)
    Saliency(model).attribute(np.concatenate([X, X]), 2)
    assert net.traces() == traced


def test_auto_batches_halve_after_running_out_of_memory() -> None:
    from convscope.backends.tf.batching import AUTO_START, Batches

    def fn(rows: slice) -> range:
        if rows.stop - rows.start > 5:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return range(rows.start, rows.stop)

    done = list(Batches("auto").map(70, fn))
    assert [i for _, part in done for i in part] == list(range(70))
    assert {r.stop - r.start for r, _ in done[:-1]} == {AUTO_START // 8}
    with pytest.raises(tf.errors.ResourceExhaustedError):
        list(Batches(10).map(70, fn))


class Subclassed(keras.Model):
    """conv -> tf.nn.relu -> spatial mean -> dense, written as a subclassed model."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3, name="conv")
        self.fc = keras.layers.Dense(3, name="fc")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.fc(tf.reduce_mean(tf.nn.relu(self.conv(x)), (1, 2)))


def test_subclassed_and_unbuilt_sequential_models_work() -> None:
    keras.utils.set_random_seed(3)
    sub = Subclassed()
    sub(X[:1])
    cam = GradCAM(sub, upsample=False)
    found = np.asarray(cam.attribute(X, 2))
    assert cam.last_layers == ("conv",)
    # the spatial mean head: dS/dA = W_fc[:, 2] / (h w) * [A > 0], so Grad-CAM is relu(sum_k w_k A_k) by hand
    a = np.asarray(sub.conv(X))
    grads = (a > 0) * sub.fc.get_weights()[0][:, 2] / 36
    want = np.maximum((a * grads.mean((1, 2), keepdims=True)).sum(-1, keepdims=True), 0)
    np.testing.assert_allclose(found, want, rtol=1e-5, atol=1e-7)
    unbuilt = keras.Sequential([keras.layers.Conv2D(3, 3, name="c"), keras.layers.Flatten(), keras.layers.Dense(2)])
    assert Saliency(unbuilt).attribute(X, 1).shape == X.shape


def test_channels_first_layers_are_refused_not_misread() -> None:
    inputs = keras.Input((2, 8, 8))
    h = keras.layers.Conv2D(3, 3, data_format="channels_first", name="cf")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    x = RNG.standard_normal((1, 2, 8, 8)).astype(np.float32)
    for call in (lambda: Saliency(model).attribute(x, Channel("cf", 1)), lambda: GradCAM(model, "cf").attribute(x, 1)):
        with pytest.raises(ConvscopeError, match="'cf' is channels_first.*channels_last"):
            call()
