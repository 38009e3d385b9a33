"""Every registered method, alone and wrapped, on the Keras twins of TinyVGG, the zoo VGG and the
zoo ResNet gives the PyTorch maps.

Driven by the registry: a method registered tomorrow joins these cases by itself, and fails here
unless its code runs on Keras or it declares ``frameworks = ("torch",)`` (the skip says so).
Oracle: the PyTorch backend on the original model (tests/tf/twin_checks.py), to 1e-4 of the
map's largest magnitude, for per-sample predicted classes and a combined layer target, attributed
to the input and to a convolutional layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from nets import TinyVGG  # noqa: E402
from twin_checks import (  # noqa: E402
    ON_LAYER, WRAPPERS, Pair, assert_same, builder, check_method, check_wrt_layer, make_pair, registered)

from convscope.methods import (  # noqa: E402
    AugSmooth, GradCAM, GuidedGradCAM, ScoreCAM, SmoothGrad, VarGrad, methods)
from convscope.errors import ConvscopeError  # noqa: E402
from convscope.methods.registry import supported  # noqa: E402
from convscope.targets import Predicted  # noqa: E402


# the zoo twins' last layers have 64-128 channels: masked evaluations in a few large chunks
BIG_BATCHES = {"score_cam": {"max_batch": 128}, "ablation_cam": {"max_batch": 128}}


@pytest.fixture(scope="module", params=["tiny", "vgg", "resnet"])
def pair(request: pytest.FixtureRequest) -> Pair:
    """TinyVGG (random weights), and the trained zoo VGG and ResNet (batch norm, residual adds,
    one in-place ReLU module called twice per block)."""
    if request.param == "vgg":  # one sample and coarser windows keep the big twins' cases cheap
        return make_pair(request.getfixturevalue("shapes_vgg"), (64, 64), "features.3", 32, samples=1,
                         options={"occlusion": {"window": 16, "stride": 16}, **BIG_BATCHES})
    if request.param == "resnet":
        return make_pair(request.getfixturevalue("shapes_resnet"), (32, 32), "layer2", 32, samples=1,
                         options={"occlusion": {"window": 8, "stride": 8}, **BIG_BATCHES})
    torch.manual_seed(0)
    return make_pair(TinyVGG(), (16, 16), "features.3", 8)


def test_the_supported_methods_are_the_registered_ones_not_declared_torch_only() -> None:
    expected = [name for name, info in methods().items() if "tf" in info.cls.frameworks]
    assert supported("tf") == expected and expected


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
@pytest.mark.parametrize("name", list(methods()))
def test_every_method_and_wrapper_gives_the_torch_maps(pair: Pair, name: str, wrapper: str) -> None:
    check_method(pair, builder(name, wrapper, pair.options.get(name)))


@pytest.mark.parametrize("name", list(methods()))
def test_every_method_on_a_layer_gives_the_torch_maps(pair: Pair, name: str) -> None:
    check_wrt_layer(pair, builder(name, "alone", {**pair.options.get(name, {}), **ON_LAYER.get(name, {})}))


@pytest.mark.parametrize("build", [
    lambda m, layer: SmoothGrad(GradCAM(m, layer), samples=2, noise=0.1),
    lambda m, layer: AugSmooth(ScoreCAM(m, layer, max_batch=4)),
    lambda m, layer: VarGrad(GuidedGradCAM(m, layer), samples=2, noise=0.1),
], ids=["smooth_grad(grad_cam)", "aug_smooth(score_cam)", "var_grad(guided_grad_cam)"])
def test_the_issues_compositions_give_the_torch_maps(pair: Pair, build: Callable[[Any, str], Any]) -> None:
    with torch.no_grad():
        classes = pair.model(pair.x).argmax(1).tolist()
    assert_same(build(pair.model, pair.layer).attribute(pair.x, classes),
                build(pair.kmodel, pair.names[pair.layer]).attribute(pair.xk, classes))


@pytest.mark.parametrize("name", list(methods()))
def test_a_noise_tunnel_without_noise_is_the_method_itself_on_keras(pair: Pair, name: str) -> None:
    build = registered(name)
    with torch.no_grad():
        classes = pair.model(pair.x).argmax(1).tolist()
    expected = np.asarray(build(pair.kmodel).attribute(pair.xk, classes))
    found = np.asarray(SmoothGrad(build(pair.kmodel), samples=2, noise=0.0).attribute(pair.xk, classes))
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


@pytest.mark.parametrize("name", [n for n, info in methods().items() if info.cls.scores_input])
def test_predicted_follows_the_same_class_on_both_frameworks(pair: Pair, name: str) -> None:
    torch_target, keras_target = Predicted(), Predicted()
    build = builder(name, "alone")
    assert_same(build(pair.model).attribute(pair.x, torch_target), build(pair.kmodel).attribute(pair.xk, keras_target))
    with torch.no_grad():
        assert torch_target.classes() == pair.model(pair.x).argmax(1).tolist()
    with pytest.raises(ConvscopeError, match="on Keras the passes run compiled"):
        keras_target.classes()
