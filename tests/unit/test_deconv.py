"""The explicit deconvnet mirror and ``project``: hand values, agreement with DeconvNet (two
independent oracles), the documented batch-norm rule, clear errors where the mirror stops."""

from __future__ import annotations

import pytest
import torch
from nets import HAND_EXPECTED, HAND_TARGETS, HAND_X, SPELLINGS, hand_net, make, sample, torchvision_model
from torch import nn

from convscope.deconv import reconstruct
from convscope.errors import ConvscopeError
from convscope.methods import DeconvNet, GuidedBackprop, Saliency
from convscope.project import project
from convscope.targets import Channel, Class, MaxNeuron, Neuron


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal to 1e-5 relative to the map's largest entry, and not trivially zero."""
    scale = b.abs().max()
    assert scale > 0
    assert (a - b).abs().max() <= 1e-5 * scale


@pytest.mark.parametrize("name", ["pool_sum", "-pool_sum", "mixed", "max"])
def test_hand_computed_projection(name: str) -> None:
    assert torch.equal(reconstruct(hand_net(), HAND_X, HAND_TARGETS[name]), HAND_EXPECTED[(name, "deconv")])


TINY_TARGETS = [1, [0, 4, 2], MaxNeuron("features.4", 3), MaxNeuron("features.2", 1, rank=2),
                Channel("features.3", 2, "max") - 2 * Neuron("classifier.1", 3), Neuron("classifier.2", 5)]


@pytest.mark.parametrize("target", TINY_TARGETS, ids=repr)
def test_mirror_equals_deconvnet_on_tiny_vgg(target: object) -> None:
    model, x = make("tiny_vgg"), sample("tiny_vgg")
    got = reconstruct(model, x, target)
    assert_same(got, DeconvNet(model).attribute(x, target))
    assert not got.requires_grad and got.grad_fn is None  # a plain result, as the method's
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_mirror_follows_functional_relus_and_reshapes(spelling: str) -> None:
    model, x = make(f"spelling:{spelling}"), sample(f"spelling:{spelling}")
    assert_same(reconstruct(model, x, 2), DeconvNet(model).attribute(x, 2))


def test_mirror_of_batchnorm_avgpool_overlapping_pool_and_unusual_convs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),                       # overlapping windows: scatter-add
        nn.AvgPool2d(2), nn.Conv2d(4, 6, 2, padding="same", dilation=2, groups=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d((3, 5)), nn.Flatten(), nn.Dropout(0.5), nn.Linear(90, 4), nn.BatchNorm1d(4))
    with torch.no_grad():
        for bn in (model[1], model[11]):
            bn.running_var.uniform_(0.5, 2)
            bn.running_mean.uniform_(-1, 1)
            bn.weight.uniform_(0.5, 2)
    x = torch.randn(2, 3, 33, 31)
    for target in (2, MaxNeuron("5", 1), Channel("3", 0)):
        assert_same(reconstruct(model, x, target), DeconvNet(model).attribute(x, target))


def test_batchnorm_rule_is_its_scale() -> None:
    """Documented rule: the mirror of eval batch-norm multiplies by gamma / sqrt(running_var + eps)."""
    bn = nn.BatchNorm2d(2).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([2.0, -1.0]))
        bn.bias.copy_(torch.tensor([5.0, 5.0]))
        bn.running_var.copy_(torch.tensor([3.0, 0.25]) - bn.eps)
    model = nn.Sequential(bn, nn.Identity())
    x = torch.ones(1, 2, 1, 1)
    got = reconstruct(model, x, Channel("1", 0) + Channel("1", 1))
    torch.testing.assert_close(got, torch.tensor([2.0 / 3**0.5, -1.0 / 0.5]).reshape(1, 2, 1, 1))


def test_mirror_equals_deconvnet_on_torchvision_vgg16() -> None:
    pytest.importorskip("torchvision")
    model = torchvision_model("vgg16")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    target = Class(3) + MaxNeuron("features.28", 5)  # at 64x64 the adaptive pool spreads 2x2 to 7x7
    assert_same(reconstruct(model, x, target), DeconvNet(model).attribute(x, target))


def test_mirror_equals_deconvnet_on_the_zoo_vgg(request: pytest.FixtureRequest) -> None:
    pytest.importorskip("convscope.zoo")
    model = request.getfixturevalue("shapes_vgg")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for target in (1, MaxNeuron("features.6", 3)):
        assert_same(reconstruct(model, x, target), DeconvNet(model).attribute(x, target))


