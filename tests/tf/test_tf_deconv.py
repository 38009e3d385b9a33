"""convscope.tf.deconv.reconstruct: the explicit Zeiler-Fergus deconvnet for Keras chains (NHWC).

Oracles:
- a naive re-implementation in this file (NumPy loops: every window's first maximum found by
  hand, every transposed convolution as explicit scatter-adds of kernel taps), on a small net
  with odd sizes, SAME/VALID padding, strides and overlapping pooling windows;
- the rule-based Keras ``DeconvNet`` (convscope.backends.tf: the deconvnet rule applied during
  backprop), which must agree wherever both apply;
- the PyTorch explicit deconvnet :func:`convscope.deconv.reconstruct` on the Keras model's torch
  twin (tests/tf/twin.py), after the NCHW -> NHWC transpose, to 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import keras  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from nets import TinyResidual, TinyVGG  # noqa: E402
from twin import keras_twin, to_nchw, to_nhwc  # noqa: E402

from convscope import deconv as torch_deconv  # noqa: E402
from convscope.errors import ConvscopeError  # noqa: E402
from convscope.methods import DeconvNet  # noqa: E402
from convscope.targets import Channel, Class, MaxNeuron, Neuron  # noqa: E402
from convscope.tf.deconv import reconstruct  # noqa: E402

L = keras.layers


def small_layers() -> list[keras.layers.Layer]:
    """11x11x2 -> 4 classes: fused relu, ReLU layer, Activation('relu'), SAME/VALID, strides, overlaps."""
    return [L.Conv2D(4, 3, padding="same", activation="relu", name="conv1"),
            L.MaxPooling2D(3, strides=2, padding="same", name="pool1"),     # 11 -> 6, overlapping windows
            L.Conv2D(5, 2, padding="valid", name="conv2"), L.ReLU(name="relu2"),  # 6 -> 5
            L.MaxPooling2D(2, strides=1, name="pool2"),                     # 5 -> 4, overlapping windows
            L.Conv2D(3, 3, strides=2, padding="same", name="conv3"), L.Activation("relu", name="act3"),  # 4 -> 2
            L.Flatten(name="flat"), L.Dense(6, activation="relu", name="fc1"), L.Dense(4, name="fc2")]


def small_sequential(seed: int = 0) -> keras.Sequential:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((11, 11, 2)), *small_layers()])
    for layer in model.layers:  # non-zero biases, so a mirror that kept them would differ
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(np.random.default_rng(seed).uniform(-0.3, 0.3, layer.bias.shape).astype("float32"))
    return model


# ---------------------------------------------------------------- the naive oracle (NumPy loops)

def same_pad(size: int, k: int, stride: int, out: int) -> int:
    """TF's SAME padding puts floor(total / 2) before."""
    return max((out - 1) * stride + k - size, 0) // 2


def naive_conv_transpose(s: np.ndarray, kernel: np.ndarray, stride: int, padding: str, in_hw: tuple) -> np.ndarray:
    n, ho, wo, _ = s.shape
    kh, kw, cin, _ = kernel.shape
    pt = same_pad(in_hw[0], kh, stride, ho) if padding == "same" else 0
    pl = same_pad(in_hw[1], kw, stride, wo) if padding == "same" else 0
    below = np.zeros((n, *in_hw, cin))
    for i in range(ho):
        for j in range(wo):
            for di in range(kh):
                for dj in range(kw):
                    y, x = i * stride - pt + di, j * stride - pl + dj
                    if 0 <= y < in_hw[0] and 0 <= x < in_hw[1]:
                        below[:, y, x, :] += s[:, i, j, :] @ kernel[di, dj].T
    return below


