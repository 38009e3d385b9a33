"""Gradient methods: hand-computed maps, autograd and naive-reference agreement, wrt a layer,
torchvision ResNet-50, the zoo models, the registry and input errors."""

from __future__ import annotations

import pytest
import torch
from nets import HAND_EXPECTED, HAND_TARGETS, HAND_X, hand_net, make, sample, torchvision_model
from reference.naive_backprop import naive_attribution
from torch import nn

from convscope.errors import ConvscopeError
from convscope.methods import (
    DeconvNet,
    GuidedBackprop,
    InputXGradient,
    Method,
    Saliency,
    get_method,
    methods,
    register_method,
)
from convscope.targets import Channel, Neuron

RULE_METHODS: dict[str, type[Method]] = {"gradient": Saliency, "deconv": DeconvNet, "guided": GuidedBackprop,
                                         "input_x_gradient": InputXGradient}


@pytest.mark.parametrize("case", list(HAND_EXPECTED), ids="-".join)
def test_hand_computed_maps(case: tuple[str, str]) -> None:
    target, rule = case
    got = RULE_METHODS[rule](hand_net()).attribute(HAND_X, HAND_TARGETS[target])
    assert torch.equal(got, HAND_EXPECTED[case])


def test_saliency_is_the_signed_autograd_gradient() -> None:
    model, x = make("tiny_vgg").eval(), sample("tiny_vgg")
    leaf = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(model(leaf)[:, 3].sum(), leaf)
    got = Saliency(model).attribute(x, 3)
    torch.testing.assert_close(got, expected)
    assert (got < 0).any() and (got > 0).any()
    torch.testing.assert_close(InputXGradient(model).attribute(x, 3), x * expected)


def test_wrt_layer_is_the_gradient_at_that_layer() -> None:
    model, x = make("tiny_vgg").eval(), sample("tiny_vgg")
    below, above = model.features[:4], nn.Sequential(*model.features[4:], model.classifier)
    a = below(x).detach()
    got = Saliency(model).attribute(x, 2, wrt="features.3")
    assert got.shape == a.shape
    leaf = a.clone().requires_grad_()
    (expected,) = torch.autograd.grad(above(leaf)[:, 2].sum(), leaf)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(InputXGradient(model).attribute(x, 2, wrt=model.features[3]), a * expected)
    for rule, method in [("deconv", DeconvNet), ("guided", GuidedBackprop)]:  # rules above the layer only
        naive = naive_attribution(above, a, lambda m, t: m(t)[:, 2], rule)
        torch.testing.assert_close(method(model).attribute(x, 2, wrt="features.3"), naive)


def test_wrt_a_layer_followed_by_an_inplace_relu() -> None:
    """bn1's output is rectified in place next; the gradient must still be w.r.t. bn1's own output."""
    model, x = make("tiny_residual").eval(), sample("tiny_residual")
    a = model.bn1(model.conv1(x)).detach()
    leaf = a.clone().requires_grad_()
    rest = model.fc(torch.flatten(model.avgpool(model.layer2(model.layer1(model.relu(leaf.clone())))), 1))
    (expected,) = torch.autograd.grad(rest[:, 4].sum(), leaf)
    torch.testing.assert_close(Saliency(model).attribute(x, 4, wrt="bn1"), expected)
    torch.testing.assert_close(InputXGradient(model).attribute(x, 4, wrt="bn1"), a * expected)
    # a target on bn1 reads the pre-ReLU values too: d(sum of channel 0)/d x equals autograd's
    leaf_x = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(model.bn1(model.conv1(leaf_x))[:, 0].sum(), leaf_x)
    torch.testing.assert_close(Saliency(model).attribute(x, Channel("bn1", 0)), g)


@pytest.mark.parametrize("rule, method", [("deconv", DeconvNet), ("guided", GuidedBackprop)])
def test_tiny_residual_matches_the_naive_reference(rule: str, method: type[Method]) -> None:
    model, x = make("tiny_residual").eval(), sample("tiny_residual")
    got = method(model).attribute(x, [0, 3, 4])
    idx = torch.tensor([0, 3, 4])
    expected = naive_attribution(model, x, lambda m, t: m(t).gather(1, idx[:, None]), rule)
    torch.testing.assert_close(got, expected)