def test_residual_add_and_branch_stop_the_mirror_with_a_named_error() -> None:
    model, x = make("tiny_residual"), sample("tiny_residual")
    with pytest.raises(ConvscopeError, match=r"Tensor.add_ in 'layer2'.*residual add.*DeconvNet\(model\)"):
        reconstruct(model, x, 1)
    with pytest.raises(ConvscopeError, match=r"layer2.conv1: it reads an earlier tensor"):
        reconstruct(model, x, MaxNeuron("layer2.conv1", 0))
    # below the first add the model is a chain, so the mirror works there
    below_add = MaxNeuron("layer1.bn2", 2)
    assert_same(reconstruct(model, x, below_add), DeconvNet(model).attribute(x, below_add))


class _Sigmoidal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.Tanh()
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.act(self.conv(x)))
        return self.fc(h.flatten(1))


def test_non_relu_activations_stop_the_mirror_with_a_named_error() -> None:
    model, x = _Sigmoidal(), torch.randn(1, 3, 8, 8)
    with pytest.raises(ConvscopeError, match=r"cannot pass torch.sigmoid in the model's forward"):
        reconstruct(model, x, 0)
    with pytest.raises(ConvscopeError, match=r"cannot pass act \(Tanh\): Tanh has no deconvnet mirror"):
        reconstruct(model, x, Channel("act", 0))
    assert_same(reconstruct(model, x, Channel("conv", 1)), DeconvNet(model).attribute(x, Channel("conv", 1)))


def test_reconstruct_leaves_model_and_input_untouched() -> None:
    model, x = make("tiny_vgg").train(), sample("tiny_vgg")
    model.features[1].eval()
    before_x, before_params = x.clone(), [p.clone() for p in model.parameters()]
    flags = [m.training for m in model.modules()]
    with pytest.raises(ConvscopeError):
        reconstruct(model, x, 9)  # class out of range: raised after the forward pass
    reconstruct(model, x, 1)
    assert torch.equal(x, before_x) and [m.training for m in model.modules()] == flags
    assert all(torch.equal(p, q) and p.grad is None for p, q in zip(model.parameters(), before_params))
    assert torch._C._len_torch_function_stack() == 0
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_project_top1_is_the_max_neuron_deconvnet() -> None:
    model, x = make("tiny_vgg"), sample("tiny_vgg")
    p = project(model, x, "features.3", 4)
    assert p.maps.shape == (3, 1, 3, 16, 16) and p.values.shape == (3, 1) and p.positions.shape == (3, 1, 2)
    torch.testing.assert_close(p.maps[:, 0], DeconvNet(model).attribute(x, MaxNeuron("features.3", 4)))


@pytest.mark.parametrize("rule, method", [("deconvnet", DeconvNet), ("guided", GuidedBackprop), ("gradient", Saliency)])
def test_project_top3_projects_each_strong_unit_alone(rule: str, method: type) -> None:
    model, x = make("tiny_vgg").eval(), sample("tiny_vgg", n=2)
    p = project(model, x, "features.3", 4, rule=rule, top=3)
    with torch.no_grad():
        fmap = model.features[:4](x)[:, 4]  # [2, 8, 8], computed independently
    for n in range(2):
        values, flat = torch.topk(fmap[n].flatten(), 3)
        torch.testing.assert_close(p.values[n], values)
        assert p.positions[n].tolist() == [[int(i) // 8, int(i) % 8] for i in flat]
        for k in range(3):  # the seed: that unit's activation, everything else zero
            y, xx = p.positions[n, k].tolist()
            seed = float(values[k]) * Neuron("features.3", 4, y, xx)
            torch.testing.assert_close(p.maps[n, k], method(model).attribute(x[n:n + 1], seed)[0])
            if rule == "deconvnet":
                assert_same(p.maps[n, k], reconstruct(model, x[n:n + 1], seed)[0])


def test_project_errors() -> None:
    model, x = make("tiny_vgg"), sample("tiny_vgg")
    with pytest.raises(ConvscopeError, match="rule='deconv' is not a projection rule"):
        project(model, x, "features.3", 0, rule="deconv")
    with pytest.raises(ConvscopeError, match="65 strongest positions of a feature map with 64"):
        project(model, x, "features.3", 0, top=65)
    with pytest.raises(ConvscopeError, match="channel 8 is out of range"):
        project(model, x, "features.3", 8)
