"""shapes-vgg (the trained zoo VGG: conv-relu-pool blocks, an MLP head with dropout) on both
backends: the methods of the issue with their own options give the same maps (see
tests/tf/twin_checks.py; every registered method, alone and wrapped: test_registry_conformance.py)."""

from __future__ import annotations

import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import torch  # noqa: E402
from twin_checks import (  # noqa: E402
    METHODS, Pair, check_delta_and_layers, check_layer_targets, check_method, make_pair)


@pytest.fixture(scope="module")
def pair(shapes_vgg: torch.nn.Module) -> Pair:
    return make_pair(shapes_vgg, (64, 64), "features.3", 32)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_gives_the_torch_maps(pair: Pair, method: str) -> None:
    check_method(pair, METHODS[method])


@pytest.mark.parametrize("method", ["deconvnet", "guided_backprop"])
def test_layer_targets_give_the_torch_maps(pair: Pair, method: str) -> None:
    check_layer_targets(pair, METHODS[method])


def test_integrated_gradients_delta_and_two_layer_cams_agree(pair: Pair) -> None:
    check_delta_and_layers(pair, "features")
