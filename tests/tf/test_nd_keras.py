"""The Keras explicit deconvnet on 1-D and 3-D chains (signals ``[N, L, C]``, volumes ``[N, D, H, W, C]``).

Oracles:
- the PyTorch explicit deconvnet :func:`convscope.deconv.reconstruct` on the Keras model's torch
  twin, built here from one layer spec (same weights; ``ZeroPadding`` + valid conv for torch's
  padding; the first ``Dense`` after a flatten gets its columns permuted, as in tests/tf/twin.py),
  after the channels-last transpose, to 1e-4 (hypothesis over kernels, strides, paddings, pools
  and odd sizes);
- the Keras rule-form :class:`~convscope.methods.DeconvNet` (the deconvnet rule at every ReLU
  during TensorFlow's backprop) where PyTorch has no twin: SAME pooling, which pads with ``-inf``
  asymmetrically (PyTorch pads symmetrically), and global pooling;
- the 3-D switches against PyTorch's own ``max_pool3d`` indices (ties included).
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import keras  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from convscope import deconv as torch_deconv  # noqa: E402
from convscope.errors import ConvscopeError  # noqa: E402
from convscope.methods import DeconvNet  # noqa: E402
from convscope.targets import Class, MaxNeuron  # noqa: E402
from convscope.tf.deconv import reconstruct, volume_switches  # noqa: E402

L = keras.layers
K_CONV = {1: L.Conv1D, 3: L.Conv3D}
K_MAX = {1: L.MaxPooling1D, 3: L.MaxPooling3D}
K_AVG = {1: L.AveragePooling1D, 3: L.AveragePooling3D}
K_PAD = {1: L.ZeroPadding1D, 3: L.ZeroPadding3D}
T_CONV = {1: nn.Conv1d, 3: nn.Conv3d}
T_MAX = {1: nn.MaxPool1d, 3: nn.MaxPool3d}
T_AVG = {1: nn.AvgPool1d, 3: nn.AvgPool3d}
SIZES = {1: (10, 21), 3: (5, 8)}


def to_last(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(t.detach().numpy(), 1, -1))


def to_first(a: object) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.array(a), -1, 1)))


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = float(b.abs().max())
    assert float((a - b).abs().max()) <= 1e-4 * max(scale, 1e-6)


def twins(dims: int, spec: dict, seed: int) -> tuple[keras.Sequential, nn.Sequential] | None:
    """conv(k, stride, pad) - relu - maxpool(k, stride) - conv(k2) - relu - avgpool(2) - flatten - dense,
    as a Keras model and its torch twin with the same weights (None: a geometry with no output)."""
    size, c_in = spec["size"], 2
    torch.manual_seed(seed)
    conv1 = T_CONV[dims](c_in, 3, spec["k1"], stride=spec["s1"], padding=spec["p1"])
    conv2 = T_CONV[dims](3, 4, spec["k2"])
    features = nn.Sequential(conv1, nn.ReLU(), T_MAX[dims](spec["pk"], spec["ps"]), conv2, nn.ReLU(),
                             T_AVG[dims](spec["ak"], 1)).eval()
    try:
        with torch.no_grad():
            fmap = features(torch.zeros(1, c_in, *size))
    except RuntimeError:
        return None
    linear = nn.Linear(fmap.numel(), 3)
    tmodel = nn.Sequential(*features, nn.Flatten(), linear).eval()
    space = tuple(fmap.shape[2:])
    kmodel = keras.Sequential([keras.Input((*size, c_in)), K_PAD[dims](spec["p1"][0] if dims == 1 else spec["p1"], name="pad1"),
                               K_CONV[dims](3, spec["k1"], strides=spec["s1"], name="conv1"), L.ReLU(name="relu1"),
                               K_MAX[dims](spec["pk"], spec["ps"], name="pool1"),
                               K_CONV[dims](4, spec["k2"], name="conv2"), L.ReLU(name="relu2"),
                               K_AVG[dims](spec["ak"], 1, name="pool2"), L.Flatten(name="flat"),
                               L.Dense(3, name="fc")])
    to_keras = (*range(2, 2 + dims), 1, 0)  # torch [out, in, *k] -> Keras [*k, in, out]
    for name, conv in (("conv1", conv1), ("conv2", conv2)):
        kmodel.get_layer(name).set_weights([conv.weight.detach().permute(to_keras).numpy(), conv.bias.detach().numpy()])
    w = linear.weight.detach().reshape(3, 4, *space).permute(0, *range(2, 2 + dims), 1).reshape(3, -1)
    kmodel.get_layer("fc").set_weights([w.T.numpy(), linear.bias.detach().numpy()])
    return kmodel, tmodel


@st.composite
def twin_spec(draw: st.DrawFn, dims: int) -> dict:
    def axes(low: int, high: int) -> tuple[int, ...]:
        return tuple(draw(st.integers(low, high)) for _ in range(dims))

    k1 = axes(1, 3)
    return {"size": axes(*SIZES[dims]), "k1": k1, "s1": axes(1, 2), "p1": tuple(draw(st.integers(0, k)) for k in k1),
            "pk": axes(1, 3), "ps": axes(1, 3), "k2": axes(1, 2), "ak": axes(1, 2)}


@pytest.mark.parametrize("dims", [1, 3])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(data=st.data())
def test_keras_deconvnet_equals_the_torch_twin(dims: int, data: st.DataObject) -> None:
    spec, seed = data.draw(twin_spec(dims)), data.draw(st.integers(0, 2**16))
    built = twins(dims, spec, seed)
    assume(built is not None)
    kmodel, tmodel = built
    x = torch.randn(2, 2, *spec["size"], generator=torch.Generator().manual_seed(seed))
    np.testing.assert_allclose(np.array(kmodel(to_last(x))), tmodel(x).detach().numpy(), atol=1e-4)
    for ktarget, ttarget in ((1, 1), (MaxNeuron("conv2", 2), MaxNeuron("3", 2)),
                             (MaxNeuron("relu1", 1, rank=1), MaxNeuron("1", 1, rank=1))):
        got = reconstruct(kmodel, to_last(x), ktarget)
        assert got.shape == to_last(x).shape
        assert_same(to_first(got), torch_deconv.reconstruct(tmodel, x, ttarget))


@pytest.mark.parametrize("dims", [1, 3])
def test_same_and_global_pooling_equal_the_rule_form_deconvnet(dims: int) -> None:
    keras.utils.set_random_seed(dims)
    size = (13,) if dims == 1 else (5, 7, 6)
    kmodel = keras.Sequential([keras.Input((*size, 2)), K_CONV[dims](3, 3, padding="same", activation="relu",
                                                                      name="conv1"),
                               K_MAX[dims](3, 2, padding="same", name="pool1"),  # overlapping, odd sizes
                               K_CONV[dims](4, 2, padding="same", name="conv2"), L.Activation("relu", name="act2"),
                               K_AVG[dims](2, 1, padding="same", name="pool2"), L.BatchNormalization(name="bn"),
                               (L.GlobalMaxPooling1D if dims == 1 else L.GlobalAveragePooling3D)(name="gpool"),
                               L.Dense(3, name="fc")])
    bn = kmodel.get_layer("bn")
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 2, 4), rng.uniform(-1, 1, 4), rng.uniform(-1, 1, 4), rng.uniform(0.5, 2, 4)])
    x = np.random.default_rng(dims).normal(size=(2, *size, 2)).astype("float32")
    for target in (Class(2), MaxNeuron("conv2", 1), MaxNeuron("pool1", 0)):
        got = to_first(reconstruct(kmodel, x, target))
        assert_same(got, to_first(DeconvNet(kmodel).attribute(x, target)))


@settings(max_examples=15, deadline=None)
@given(st.tuples(*[st.integers(3, 7)] * 3), st.tuples(*[st.integers(1, 3)] * 3),
       st.tuples(*[st.integers(1, 3)] * 3), st.booleans(), st.integers(0, 2**16))
def test_volume_switches_are_torch_max_pool3d_indices(size: tuple, window: tuple, strides: tuple, ties: bool,
                                                      seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 3, (2, 3, *size), generator=gen).float() if ties else torch.randn(2, 3, *size, generator=gen)
    pooled, indices = F.max_pool3d(x, window, strides, return_indices=True)
    got_pooled, argmax = volume_switches(tf.constant(to_last(x)), list(window), list(strides), "VALID")
    assert torch.equal(to_first(got_pooled), pooled)
    channels = torch.arange(3).reshape(1, 3, 1, 1, 1)
    assert torch.equal(to_first(argmax), indices * 3 + channels)  # Keras's index counts channels last


def test_bad_inputs_and_layers_are_named() -> None:
    kmodel = keras.Sequential([keras.Input((9, 2)), L.Conv1D(3, 2, padding="causal", name="causal"), L.Flatten(),
                               L.Dense(2)])
    with pytest.raises(ConvscopeError, match=r"cannot pass layer 'causal' \(Conv1D\): its padding='causal'"):
        reconstruct(kmodel, np.zeros((1, 9, 2), "float32"), 0)
    with pytest.raises(ConvscopeError, match=r"signals \[N, L, C\], images \[N, H, W, C\] or volumes"):
        reconstruct(kmodel, np.zeros((9, 2), "float32"), 0)


# ------------------------------------------------------------------ the CAM family and project on the twins

TWIN = {1: {"size": (17,), "k1": (3,), "s1": (1,), "p1": (1,), "pk": (3,), "ps": (2,), "k2": (2,), "ak": (2,)},
        3: {"size": (7, 6, 9), "k1": (3, 3, 3), "s1": (1, 1, 1), "p1": (1, 1, 1), "pk": (2, 2, 2), "ps": (2, 2, 2),
            "k2": (1, 2, 1), "ak": (1, 1, 2)}}


@pytest.fixture(scope="module", params=[1, 3], ids=["1d", "3d"])
def twin(request: pytest.FixtureRequest) -> tuple[keras.Sequential, nn.Sequential, torch.Tensor]:
    kmodel, tmodel = twins(request.param, TWIN[request.param], seed={1: 0, 3: 4}[request.param])  # non-zero maps
    x = torch.randn(2, 2, *TWIN[request.param]["size"], generator=torch.Generator().manual_seed(0))
    return kmodel, tmodel, x


@pytest.mark.parametrize("name", ["GradCAM", "HiResCAM", "ScoreCAM", "AblationCAM", "EigenCAM"])
def test_keras_cams_equal_the_torch_twins(twin: tuple, name: str) -> None:
    """Upsampled to the input (linear / trilinear on both sides) at the layer 'relu2' ('4' in torch),
    and at the default layer, which both frameworks find: the last pool's output."""
    from convscope.methods import cam

    kmodel, tmodel, x = twin
    method = getattr(cam, name)
    for klayer, tlayer in (("relu2", "4"), (None, None)):
        got, expected = method(kmodel, klayer).attribute(to_last(x), 1), method(tmodel, tlayer).attribute(x, 1)
        assert expected.shape == (2, 1, *x.shape[2:]) and float(expected.abs().max()) > 0
        assert_same(to_first(got), expected)
    chosen = method(kmodel)
    chosen.attribute(to_last(x), 0)
    assert chosen.last_layers == ("pool2",)


def test_keras_project_equals_the_torch_twin(twin: tuple) -> None:
    from convscope.project import project

    kmodel, tmodel, x = twin
    got, expected = project(kmodel, to_last(x), "relu2", 2, top=2), project(tmodel, x, "4", 2, top=2)
    np.testing.assert_allclose(np.array(got.values), expected.values.numpy(), rtol=1e-4)
    assert np.array_equal(np.array(got.positions), expected.positions.numpy())
    assert_same(to_first(np.array(got.maps).reshape(4, *to_last(x).shape[1:])), expected.maps.reshape(4, *x.shape[1:]))