def naive_unpool(s: np.ndarray, inp: np.ndarray, k: int, stride: int, padding: str) -> np.ndarray:
    """Each window's first maximum (row-major, padding never wins) receives the window's signal."""
    n, h, w, c = inp.shape
    _, ho, wo, _ = s.shape
    pt = same_pad(h, k, stride, ho) if padding == "same" else 0
    pl = same_pad(w, k, stride, wo) if padding == "same" else 0
    below = np.zeros(inp.shape)
    for b in range(n):
        for ch in range(c):
            for i in range(ho):
                for j in range(wo):
                    cells = [(y, x) for y in range(i * stride - pt, i * stride - pt + k)
                             for x in range(j * stride - pl, j * stride - pl + k) if 0 <= y < h and 0 <= x < w]
                    best = cells[0]
                    for y, x in cells:
                        if inp[b, y, x, ch] > inp[b, best[0], best[1], ch]:
                            best = (y, x)
                    below[b, best[0], best[1], ch] += s[b, i, j, ch]
    return below


def naive_deconv(model: keras.Sequential, x: np.ndarray, seeds: dict[str, np.ndarray]) -> np.ndarray:
    """The top-down pass of small_sequential, written out layer by layer."""
    inputs, signal = {}, x
    for layer in model.layers:
        inputs[layer.name] = np.asarray(signal)
        signal = layer(signal)
    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    names = [layer.name for layer in model.layers]
    top = max(names.index(name) for name in seeds)
    s = np.zeros(np.asarray(model.layers[top](inputs[names[top]])).shape)
    for layer in model.layers[top::-1]:
        s = s + seeds.get(layer.name, 0)
        inp, name = inputs[layer.name], layer.name
        if name in ("fc1", "fc2"):
            s = (relu(s) if name == "fc1" else s) @ layer.kernel.numpy().T
        elif name == "flat":
            s = s.reshape(inp.shape)
        elif name in ("relu2", "act3"):
            s = relu(s)
        elif name == "pool1":
            s = naive_unpool(s, inp, 3, 2, "same")
        elif name == "pool2":
            s = naive_unpool(s, inp, 2, 1, "valid")
        else:  # conv1 (fused relu), conv2, conv3
            s = relu(s) if name == "conv1" else s
            stride = 2 if name == "conv3" else 1
            s = naive_conv_transpose(s, layer.kernel.numpy(), stride, layer.padding, inp.shape[1:3])
    return s


def layer_output(model: keras.Sequential, name: str, x: np.ndarray) -> np.ndarray:
    for layer in model.layers:
        x = layer(x)
        if layer.name == name:
            return np.asarray(x)
    raise KeyError(name)


def naive_seed(model: keras.Model, x: np.ndarray, kind: str) -> tuple[object, dict[str, np.ndarray]]:
    """A target and its seed d score / d activation, written out by hand."""
    if kind == "class":
        seed = np.zeros((len(x), 4))
        seed[:, 2] = 1.0
        return Class(2), {"fc2": seed}
    if kind == "max_neuron":  # the strongest unit of channel 1 keeps its value, all else 0
        act = layer_output(model, "pool2", x)
        seed = np.zeros_like(act)
        for b in range(len(x)):
            y, xx = np.unravel_index(np.argmax(act[b, :, :, 1]), act.shape[1:3])
            seed[b, y, xx, 1] = act[b, y, xx, 1]
        return MaxNeuron("pool2", 1), {"pool2": seed}
    if kind == "neuron":  # Neuron(layer, c, y, x) reads act[n, y, x, c]
        seed = np.zeros((len(x), 2, 2, 3))
        seed[:, 1, 0, 2] = 1.0
        return Neuron("act3", 2, 1, 0), {"act3": seed}
    seed = np.zeros((len(x), 5, 5, 5))  # Channel sum on the pre-ReLU conv2, minus half a logit
    seed[..., 3] = 1.0
    logit = np.zeros((len(x), 4))
    logit[:, 0] = -0.5
    return Channel("conv2", 3) - 0.5 * Class(0), {"conv2": seed, "fc2": logit}


