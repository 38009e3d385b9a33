"""Backward rules: formulas, every ReLU spelling, RuleMap placement, scoping of the mode."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from nets import SPELLINGS, SpellingNet, make, sample
from reference.naive_backprop import NaiveReLU, naive_attribution, patched_functional_relu

from convscope.backends.torch import apply_rules, rule_relu
from convscope.errors import ConvscopeError
from convscope.methods import Saliency
from convscope.rules import DeconvReLU, Gradient, GuidedReLU, RuleMap, as_rule_map

RULES = {"gradient": Gradient(), "deconv": DeconvReLU(), "guided": GuidedReLU()}


def test_rule_formulas_on_hand_values() -> None:
    g = torch.tensor([-2.0, -1.0, 1.0, 2.0])
    r = torch.tensor([0.0, 3.0, 0.0, 3.0])  # relu output: z <= 0, z > 0, z <= 0, z > 0
    assert Gradient().backward(g, r).tolist() == [0.0, -1.0, 0.0, 2.0]
    assert DeconvReLU().backward(g, r).tolist() == [0.0, 0.0, 1.0, 2.0]
    assert GuidedReLU().backward(g, r).tolist() == [0.0, 0.0, 0.0, 2.0]


@pytest.mark.parametrize("inplace", [False, True])
def test_rule_relu_forward_is_relu_and_inplace_mutates(inplace: bool) -> None:
    z = torch.tensor([-1.0, 0.0, 2.0])
    h = (z * 1).requires_grad_(False)
    y = rule_relu(h, GuidedReLU(), inplace=inplace)
    assert y.tolist() == [0.0, 0.0, 2.0]
    assert (y is h) == inplace and h.tolist() == ([0.0, 0.0, 2.0] if inplace else [-1.0, 0.0, 2.0])


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("rule", ["gradient", "deconv", "guided"])
def test_every_relu_spelling_gets_the_rule(spelling: str, rule: str) -> None:
    name = f"spelling:{spelling}"
    model, x = make(name).eval(), sample(name)
    ours = Saliency(model, rules=RULES[rule]).attribute(x, 1)
    expected = naive_attribution(model, x, lambda m, t: m(t)[:, 1], rule)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    if rule != "gradient":  # the rule changed the answer, so it really was applied
        plain = naive_attribution(model, x, lambda m, t: m(t)[:, 1], "gradient")
        assert (ours - plain).abs().max() > 1e-3


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_mode_sees_each_relu_call_exactly_once(spelling: str) -> None:
    model = make(f"spelling:{spelling}").eval()
    with apply_rules(model, RuleMap(GuidedReLU())) as mode:
        model(sample(f"spelling:{spelling}"))
    assert mode.calls == 3


def test_full_backward_hooks_break_on_inplace_relu_and_the_mode_does_not() -> None:
    """Why the mode: a full backward hook on nn.ReLU(inplace=True) makes autograd raise."""
    model, x = make("spelling:shared_inplace").eval(), sample("spelling:shared_inplace")
    hooked = copy.deepcopy(model)
    hooked.relu.register_full_backward_hook(lambda m, gin, gout: (torch.relu(gout[0]),))
    with pytest.raises(RuntimeError, match="modified inplace"):
        hooked(x.clone().requires_grad_())[:, 0].sum().backward()
    ours = Saliency(model, rules=DeconvReLU()).attribute(x, 0)
    torch.testing.assert_close(ours, naive_attribution(model, x, lambda m, t: m(t)[:, 0], "deconv"))


def test_threshold_other_than_relu_is_left_alone() -> None:
    z = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    with apply_rules(torch.nn.Identity(), RuleMap(DeconvReLU())) as mode:
        y = F.threshold(z, 1.0, -3.0)
    assert mode.calls == 0 and y.tolist() == [-3.0, -3.0, 2.0]


def _naive_by_module(model: torch.nn.Module, x: torch.Tensor, rules: dict[str, str], default: str) -> torch.Tensor:
    """Naive reference with per-module rules: swap each named nn.ReLU by hand."""
    clone = copy.deepcopy(model).eval()
    for name, module in list(clone.named_modules()):
        if isinstance(module, torch.nn.ReLU):
            parent, _, child = name.rpartition(".")
            owner = clone.get_submodule(parent) if parent else clone
            setattr(owner, child, NaiveReLU(rules.get(name, default)))
    leaf = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(clone(leaf)[:, 2].sum(), leaf)
    return grad


def test_rule_map_innermost_listed_layer_wins() -> None:
    model, x = make("tiny_vgg").eval(), sample("tiny_vgg")
    rules = RuleMap(DeconvReLU(), layers={"features": GuidedReLU(), "features.4": Gradient()})
    ours = Saliency(model, rules=rules).attribute(x, 2)
    expected = _naive_by_module(model, x, {"features.1": "guided", "features.4": "gradient"}, default="deconv")
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("inner, outer", [("guided", "gradient"), ("gradient", "guided")])
def test_rule_map_reaches_functional_relus_inside_a_listed_block(inner: str, outer: str) -> None:
    model = torch.nn.Sequential(SpellingNet("F.relu")).eval()
    torch.manual_seed(0)
    model[0].load_state_dict(make("spelling:F.relu").state_dict())
    x = sample("spelling:F.relu")
    ours = Saliency(model, rules=RuleMap(RULES[outer], layers={"0": RULES[inner]})).attribute(x, 3)
    torch.testing.assert_close(ours, naive_attribution(model, x, lambda m, t: m(t)[:, 3], inner))


def test_rule_map_errors_name_the_problem() -> None:
    with pytest.raises(ConvscopeError, match=r"features\.4"):
        Saliency(make("tiny_vgg"), rules=RuleMap(GuidedReLU(), {"feature.4": Gradient()})).attribute(
            sample("tiny_vgg"), 0)
    with pytest.raises(ConvscopeError, match="not a backward rule"):
        RuleMap("guided")  # type: ignore[arg-type]
    with pytest.raises(ConvscopeError, match="neither a RuleMap"):
        as_rule_map("guided", Gradient())  # type: ignore[arg-type]
    assert RuleMap().is_gradient and not RuleMap(Gradient(), {"x": GuidedReLU()}).is_gradient


def test_mode_and_hooks_are_gone_after_the_block_even_on_error() -> None:
    model = make("tiny_vgg").eval()
    rules = RuleMap(DeconvReLU(), layers={"features.1": GuidedReLU()})
    with pytest.raises(ValueError), apply_rules(model, rules):
        raise ValueError("inside")
    assert torch._C._len_torch_function_stack() == 0
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    z = torch.tensor([-1.0, 2.0], requires_grad=True)
    (g,) = torch.autograd.grad(torch.relu(z).sum() * -1, z)  # plain relu again: negative signal passes
    assert g.tolist() == [0.0, -1.0]


def test_reference_patch_is_undone() -> None:
    before = (F.relu, torch.relu, torch.Tensor.relu_, F.threshold)
    with patched_functional_relu("guided"):
        assert F.relu is not before[0]
    assert (F.relu, torch.relu, torch.Tensor.relu_, F.threshold) == before
