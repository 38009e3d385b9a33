"""``convscope.projection.project``, the one "project a unit to pixels" entry point (PyTorch side;
the Keras side is tests/tf/test_projection.py).

Oracles: the explicit top-down deconvnet :func:`convscope.deconv.reconstruct` seeded with
``MaxNeuron(layer, c, rank=k)`` (built from unpooling, no autograd), the feature map computed
by slicing the model's ``Sequential`` and ranked by ``torch.topk``, one call per channel, and
the atlas: its mining pass (:class:`~convscope.atlas.topk.TopK`) must pick the same unit of each
image and its crop-window projector (:func:`~convscope.atlas.project.project_units`) must give
the same map there.
"""

from __future__ import annotations

import pytest
import torch
from nets import make, sample

from convscope.atlas import mine, project_units
from convscope.deconv import reconstruct
from convscope.errors import ConvscopeError
from convscope.projection import RULES, project, rule_map
from convscope.rules import DeconvReLU, Gradient, GuidedReLU
from convscope.targets import MaxNeuron


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal to 1e-5 relative to the map's largest entry, and not trivially zero."""
    scale = b.abs().max()
    assert scale > 0
    assert (a - b).abs().max() <= 1e-5 * scale


def test_deconvnet_projections_of_several_channels_equal_the_explicit_mirror() -> None:
    model, x = make("tiny_vgg"), sample("tiny_vgg", n=2)
    channels, top = [4, 1, 6], 3
    p = project(model, x, "features.4", channels, top=top)
    assert p.maps.shape == (2, 3, top, 3, 16, 16) and p.values.shape == (2, 3, top)
    assert p.positions.shape == (2, 3, top, 2) and p.channel == (4, 1, 6) and p.rule == "deconvnet"
    with torch.no_grad():
        fmaps = model.features[:5](x)  # [2, 8, 8, 8], computed independently
    for j, c in enumerate(channels):
        for n in range(2):
            values, flat = torch.topk(fmaps[n, c].flatten(), top)
            torch.testing.assert_close(p.values[n, j], values)
            assert p.positions[n, j].tolist() == [[int(i) // 8, int(i) % 8] for i in flat]
        for k in range(top):
            assert_same(p.maps[:, j, k], reconstruct(model, x, MaxNeuron("features.4", c, rank=k)))


@pytest.mark.parametrize("rule", list(RULES))
def test_a_channel_list_is_one_call_per_channel_whatever_max_batch(rule: str) -> None:
    model, x = make("tiny_vgg"), sample("tiny_vgg", n=3)
    together = project(model, x, "features.3", [0, 5, 7], rule=rule, top=2, max_batch=2)
    for j, c in enumerate([0, 5, 7]):
        alone = project(model, x, "features.3", c, rule=rule, top=2)
        assert alone.maps.shape == (3, 2, 3, 16, 16) and alone.channel == c
        torch.testing.assert_close(together.maps[:, j], alone.maps, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(together.values[:, j], alone.values)
        assert torch.equal(together.positions[:, j], alone.positions)


def test_rule_table_is_the_methods_and_names_the_bad_option() -> None:
    assert [type(rule_map(name).default) for name in RULES] == [DeconvReLU, GuidedReLU, Gradient]
    with pytest.raises(ConvscopeError, match="method='lrp' is not a projection rule"):
        rule_map("lrp", option="method")
    model, x = make("tiny_vgg"), sample("tiny_vgg")
    for channel in ([], [1, 2.0], True):
        with pytest.raises(ConvscopeError, match="is not a channel index or a non-empty list"):
            project(model, x, "features.3", channel)  # type: ignore[arg-type]
    with pytest.raises(ConvscopeError, match="top=0 must be a positive int"):
        project(model, x, "features.3", 1, top=0)
    with pytest.raises(ConvscopeError, match="torch.from_numpy"):
        project(model, x.numpy(), "features.3", 1)


@pytest.mark.parametrize("layer", ["features.3", "features.4"])  # a plain convolution (cut at its input), a ReLU
@pytest.mark.parametrize("rule", list(RULES))
def test_the_atlas_mines_the_same_units_and_projects_them_alike(layer: str, rule: str) -> None:
    model, x = make("tiny_vgg"), sample("tiny_vgg", n=4)
    channels = [2, 7]
    p = project(model, x, layer, channels, rule=rule)
    acc = mine(model, torch.utils.data.TensorDataset(x), [layer], k=len(x)).results[layer]  # per image: its peak
    for j, c in enumerate(channels):
        images = torch.as_tensor(acc.images[c])
        coords = acc.coords()[c]
        assert coords.tolist() == p.positions[images, j, 0].tolist()
        torch.testing.assert_close(torch.from_numpy(acc.values[c]), p.values[images, j, 0])
        maps = project_units(model, layer, x[images], [c] * len(x), coords, method=rule, max_batch=3)
        torch.testing.assert_close(maps, p.maps[images, j, 0], rtol=1e-5, atol=1e-6)
