"""shapes-resnet (the trained zoo ResNet: batch-norm, residual adds, one in-place ReLU module
called twice per block) on both backends: every method of the issue gives the same maps
(see tests/tf/twin_checks.py)."""

from __future__ import annotations

import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import torch  # noqa: E402
from twin_checks import (  # noqa: E402
    METHODS, Pair, check_delta_and_layers, check_layer_targets, check_method, make_pair, registered)

from convscope.methods import methods  # noqa: E402


@pytest.fixture(scope="module")
def pair(shapes_resnet: torch.nn.Module) -> Pair:
    return make_pair(shapes_resnet, (32, 32), "layer2", 32)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_gives_the_torch_maps(pair: Pair, method: str) -> None:
    check_method(pair, METHODS[method])


@pytest.mark.parametrize("name", [name for name in methods() if name not in METHODS])
def test_every_other_registered_method_gives_the_torch_maps(pair: Pair, name: str) -> None:
    check_method(pair, registered(name))


def test_layer_targets_give_the_torch_maps(pair: Pair) -> None:
    check_layer_targets(pair, METHODS["guided_backprop"])


def test_integrated_gradients_delta_and_two_layer_cams_agree(pair: Pair) -> None:
    check_delta_and_layers(pair, "layer3")