def test_torchvision_resnet50_guided_and_neuron_match_the_naive_reference() -> None:
    pytest.importorskip("torchvision")
    model = torchvision_model("resnet50")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # layer3's output is 2x2
    got_class, got_neuron = GuidedBackprop(model).attribute(x, targets=[7, Neuron("layer3.1", 5, 1, 0)])
    torch.testing.assert_close(got_class, naive_attribution(model, x, lambda m, t: m(t)[:, 7], "guided"))
    def layer3_1(m: nn.Module, t: torch.Tensor) -> torch.Tensor:
        return m.layer3[1](m.layer3[0](m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(t))))))))

    neuron = naive_attribution(model, x, lambda m, t: layer3_1(m, t)[:, 5, 1, 0], "guided")
    torch.testing.assert_close(got_neuron, neuron)


@pytest.mark.parametrize("rule, method", [("gradient", Saliency), ("deconv", DeconvNet), ("guided", GuidedBackprop)])
def test_zoo_resnet_matches_the_naive_reference(rule: str, method: type[Method],
                                                request: pytest.FixtureRequest) -> None:
    pytest.importorskip("convscope.zoo")
    model = request.getfixturevalue("shapes_resnet")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    got = method(model).attribute(x, 2)
    torch.testing.assert_close(got, naive_attribution(model, x, lambda m, t: m(t)[:, 2], rule))
    assert got.abs().max() > 0


def test_registry() -> None:
    names = list(methods())
    assert names[:4] == ["saliency", "input_x_gradient", "deconvnet", "guided_backprop"]
    assert get_method("guided-backprop") is GuidedBackprop and get_method("deconvnet") is DeconvNet
    assert get_method("GuidedBackprop") is GuidedBackprop and get_method("guidedbackprop") is GuidedBackprop
    assert get_method("gradcam").name == "grad_cam" and get_method("Grad-CAM").name == "grad_cam"
    assert all(info.description and info.cls.name == name for name, info in methods().items())
    with pytest.raises(ConvscopeError, match="Did you mean 'saliency'"):
        get_method("salency")
    with pytest.raises(ValueError, match="taken"):
        register_method("saliency", "again")(type("Other", (Saliency,), {}))
    with pytest.raises(ValueError, match="snake_case"):
        register_method("Bad-Name", "x")


def test_input_errors_name_the_problem() -> None:
    model = make("tiny_vgg")
    with pytest.raises(ConvscopeError, match="not a torch tensor"):
        Saliency(model).attribute(sample("tiny_vgg").numpy(), 0)  # type: ignore[arg-type]
    with pytest.raises(ConvscopeError, match="floating-point"):
        Saliency(model).attribute(torch.zeros(1, 3, 16, 16, dtype=torch.long), 0)
    with pytest.raises(ConvscopeError, match="max_batch"):
        Saliency(model, max_batch=0)
    with pytest.raises(ConvscopeError, match=r"not a torch\.nn\.Module"):
        Saliency("vgg")  # type: ignore[arg-type]
    with pytest.raises(ConvscopeError, match="forward pass failed on an input of shape"):
        Saliency(model).attribute(torch.zeros(2, 4, 16, 16), 0)
    with pytest.raises(ConvscopeError, match="batch dimension"):
        Saliency(model).attribute(torch.zeros(3, 16, 16), 0)
    with pytest.raises(ConvscopeError, match=r"no layer named 'features\.99'"):
        Saliency(model).attribute(sample("tiny_vgg"), 0, wrt="features.99")


def test_works_inside_no_grad_and_inference_mode() -> None:
    model, x = make("tiny_vgg"), sample("tiny_vgg")
    expected = GuidedBackprop(model).attribute(x, 1)
    with torch.no_grad():
        torch.testing.assert_close(GuidedBackprop(model).attribute(x, 1), expected)
    with torch.inference_mode():
        got = GuidedBackprop(model).attribute(x.clone(), 1)
    torch.testing.assert_close(got.clone(), expected)
