"""Batched single-activation projections against one Captum call per (image, unit)."""

from __future__ import annotations

import warnings

import pytest
import torch
from nets import TinyVGG

from convscope.atlas import project_units
from convscope.errors import ConvscopeError


def pairs() -> tuple[TinyVGG, torch.Tensor, list[int], list[tuple[int, int]], torch.Tensor]:
    torch.manual_seed(0)
    model = TinyVGG().eval()
    x = torch.randn(5, 3, 16, 16)
    rows = torch.tensor([0, 1, 1, 4, 2, 0, 3])  # an image may appear with several units
    channels = [0, 3, 7, 5, 1, 1, 2]
    coords = [(0, 0), (1, 2), (3, 3), (2, 1), (7, 0), (4, 5), (6, 6)]
    return model, x[rows], channels, coords, rows


@pytest.mark.parametrize(("method", "captum_name"), [("deconvnet", "NeuronDeconvolution"),
                                                     ("guided", "NeuronGuidedBackprop")])
def test_equals_captum_neuron_methods_scaled_by_the_activation(method: str, captum_name: str) -> None:
    import captum.attr as ca

    model, images, channels, coords, _ = pairs()
    layer = "features.3" if method == "deconvnet" else "features.4"
    layer_module = model.features[int(layer.split(".")[1])]
    with torch.no_grad():
        acts = model.features[: int(layer.split(".")[1]) + 1](images)
    # as in the atlas, each unit is its channel's strongest in the image (a > 0: the deconvnet
    # rule relu(g) is not linear in the seed's sign, so only positive seeds scale)
    coords = [divmod(int(acts[i, c].argmax()), 8) for i, c in enumerate(channels)]
    assert all(acts[i, c, y, x] > 0 for i, (c, (y, x)) in enumerate(zip(channels, coords)))
    ours = project_units(model, layer, images, channels, coords, method=method, max_batch=3)
    warnings.filterwarnings("ignore", module="captum")
    for i, (c, (y, x)) in enumerate(zip(channels, coords)):
        attr = getattr(ca, captum_name)(model, layer_module)
        theirs = attr.attribute(images[i:i + 1], neuron_selector=(c, y, x))
        # the Zeiler-Fergus seed is the activation a itself: the map of d(a^2/2) = a * da
        torch.testing.assert_close(ours[i:i + 1], acts[i, c, y, x] * theirs, rtol=1e-5, atol=1e-6)


def test_gradient_projection_equals_autograd_and_max_batch_changes_nothing() -> None:
    model, images, channels, coords, _ = pairs()
    coords = [(y % 8, x % 8) for y, x in coords]
    ours = project_units(model, "features.3", images, channels, coords, method="gradient", max_batch=None)
    for i, (c, (y, x)) in enumerate(zip(channels, coords)):
        leaf = images[i:i + 1].clone().requires_grad_()
        a = model.features[:4](leaf)[0, c, y, x]
        (g,) = torch.autograd.grad(a, leaf)
        torch.testing.assert_close(ours[i:i + 1], a.detach() * g, rtol=1e-5, atol=1e-6)
    for mb in (1, 2, 5):
        again = project_units(model, "features.3", images, channels, coords, method="gradient", max_batch=mb)
        torch.testing.assert_close(again, ours, rtol=1e-6, atol=1e-7)


def test_inputs_are_not_changed_and_bad_method_is_clear() -> None:
    model, images, channels, coords, _ = pairs()
    before = images.clone()
    coords = [(y % 8, x % 8) for y, x in coords]
    project_units(model, "features.3", images, channels, coords, max_batch=4)
    assert torch.equal(images, before)
    with pytest.raises(ConvscopeError, match="unknown projection method"):
        project_units(model, "features.3", images, channels, coords, method="lrp")