@pytest.mark.parametrize("kind", ["class", "max_neuron", "neuron", "channel_minus_class"])
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_matches_naive_deconvnet(kind: str, seed: int) -> None:
    model = small_sequential(seed % 7)
    x = np.random.default_rng(seed).normal(size=(2, 11, 11, 2)).astype("float32")
    target, seeds = naive_seed(model, x, kind)
    got = np.asarray(reconstruct(model, x, target))
    want = naive_deconv(model, x, seeds)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(want).max()))


def test_functional_and_nested_models_equal_sequential() -> None:
    seq = small_sequential(1)
    x = np.random.default_rng(1).normal(size=(2, 11, 11, 2)).astype("float32")
    inp = keras.Input((11, 11, 2))
    out = inp
    for layer in seq.layers:
        out = layer(out)
    functional = keras.Model(inp, out)
    head = keras.Sequential(seq.layers[:5], name="block")  # conv1 .. pool2, nested
    inp2 = keras.Input((11, 11, 2))
    out2 = inp2
    for layer in [head, *seq.layers[5:]]:
        out2 = layer(out2)
    nested = keras.Model(inp2, out2)
    want = np.asarray(reconstruct(seq, x, MaxNeuron("act3", 0)))
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(np.asarray(reconstruct(functional, x, MaxNeuron("act3", 0))), want, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(reconstruct(nested, x, MaxNeuron("act3", 0))), want, rtol=1e-6)
    # inside the nested block: by path or by its unique bare name
    by_path = np.asarray(reconstruct(nested, x, Channel("block/pool2", 2)))
    np.testing.assert_allclose(np.asarray(reconstruct(seq, x, Channel("pool2", 2))), by_path, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(reconstruct(nested, x, Channel("pool2", 2))), by_path, rtol=1e-6)


@pytest.mark.parametrize("target", [Class(3), MaxNeuron("pool2", 4), Neuron("act3", 1, 0, 1),
                                    Channel("conv1", 2, "mean") - 0.5 * Class(0)])
def test_equals_rule_based_keras_deconvnet(target: object) -> None:
    model = small_sequential(4)
    x = np.random.default_rng(6).normal(size=(3, 11, 11, 2)).astype("float32")
    want = np.asarray(DeconvNet(model).attribute(x, target))
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(np.asarray(reconstruct(model, x, target)), want, rtol=1e-5,
                               atol=1e-6 * np.abs(want).max())


def test_linear_layers_equal_rule_based_keras_deconvnet() -> None:
    """Batch-norm, SAME average pooling (its divisor varies at the border), global max/avg pooling."""
    keras.utils.set_random_seed(5)
    bn = L.BatchNormalization(name="bn")
    model = keras.Sequential([keras.Input((9, 9, 2)), L.Conv2D(4, 3, padding="same", name="conv1"), bn,
                              L.ReLU(name="relu1"), L.AveragePooling2D(2, padding="same", name="avg"),  # 9 -> 5
                              L.Conv2D(5, 2, activation="relu", name="conv2"), L.GlobalMaxPooling2D(name="gmax"),
                              L.Dense(3, name="fc")])
    rng = np.random.default_rng(7)
    bn.set_weights([rng.uniform(0.5, 1.5, 4), rng.uniform(-0.2, 0.2, 4), rng.uniform(-0.2, 0.2, 4),
                    rng.uniform(0.5, 1.5, 4)])
    x = rng.normal(size=(2, 9, 9, 2)).astype("float32")
    for target in (Class(1), Channel("avg", 2), MaxNeuron("conv2", 3)):
        want = np.asarray(DeconvNet(model).attribute(x, target))
        np.testing.assert_allclose(np.asarray(reconstruct(model, x, target)), want, rtol=1e-5,
                                   atol=1e-6 * np.abs(want).max())
    gap = keras.Sequential([keras.Input((6, 6, 2)), L.Conv2D(3, 3, name="conv"), L.GlobalAveragePooling2D(name="gap")])
    x = rng.normal(size=(2, 6, 6, 2)).astype("float32")
    np.testing.assert_allclose(np.asarray(reconstruct(gap, x, Channel("gap", 1))),
                               np.asarray(DeconvNet(gap).attribute(x, Channel("gap", 1))), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- the torch twin

def translate(target: object, names: dict[str, str]) -> object:
    if isinstance(target, MaxNeuron):
        return MaxNeuron(names[target.layer], target.channel, target.rank)
    if isinstance(target, Neuron):
        return Neuron(names[target.layer], target.channel, *target.position)
    if isinstance(target, Channel):
        return Channel(names[target.layer], target.channel, target.reduce)
    return target


def assert_same_as_torch(model: torch.nn.Module, x: torch.Tensor, targets: list) -> None:
    kmodel, names = keras_twin(model, input_hw=tuple(x.shape[2:]))
    for target in targets:
        want = torch_deconv.reconstruct(model, x, target).detach()
        got = to_nchw(reconstruct(kmodel, to_nhwc(x), translate(target, names)))
        scale = float(want.abs().max())
        assert scale > 0, target
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * scale, msg=lambda m, t=target: f"{t}: {m}")


