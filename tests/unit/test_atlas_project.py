"""Batched single-activation projections, on whole images and on exact receptive-field crops.

Oracles: plain autograd of each (image, unit) pair on the whole image (gradient), the explicit
top-down deconvnet mirror :func:`convscope.deconv.reconstruct` (deconvnet), and the uncropped
projection (every rule) on random conv/pool chains - strides, padding, dilation, odd sizes,
units at the borders. Captum's neuron methods are compared in tests/xlib/test_captum_atlas.py.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nets import TinyResidual, TinyVGG
from torch import nn

from convscope.atlas import project_units, receptive_field
from convscope.atlas.crop import windows
from convscope.deconv import reconstruct
from convscope.errors import ConvscopeError
from convscope.targets import Neuron


def pairs() -> tuple[TinyVGG, torch.Tensor, list[int], list[tuple[int, int]]]:
    torch.manual_seed(0)
    model = TinyVGG().eval()
    x = torch.randn(5, 3, 16, 16)
    rows = torch.tensor([0, 1, 1, 4, 2, 0, 3])  # an image may appear with several units
    channels = [0, 3, 7, 5, 1, 1, 2]
    coords = [(0, 0), (1, 2), (3, 3), (2, 1), (7, 0), (4, 5), (6, 6)]
    return model, x[rows], channels, coords


def autograd_oracle(upto: nn.Module, images: torch.Tensor, channels: list[int], coords: list[tuple[int, ...]]) -> torch.Tensor:
    """Each pair on its own, whole image: ``a * da/dx`` with ``a`` the unit's activation."""
    out = []
    for image, c, unit in zip(images, channels, coords):
        leaf = image[None].clone().requires_grad_()
        a = upto(leaf)[(0, c, *unit)]
        (g,) = torch.autograd.grad(a, leaf)
        out.append(a.detach() * g)
    return torch.cat(out)


