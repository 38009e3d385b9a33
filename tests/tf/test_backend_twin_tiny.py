"""TinyVGG (tests/nets.py, a VGG-style net with random weights) on both backends: every method,
the rest of the CAM family, layer targets and attribution to a layer give the same maps
(see tests/tf/twin_checks.py)."""

from __future__ import annotations

import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import torch  # noqa: E402
from nets import TinyVGG  # noqa: E402
from twin_checks import (  # noqa: E402
    EXTRA, METHODS, ON_LAYERS, Pair, assert_same, check_delta_and_layers, check_layer_targets, check_method,
    check_wrt_layer, make_pair)


@pytest.fixture(scope="module")
def pair() -> Pair:
    torch.manual_seed(0)
    return make_pair(TinyVGG(), (16, 16), "features.3", 8)


@pytest.mark.parametrize("method", list(METHODS) + list(EXTRA))
def test_every_method_gives_the_torch_maps(pair: Pair, method: str) -> None:
    check_method(pair, {**METHODS, **EXTRA}[method])


@pytest.mark.parametrize("method", ["saliency", "deconvnet"])
def test_layer_targets_give_the_torch_maps(pair: Pair, method: str) -> None:
    check_layer_targets(pair, METHODS[method])


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "occlusion", "guided_backprop"])
def test_attribution_to_a_layer_gives_the_torch_maps(pair: Pair, method: str) -> None:
    check_wrt_layer(pair, ON_LAYERS[method])


def test_integrated_gradients_delta_and_two_layer_cams_agree(pair: Pair) -> None:
    check_delta_and_layers(pair, "features")


def test_gradient_shap_draws_baselines_from_a_bank_in_each_layout(pair: Pair) -> None:
    from twin import to_nhwc

    from convscope.methods import GradientSHAP

    bank = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    expected = GradientSHAP(pair.model, baselines=bank, samples=6, seed=3).attribute(pair.x, 1)
    found = GradientSHAP(pair.kmodel, baselines=to_nhwc(bank), samples=6, seed=3).attribute(pair.xk, 1)
    assert_same(expected, found)