def test_equals_torch_deconv_on_twin_tiny_vgg() -> None:
    torch.manual_seed(0)
    model = TinyVGG().eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert_same_as_torch(model, x, [Class(1), MaxNeuron("features.4", 5), Neuron("features.3", 2, 3, 4),
                                    Channel("features.5", 7, "max"), Channel("classifier.2", 3)])


def test_equals_torch_deconv_on_twin_with_batchnorm_and_average_pools() -> None:
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(inplace=True),
        torch.nn.AvgPool2d(2), torch.nn.Conv2d(4, 6, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 3)).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 1.5)
        model[1].weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    assert_same_as_torch(model, x, [Class(2), MaxNeuron("5", 1), Channel("3", 0)])


def test_equals_torch_deconv_on_trained_shapes_vgg(shapes_vgg: torch.nn.Module) -> None:
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        live = int(shapes_vgg.features[:8](x).amax(dim=(0, 2, 3)).argmax())  # a channel that fires
    assert_same_as_torch(shapes_vgg, x, [Class(4), MaxNeuron("features.7", live)])


# ---------------------------------------------------------------- bad input and hygiene

def test_residual_add_is_refused_naming_the_layer() -> None:
    torch.manual_seed(0)
    kmodel, _ = keras_twin(TinyResidual().eval(), input_hw=(16, 16))
    x = np.zeros((1, 16, 16, 3), "float32")
    with pytest.raises(ConvscopeError, match=r"cannot pass layer .*residual add.*DeconvNet\(model\)"):
        reconstruct(kmodel, x, Class(0))


def test_unmirrorable_layer_only_matters_below_the_seed() -> None:
    model = keras.Sequential([keras.Input((6, 6, 1)), L.Conv2D(2, 3, name="conv"), L.Activation("sigmoid", name="sig"),
                              L.Conv2D(2, 3, activation="relu", name="top")])
    x = np.random.default_rng(0).normal(size=(1, 6, 6, 1)).astype("float32")
    assert np.asarray(reconstruct(model, x, Channel("conv", 1))).shape == x.shape  # below the sigmoid: fine
    with pytest.raises(ConvscopeError, match="layer 'sig' \\(Activation\\).*sigmoid"):
        reconstruct(model, x, Channel("top", 0))


def test_unknown_layer_lists_close_names() -> None:
    with pytest.raises(ConvscopeError, match="Did you mean 'conv2'"):
        reconstruct(small_sequential(), np.zeros((1, 11, 11, 2), "float32"), Channel("conv_2", 0))


def test_input_and_model_are_unchanged() -> None:
    model = small_sequential(2)
    weights = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(4).normal(size=(2, 11, 11, 2)).astype("float32")
    x_before = x.copy()
    reconstruct(model, x, MaxNeuron("conv1", 0))
    assert np.array_equal(x, x_before)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights, strict=True))