def test_gradient_projection_equals_autograd_and_max_batch_changes_nothing() -> None:
    model, images, channels, coords = pairs()
    coords = [(y % 8, x % 8) for y, x in coords]
    ours = project_units(model, "features.3", images, channels, coords, method="gradient", max_batch=None)
    torch.testing.assert_close(ours, autograd_oracle(model.features[:4], images, channels, coords),
                               rtol=1e-5, atol=1e-6)
    for mb in (1, 2, 5):
        for crop in (True, False):
            again = project_units(model, "features.3", images, channels, coords, method="gradient",
                                  max_batch=mb, crop=crop)
            torch.testing.assert_close(again, ours, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("layer", ["features.0", "features.2", "features.3", "features.5"])
def test_cropped_deconvnet_equals_the_explicit_mirror(layer: str) -> None:
    model, images, channels, _ = pairs()
    with torch.no_grad():
        acts = model.features[: int(layer.split(".")[1]) + 1](images)
    channels = [c % acts.shape[1] for c in channels]
    # each unit its channel's strongest (a > 0: the deconvnet rule is homogeneous for positive seeds)
    coords = [divmod(int(acts[i, c].argmax()), acts.shape[3]) for i, c in enumerate(channels)]
    ours = project_units(model, layer, images, channels, coords, method="deconvnet", max_batch=3)
    for i, (c, unit) in enumerate(zip(channels, coords)):
        mirror = reconstruct(model, images[i:i + 1], Neuron(layer, c, *unit))
        torch.testing.assert_close(ours[i:i + 1], acts[(i, c, *unit)] * mirror, rtol=1e-5, atol=1e-6)


@st.composite
def chains(draw: st.DrawFn) -> tuple[nn.Sequential, tuple[int, int]]:
    """A random conv/ReLU/max-pool chain (any stride, padding, dilation) and an input size it fits."""
    layers: list[nn.Module] = []
    cin = 2
    for _ in range(draw(st.integers(1, 4))):
        k, s, d = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
        if draw(st.booleans()):
            layers += [nn.Conv2d(cin, 3, k, stride=s, padding=draw(st.integers(0, d * (k - 1))), dilation=d),
                       nn.ReLU(inplace=draw(st.booleans()))]
            cin = 3
        else:
            k = max(k, 2)
            layers.append(nn.MaxPool2d(k, stride=s, padding=draw(st.integers(0, k // 2)), dilation=d))
    size = (draw(st.integers(9, 27)), draw(st.integers(9, 27)))
    return nn.Sequential(*layers), size


@settings(max_examples=30, deadline=None)
@given(chains(), st.integers(0, 2**31 - 1))
def test_crops_equal_whole_images_on_random_chains(chain: tuple[nn.Sequential, tuple[int, int]], seed: int) -> None:
    model, size = chain
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.uniform_(m.weight, -0.5, 0.5)
    model = model[: seed % len(model) + 1]  # any layer: a convolution, a ReLU or a max-pool
    images = torch.randn(6, 2, *size)
    with torch.no_grad():
        try:
            out = model(images)
        except RuntimeError:  # the chain does not fit this input size
            return
    if min(out.shape[2:]) < 1 or not out.isfinite().all():  # a padded pool may see only padding (-inf)
        return
    h, w = out.shape[2:]
    g = torch.Generator().manual_seed(seed)
    coords = [(0, 0), (h - 1, w - 1), (0, w - 1), (h - 1, 0)] + [
        (int(torch.randint(h, (1,), generator=g)), int(torch.randint(w, (1,), generator=g))) for _ in range(2)]
    channels = [int(torch.randint(out.shape[1], (1,), generator=g)) for _ in coords]
    layer = str(len(model) - 1)
    cropped = project_units(model, layer, images, channels, coords, method="gradient", max_batch=4)
    torch.testing.assert_close(cropped, autograd_oracle(model, images, channels, coords), rtol=1e-5, atol=1e-6)
    for method in ("deconvnet", "guided"):
        cropped = project_units(model, layer, images, channels, coords, method=method, max_batch=4)
        whole = project_units(model, layer, images, channels, coords, method=method, crop=False)
        torch.testing.assert_close(cropped, whole, rtol=1e-5, atol=1e-6)


def test_crops_are_small_inside_and_keep_the_border() -> None:
    model = TinyVGG().eval()
    field = receptive_field(model, "features.3", (3, 16, 16))  # stride 2, inputs 2y-3 .. 2y+4
    win = windows(field, [(0, 0), (3, 5), (7, 7)])
    assert win is not None
    sizes = win[:, 1] - win[:, 0]
    assert (sizes == sizes[0]).all() and sizes[0] < 16  # one common size, smaller than the image
    assert win[0, 0] == 0 and win[2, 1] == 16  # the border units keep the image border
    assert (win[:, [0, 2]] % 2 == 0).all()  # aligned to the stride grid
    assert (win[:, [0, 2]] <= [[0, 0], [3, 7], [11, 11]]).all() and (win[:, [1, 3]] >= [[5, 5], [11, 15], [16, 16]]).all()
    # a unit's own position in the cropped layer
    assert [tuple(map(int, w[4:])) for w in win] == [(0, 0), (3 - win[1, 0] // 2, 5 - win[1, 2] // 2), (7 - win[2, 0] // 2, 7 - win[2, 2] // 2)]
    # no saving: the field of the classifier-side features covers the image; a measured field gives no crop
    whole = nn.Sequential(nn.Conv2d(1, 1, 9, padding=4), nn.ReLU())
    assert windows(receptive_field(whole, "0", (1, 8, 8)), [(4, 4)]) is None
    assert windows(receptive_field(TinyResidual().eval(), "layer2", (3, 16, 16)), [(1, 1)]) is None


def test_residual_and_instance_norm_nets_run_on_whole_images() -> None:
    torch.manual_seed(0)
    images = torch.randn(3, 3, 16, 16)
    channels, coords = [0, 4, 2], [(0, 0), (3, 4), (7, 7)]
    residual = TinyResidual().eval()
    ours = project_units(residual, "layer2", images, channels, coords, method="gradient")
    upto = lambda x: residual.layer2(residual.layer1(residual.relu(residual.bn1(residual.conv1(x)))))
    torch.testing.assert_close(ours, autograd_oracle(upto, images, channels, coords), rtol=1e-5, atol=1e-6)
    # instance norm reads the whole map: a crop would change its statistics, so none is taken
    normed = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.InstanceNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Conv2d(4, 5, 3, padding=1)).eval()
    ours = project_units(normed, "4", images, channels, coords, method="gradient")
    torch.testing.assert_close(ours, autograd_oracle(normed, images, channels, coords), rtol=1e-5, atol=1e-6)


def test_one_dimensional_chains_are_cropped_exactly() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(3, 4, 3, padding=1)).eval()
    signals = torch.randn(4, 2, 40)
    channels, coords = [0, 3, 1, 2], [(0,), (19,), (9,), (10,)]
    assert windows(receptive_field(model, "3", (2, 40)), coords) is not None
    ours = project_units(model, "3", signals, channels, coords, method="gradient")
    torch.testing.assert_close(ours, autograd_oracle(model, signals, channels, coords), rtol=1e-5, atol=1e-6)


class _Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom: the forward pass failed on purpose")


@pytest.mark.parametrize("crop", [True, False])
def test_model_inputs_and_hooks_are_left_as_they_were(crop: bool) -> None:
    model, images, channels, coords = pairs()
    coords = [(y % 8, x % 8) for y, x in coords]
    before = images.clone()
    project_units(model, "features.3", images, channels, coords, max_batch=4, crop=crop)
    assert torch.equal(images, before)
    failing = nn.Sequential(nn.Conv2d(3, 2, 3), _Boom()).train()
    with pytest.raises(RuntimeError, match="boom"):
        project_units(failing, "1", images, [0] * len(images), [(0, 0)] * len(images), crop=crop)
    assert all(m.training for m in failing.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in failing.modules())
    with pytest.raises(ConvscopeError, match="unknown projection method"):
        project_units(model, "features.3", images, channels, coords, method="lrp")
