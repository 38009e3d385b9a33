"""``convscope.projection.project`` on Keras models (NHWC in, maps shaped like each image).

Oracles: ``project`` on the Keras model's PyTorch twin (tests/tf/twin.py: the maps after
NCHW -> NHWC to 1e-4 of each map's magnitude, the same units, the same values), and on a Keras
chain the explicit Keras deconvnet :func:`convscope.tf.deconv.reconstruct` seeded with
``MaxNeuron(layer, c, rank=k)`` (unpooling by hand, no autograd), with the units ranked by NumPy
on the layer's output computed layer by layer.
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import torch  # noqa: E402
from nets import TinyVGG  # noqa: E402
from test_tf_deconv import layer_output, small_sequential  # noqa: E402
from twin_checks import Pair, assert_same, make_pair  # noqa: E402

from convscope.errors import ConvscopeError  # noqa: E402
from convscope.projection import RULES, project  # noqa: E402
from convscope.targets import MaxNeuron  # noqa: E402
from convscope.tf.deconv import reconstruct  # noqa: E402


@pytest.fixture(scope="module")
def pair() -> Pair:
    torch.manual_seed(0)
    return make_pair(TinyVGG(), (16, 16), "features.3", 8)


@pytest.mark.parametrize("rule", list(RULES))
def test_keras_projections_equal_the_torch_twins(pair: Pair, rule: str) -> None:
    channels = [5, 2]
    want = project(pair.model, pair.x, pair.layer, channels, rule=rule, top=3)
    got = project(pair.kmodel, pair.xk, pair.names[pair.layer], channels, rule=rule, top=3, max_batch=1)
    assert tuple(got.maps.shape) == (2, 2, 3, 16, 16, 3) and got.channel == (5, 2)
    for j in range(len(channels)):
        for k in range(3):
            assert_same(want.maps[:, j, k], got.maps[:, j, k])
    np.testing.assert_allclose(np.asarray(got.values), want.values.numpy(), rtol=1e-5, atol=1e-5)
    assert np.asarray(got.positions).tolist() == want.positions.tolist()
    one = project(pair.kmodel, pair.xk, pair.names[pair.layer], 5, rule=rule, top=3)
    assert tuple(one.maps.shape) == (2, 3, 16, 16, 3)
    np.testing.assert_allclose(np.asarray(one.maps), np.asarray(got.maps)[:, 0], rtol=1e-5, atol=1e-7)


def test_keras_deconvnet_projections_equal_the_explicit_keras_mirror() -> None:
    model = small_sequential(3)
    x = np.random.default_rng(3).normal(size=(3, 11, 11, 2)).astype("float32")
    channels, top = [0, 3], 2
    p = project(model, x, "relu2", channels, top=top)
    acts = layer_output(model, "relu2", x)  # [3, 5, 5, 5]
    for j, c in enumerate(channels):
        for k in range(top):
            want = np.asarray(reconstruct(model, x, MaxNeuron("relu2", c, rank=k)))
            assert np.abs(want).max() > 0
            np.testing.assert_allclose(np.asarray(p.maps)[:, j, k], want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
        for n in range(len(x)):
            flat = np.argsort(-acts[n, :, :, c].ravel(), kind="stable")[:top]
            assert np.asarray(p.positions)[n, j].tolist() == [[int(i) // 5, int(i) % 5] for i in flat]
            np.testing.assert_allclose(np.asarray(p.values)[n, j], acts[n, :, :, c].ravel()[flat], rtol=1e-6)


def test_keras_errors_name_the_keras_layout(pair: Pair) -> None:
    with pytest.raises(ConvscopeError, match=r"torch tensor but the model is a Keras model.*\[N, H, W, C\]"):
        project(pair.kmodel, pair.x, pair.names[pair.layer], 0)
    with pytest.raises(ConvscopeError, match="channel 8 is out of range"):
        project(pair.kmodel, pair.xk, pair.names[pair.layer], 8)
