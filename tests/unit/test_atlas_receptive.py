"""Receptive-field boxes against the gradient support of an independent linearised copy."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from nets import TinyResidual, TinyVGG
from torch import nn

from convscope.atlas import gradient_boxes, receptive_field
from convscope.atlas.receptive import crop


def linearised(model: nn.Module) -> nn.Module:
    """A copy where every path counts: ReLU -> identity, max-pool -> avg-pool of the same window
    (as a depthwise conv of ones, which also takes dilation), weights -> |w| + 0.1."""
    twin = copy.deepcopy(model).eval()
    for name, module in list(twin.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, child_name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                setattr(module, child_name, _WindowSum(child))
    with torch.no_grad():
        for p in twin.parameters():
            p.copy_(p.abs() + 0.1)
    return twin


class _WindowSum(nn.Module):
    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.k, self.s, self.p, self.d = pool.kernel_size, pool.stride, pool.padding, pool.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.k if isinstance(self.k, tuple) else (self.k, self.k)
        w = torch.ones(x.shape[1], 1, *k)
        return nn.functional.conv2d(x, w, stride=self.s, padding=self.p, dilation=self.d, groups=x.shape[1])


def support_box(model: nn.Module, upto: nn.Module, shape: tuple[int, ...], unit: tuple[int, int]) -> tuple[int, ...]:
    x = torch.rand(1, *shape, requires_grad=True)
    act = upto(x)
    act[0, :, unit[0], unit[1]].sum().backward()
    rows = torch.nonzero(x.grad[0].abs().sum(0).sum(1)).flatten()
    cols = torch.nonzero(x.grad[0].abs().sum(0).sum(0)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def vgg_style(specs: list[tuple[str, int, int, int, int]]) -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 2
    for kind, k, s, p, d in specs:
        if kind == "conv":
            layers += [nn.Conv2d(cin, 3, k, stride=s, padding=p, dilation=d), nn.ReLU(inplace=True)]
            cin = 3
        else:
            layers.append(nn.MaxPool2d(k, stride=s, padding=p, dilation=d))
    return nn.Sequential(*layers)


NETS = [
    [("conv", 3, 1, 1, 1), ("pool", 2, 2, 0, 1), ("conv", 3, 1, 1, 1), ("pool", 2, 2, 0, 1)],
    [("conv", 5, 2, 2, 1), ("pool", 3, 2, 1, 1), ("conv", 3, 1, 2, 2)],
    [("conv", 3, 1, 0, 1), ("pool", 3, 1, 1, 1), ("conv", 2, 2, 1, 1), ("pool", 2, 1, 0, 2)],
]


@pytest.mark.parametrize("specs", NETS)
def test_boxes_equal_gradient_support_on_vgg_style_nets(specs: list) -> None:
    torch.manual_seed(0)
    model = vgg_style(specs).eval()
    shape = (2, 23, 23)
    field = receptive_field(model, str(len(model) - 1), shape)
    assert field.empirical is None  # read from the graph
    twin = linearised(model)
    out = twin(torch.zeros(1, *shape))
    for unit in {(0, 0), (out.shape[2] - 1, out.shape[3] - 1), (out.shape[2] // 2, 1)}:
        assert field.box(*unit) == support_box(twin, twin, shape, unit)


def test_tiny_vgg_and_a_container_layer() -> None:
    torch.manual_seed(0)
    model = TinyVGG().eval()
    twin = linearised(model)
    for name, upto in [("features.3", twin.features[:4]), ("features", twin.features)]:
        field = receptive_field(model, name, (3, 16, 16))
        assert field.empirical is None
        units = [(0, 0), (1, 2), (3, 3)]
        expected = [support_box(twin, upto, (3, 16, 16), unit) for unit in units]
        assert field.boxes(units) == expected
        # the measured fallback (max-pools spread over their windows) agrees with the graph
        assert gradient_boxes(model, name, (3, 16, 16), units) == expected


def test_shapes_vgg_boxes(shapes_vgg: nn.Module) -> None:
    twin = linearised(shapes_vgg)
    field = receptive_field(shapes_vgg, "features.6", (3, 64, 64))
    assert field.empirical is None
    for unit in [(0, 0), (7, 7), (3, 5)]:
        assert field.box(*unit) == support_box(twin, twin.features[:7], (3, 64, 64), unit)


def test_residual_net_falls_back_to_measured_support() -> None:
    torch.manual_seed(0)
    model = TinyResidual().eval()
    field = receptive_field(model, "layer2", (3, 16, 16))
    assert field.empirical is not None  # `out += identity` breaks the chain
    twin = linearised(model)  # the reused ReLU module becomes an identity too
    upto = lambda x: twin.layer2(twin.layer1(twin.bn1(twin.conv1(x))))  # noqa: E731
    units = [(0, 0), (3, 4), (7, 7)]
    assert field.boxes(units) == [support_box(twin, upto, (3, 16, 16), u) for u in units]
    assert gradient_boxes(model, "layer2", (3, 16, 16), units) == field.boxes(units)


def test_model_is_left_as_it_was() -> None:
    model = TinyVGG().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    receptive_field(model, "features.4", (3, 16, 16))
    gradient_boxes(model, "features.4", (3, 16, 16), [(1, 1)])
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_crop_pads_border_patches() -> None:
    image = np.arange(5 * 5 * 3, dtype=np.uint8).reshape(5, 5, 3)
    patch = crop(image, (3, 5, 0, 2), 3)
    assert patch.shape == (3, 3, 3)
    np.testing.assert_array_equal(patch[:2, :2], image[3:5, 0:2])
    assert not patch[2].any() and not patch[:, 2].any()
