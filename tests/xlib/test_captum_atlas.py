"""Captum's neuron methods as an anchor for the atlas projections (cropped and whole-image).

Captum's ``NeuronDeconvolution`` / ``NeuronGuidedBackprop`` seed the unit with 1; the atlas seeds
it with its activation ``a`` (Zeiler-Fergus), so ours is ``a *`` Captum's map when ``a > 0``
(the deconvnet rule ``relu(g)`` is homogeneous only for positive seeds: the atlas projects top
activations). One Captum call per (image, unit), against one batched call of ours.
"""

from __future__ import annotations

import pytest
import torch
from nets import TinyVGG
from torch import nn

from convscope.atlas import project_units

captum_attr = pytest.importorskip("captum.attr")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CAPTUM = {"deconvnet": "NeuronDeconvolution", "guided": "NeuronGuidedBackprop"}


def top_units(acts: torch.Tensor, channels: list[int]) -> list[tuple[int, int]]:
    """Row i's strongest unit of channel ``channels[i]`` (row-major first among ties)."""
    width = acts.shape[3]
    return [divmod(int(acts[i, c].flatten().argmax()), width) for i, c in enumerate(channels)]


def check_against_captum(model: nn.Module, layer: str, upto: nn.Module, images: torch.Tensor,
                         channels: list[int], method: str) -> None:
    with torch.no_grad():
        acts = upto(images)
    coords = top_units(acts, channels)
    values = torch.stack([acts[i, c, y, x] for i, (c, (y, x)) in enumerate(zip(channels, coords))])
    assert (values > 0).all()
    cropped = project_units(model, layer, images, channels, coords, method=method, max_batch=5)
    whole = project_units(model, layer, images, channels, coords, method=method, max_batch=5, crop=False)
    module = dict(model.named_modules())[layer]
    for i, (c, (y, x)) in enumerate(zip(channels, coords)):
        theirs = getattr(captum_attr, CAPTUM[method])(model, module).attribute(images[i:i + 1], neuron_selector=(c, y, x))
        expected = values[i] * theirs
        tol = 1e-5 * float(expected.abs().max())
        torch.testing.assert_close(cropped[i:i + 1], expected, rtol=0, atol=tol)
        torch.testing.assert_close(whole[i:i + 1], expected, rtol=0, atol=tol)


@pytest.mark.parametrize("method", sorted(CAPTUM))
@pytest.mark.parametrize("layer", ["features.3", "features.4"])
def test_tiny_vgg_equals_captum(method: str, layer: str) -> None:
    torch.manual_seed(0)
    model = TinyVGG().eval()
    images = torch.randn(8, 3, 16, 16)
    channels = [0, 3, 7, 5, 1, 1, 2, 6]
    check_against_captum(model, layer, model.features[: int(layer.split(".")[1]) + 1], images, channels, method)


@pytest.mark.parametrize("method", sorted(CAPTUM))
def test_trained_shapes_vgg_on_shapes_images_equals_captum(shapes_vgg: nn.Module, method: str) -> None:
    """Flat backgrounds make exact ties in the max-pools: the crop must pick the same switches."""
    from convscope import zoo
    from convscope.data import Shapes

    images = zoo.preset("shapes-vgg").to_tensor(Shapes(12).arrays()[0])
    with torch.no_grad():
        acts = shapes_vgg.features[:7](images)
    # per image the channel with the strongest unit, so every seed is a real top activation
    channels = [int(acts[i].amax((1, 2)).argmax()) for i in range(len(images))]
    check_against_captum(shapes_vgg, "features.6", shapes_vgg.features[:7], images, channels, method)
