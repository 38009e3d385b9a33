"""LRP rules against hand-computed values, composites, every layer spelling, folding, scoping."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convscope
from convscope.errors import ConvscopeError
from convscope.methods import get_method
from convscope.methods.lrp import (LRP, AlphaBeta, Composite, Epsilon, Flat, Gamma, Layer, Norm, Pass, WSquare, ZBox,
                                   ZPlus, canonical_report, composite, conservation, lrp_rules)

# one linear layer: x = [1, 2, 3], z = W x + b = [6, -0.5], upper relevance R = [1, 2]
W = torch.tensor([[1.0, -1.0, 2.0], [0.5, 1.0, -1.0]])
B = torch.tensor([1.0, 0.0])
X = torch.tensor([[1.0, 2.0, 3.0]])
R = torch.tensor([[1.0, 2.0]])
LAYER = Layer(lambda x, w, b: F.linear(x, w, b), W, B)

HAND = {
    # R_j = x_j sum_k W_kj R_k / z_k, R / z = [1/6, -4]
    "epsilon0": (Epsilon(0), [1 / 6 - 2, 2 * (-1 / 6 - 4), 3 * (2 / 6 + 4)]),
    # z+ = [1 + 6 + 1, 0.5 + 2] = [8, 2.5]; R / z+ = [1/8, 0.8]
    "zplus": (ZPlus(0), [1 / 8 + 0.5 * 0.8, 2 * 0.8, 3 * 2 / 8]),
    # positive part = z-plus; negative: N = [-2, -3], x_j W-_kj R_k / N_k = [0, 1, 2]
    "alpha2beta1": (AlphaBeta(2, 1, 0), [2 * 0.525, 2 * 1.6 - 1, 2 * 0.75 - 2]),
    # z0 > 0: u0 = W0 + W0+ = [2, -1, 4], Z = 12 + 2 b0 = 14; z1 < 0: v1 = W1 + W1- = [.5, 1, -2], Z = -3.5
    "gamma1": (Gamma(1.0, 0), [2 / 14 - 1 / 3.5, -2 / 14 - 4 / 3.5, 12 / 14 + 12 / 3.5]),
    # l = 0, h = 4: z = [6 - 1 + 4, -0.5 + 4] = [9, 3.5]
    "zbox": (ZBox(0.0, 4.0, 0), [1 / 9 + 0.5 * 2 / 3.5, 2 / 9 + 2 * 2 / 3.5, 6 / 9 + 1 * 2 / 3.5]),
    # w^2 with b^2: z = [1 + 1 + 4 + 1, .25 + 1 + 1] = [7, 2.25]
    "wsquare": (WSquare(0), [1 / 7 + 0.25 * 2 / 2.25, 1 / 7 + 2 / 2.25, 4 / 7 + 2 / 2.25]),
    "flat": (Flat(0), [1.0, 1.0, 1.0]),
    "pass": (Pass(), [1.0, 2.0]),
}


@pytest.mark.parametrize("name", list(HAND))
def test_each_rule_equals_its_hand_computed_formula(name: str) -> None:
    rule, expected = HAND[name]
    found = rule.relevance(LAYER, X, R)
    torch.testing.assert_close(found, torch.tensor([expected]), rtol=1e-6, atol=1e-6)


def test_epsilon_shrinks_and_lrp0_conserves_without_bias() -> None:
    free = Layer(LAYER.fn, W, None)
    torch.testing.assert_close(Epsilon(0).relevance(free, X, R).sum(), R.sum())
    assert Epsilon(10.0).relevance(free, X, R).abs().sum() < Epsilon(0).relevance(free, X, R).abs().sum()
    assert AlphaBeta(1, 0, 0).relevance(LAYER, X, R).tolist() == ZPlus(0).relevance(LAYER, X, R).tolist()


def test_rules_equal_zennit_on_a_conv_with_mixed_signs() -> None:
    """Negative inputs and a bias: each rule against Zennit's hook on one nn.Conv2d."""
    zennit_rules = pytest.importorskip("zennit.rules")
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x, r = torch.randn(1, 2, 5, 5), torch.randn(1, 3, 5, 5)
    pairs = [(Epsilon(0.1), zennit_rules.Epsilon(0.1)), (ZPlus(), zennit_rules.ZPlus()),
             (AlphaBeta(2, 1), zennit_rules.AlphaBeta(2, 1)), (Gamma(0.25), zennit_rules.Gamma(0.25)),
             (ZBox(-2.0, 2.0), zennit_rules.ZBox(-2.0, 2.0)), (WSquare(), zennit_rules.WSquare()),
             (Flat(), zennit_rules.Flat()), (Norm(), zennit_rules.Epsilon(1e-6))]
    layer = Layer(lambda v, w, b: F.conv2d(v, w, b, padding=1), conv.weight, conv.bias)
    for ours, theirs in pairs:
        handle = theirs.register(conv)
        leaf = x.clone().requires_grad_()
        (expected,) = torch.autograd.grad(conv(leaf), leaf, r)
        handle.remove()
        torch.testing.assert_close(ours.relevance(layer, x, r), expected, rtol=1e-5, atol=1e-6, msg=repr(ours))


def test_composites_by_name_have_zennits_defaults() -> None:
    c = composite("epsilon_gamma_box", low=-3, high=3)
    assert (c.conv, c.linear, c.first, c.pool, c.sum, c.norm) == (
        Gamma(0.25, 1e-6), Epsilon(1e-6), ZBox(-3, 3, 1e-6), Norm(1e-6), Norm(1e-6), Pass())
    assert composite("epsilon_plus_flat").first == Flat() and composite("epsilon_plus").first is None
    assert composite("epsilon-alpha2-beta1-flat").conv == AlphaBeta(2, 1)
    with pytest.raises(ConvscopeError, match="low= and high="):
        composite("epsilon_gamma_box")
    with pytest.raises(ConvscopeError, match="epsilon_plus"):
        composite("epsilon_pluss")
    with pytest.raises(ConvscopeError, match="AlphaBeta"):
        AlphaBeta(2, 2)


class Chain(nn.Module):
    """conv -> relu -> conv -> relu -> avg -> linear, as modules."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv1, self.conv2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


class FunctionalChain(Chain):
    """The same network written with functional calls, in place where possible."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.conv2d(x, self.conv1.weight, self.conv1.bias, padding=1).relu_()
        h = torch.relu_(F.conv2d(h, self.conv2.weight, self.conv2.bias, padding=1))
        return F.linear(h.mean((2, 3)), self.fc.weight, self.fc.bias)


def _naive_epsilon(model: Chain, x: torch.Tensor, c: int, eps: float) -> torch.Tensor:
    """LRP-epsilon on Chain by the textbook formula, layer by layer (the independent oracle)."""
    def share(a: torch.Tensor, layer: object, r: torch.Tensor) -> torch.Tensor:
        a = a.detach().requires_grad_()
        z = layer(a)
        s = z + eps * (z.sign() + (z == 0).float())
        (g,) = torch.autograd.grad(z, a, r / s.detach())
        return a * g

    a1 = F.relu(model.conv1(x))
    a2 = F.relu(model.conv2(a1))
    p = F.adaptive_avg_pool2d(a2, 1).flatten(1)
    out = model.fc(p)
    r = torch.zeros_like(out)
    r[:, c] = out[:, c]
    r = share(p, model.fc, r.detach()).view(-1, 4, 1, 1)
    r = share(a2, lambda t: F.adaptive_avg_pool2d(t, 1), r)
    r = share(a1, model.conv2, r)
    return share(x, model.conv1, r).detach()


@pytest.mark.parametrize("cls", [Chain, FunctionalChain])
def test_modules_and_functional_in_place_calls_get_the_same_rules(cls: type) -> None:
    model, x = cls().eval(), torch.randn(2, 2, 6, 6)
    every = Composite(conv=Epsilon(0.01), linear=Epsilon(0.01), pool=Norm(0.01))
    found = LRP(model, composite=every).attribute(x, 1)
    torch.testing.assert_close(found, _naive_epsilon(model, x, 1, 0.01), rtol=1e-5, atol=1e-7)


def test_user_mapping_by_name_and_type_wins() -> None:
    model, x = Chain().eval(), torch.randn(1, 2, 6, 6)
    base = Composite(conv=Epsilon(0.01), linear=Epsilon(0.01), pool=Norm(0.01))
    plain = LRP(model, composite=base).attribute(x, 0)
    by_name = LRP(model, composite=base.with_layers({"conv2": ZPlus()})).attribute(x, 0)
    by_type = LRP(model, composite=base.with_layers({nn.Conv2d: ZPlus()})).attribute(x, 0)
    both = LRP(model, composite=Composite(conv=ZPlus(), linear=Epsilon(0.01), pool=Norm(0.01))).attribute(x, 0)
    assert (plain - by_name).abs().max() > 1e-4
    torch.testing.assert_close(by_type, both)
    with pytest.raises(ConvscopeError, match="conv2"):
        LRP(model, composite=base.with_layers({"conv3": ZPlus()})).attribute(x, 0)


class Residual(nn.Module):
    """conv -> bn -> relu, plus a skip (in place), -> linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv, self.bn, self.fc = nn.Conv2d(2, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2), nn.Linear(2, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 2)
            self.bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x))
        h += x
        return self.fc(F.relu(h).mean((2, 3)))


def test_batch_norm_is_folded_into_its_conv_and_sums_split_by_contribution() -> None:
    model, x = Residual().eval(), torch.randn(1, 2, 5, 5)
    rule = Epsilon(0.001)
    found = LRP(model, composite=Composite(conv=rule, linear=rule, pool=rule, sum=rule)).attribute(x, 2)
    # the oracle: fold by hand, then z-rule shares written out
    bn = model.bn
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    w, b = model.conv.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale
    with torch.no_grad():
        z = F.conv2d(x, w, b, padding=1)
        h = z + x
        a = F.relu(h)
        p = a.mean((2, 3))
        out = model.fc(p)
        r_out = torch.zeros_like(out)
        r_out[:, 2] = out[:, 2]
    layers = [(model.fc, p), (lambda t: t.mean((2, 3)), a)]
    r = r_out
    for layer, inp in layers:
        inp = inp.detach().requires_grad_()
        zz = layer(inp)
        (g,) = torch.autograd.grad(zz, inp, r / (zz + 0.001 * zz.sign()).detach())
        r = inp * g
    share = r / (h + 0.001 * h.sign())
    r_z, r_skip = z * share, x * share
    xl = x.clone().requires_grad_()
    zz = F.conv2d(xl, w, b, padding=1)
    (g,) = torch.autograd.grad(zz, xl, r_z / (zz + 0.001 * zz.sign()).detach())
    torch.testing.assert_close(found, xl.detach() * g + r_skip, rtol=1e-5, atol=1e-6)
    unfolded = LRP(model, composite=Composite(conv=rule, linear=rule, pool=rule, sum=rule), canonize=False)
    assert (unfolded.attribute(x, 2) - found).abs().max() > 1e-4  # the batch norm then only passes relevance
    report = canonical_report(model)
    assert report.folds == [("conv", "bn")] and report.sums == ["add"] and not report.unhandled


def _state(model: nn.Module) -> dict[str, object]:
    return {"params": {k: v.clone() for k, v in model.state_dict().items()},
            "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                         for m in model.modules()),
            "training": [m.training for m in model.modules()], "grads": [p.grad for p in model.parameters()]}


def _same(a: dict[str, object], b: dict[str, object]) -> None:
    assert a["hooks"] == b["hooks"] and a["training"] == b["training"] and a["grads"] == b["grads"]
    for k, v in a["params"].items():  # type: ignore[attr-defined]
        assert torch.equal(v, b["params"][k]), k  # type: ignore[index]


class Raising(Residual):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.bn(self.conv(x))
        raise RuntimeError("the model fails")


def test_model_parameters_input_and_modes_untouched_also_when_the_forward_raises() -> None:
    for cls in (Residual, Raising):
        model, x = cls().train(), torch.randn(2, 2, 5, 5)
        before, x0 = _state(model), x.clone()
        if cls is Raising:
            with pytest.raises(ConvscopeError, match="the model fails"):
                LRP(model, composite="epsilon_plus").attribute(x, 0)
        else:
            LRP(model, composite="epsilon_plus").attribute(x, 0, wrt="bn")
        _same(before, _state(model))
        assert torch.equal(x, x0) and not x.requires_grad
        assert torch._C._len_torch_function_stack() == 0
        y = model.eval()(x) if cls is Residual else None  # the model itself computes as before, no rule attached
        if y is not None:
            assert y.grad_fn is not None and "Relevance" not in type(y.grad_fn).__name__


class Squared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.fc((h * h).mean((2, 3)))


class Sine(Squared):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.sin(self.conv(x)).mean((2, 3)))


def test_operations_without_a_rule_are_refused_never_silently_wrong() -> None:
    x = torch.randn(1, 1, 5, 5)
    with pytest.raises(ConvscopeError, match="'mul'.*'the model'.*two input-dependent"):
        LRP(Squared(), canonize=False).attribute(x, 0)
    assert canonical_report(Sine()).unhandled == ["sin"]
    with pytest.raises(ConvscopeError, match="1 operation.*sin"):
        LRP(Sine()).attribute(x, 0)  # before any work: from the traced graph
    with pytest.raises(ConvscopeError, match="'sin'"):
        LRP(Sine(), canonize=False).attribute(x, 0)  # while it runs


def test_registered_with_targets_batches_and_layer_relevance() -> None:
    assert get_method("lrp") is LRP and convscope.LRP is LRP and convscope.lrp.composite is composite
    model, x = Residual().eval(), torch.randn(3, 2, 5, 5)
    method = LRP(model, composite="epsilon_plus", max_batch=2)
    a, b = method.attribute(x, targets=[0, 1])
    torch.testing.assert_close(a, LRP(model, composite="epsilon_plus").attribute(x, 0))
    assert not torch.allclose(a, b)
    assert method.attribute(x, 0, wrt="bn").shape == (3, 2, 5, 5)


def test_conservation_report_without_biases_and_stabilisers() -> None:
    model = Residual().eval()
    with torch.no_grad():
        model.bn.running_mean.zero_()
        model.bn.bias.zero_()
        model.fc.bias.zero_()
    tiny = Epsilon(1e-12)
    report = conservation(model, torch.randn(2, 2, 5, 5), 1, composite=Composite(tiny, tiny, pool=tiny, sum=tiny),
                          layers=["bn", "fc"])
    assert report.layers == ("bn", "fc", "input")
    for i in (1, 2):  # the linear layer's input and the model's input: every path crosses them
        assert report.drift(i).abs().max() < 1e-5
    assert (report.sums[0] < report.score).all()  # the residual branch holds a share, the skip the rest
    with_bias = conservation(Residual().eval(), torch.randn(2, 2, 5, 5), 1, composite="epsilon_plus", layers=["bn"])
    assert with_bias.drift(1).abs().max() > 1e-3 and "input" in with_bias.table()


def test_lrp_rules_context_alone_reaches_a_copy_and_leaves_no_trace() -> None:
    model = copy.deepcopy(Chain()).eval()
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    with lrp_rules(model, composite("epsilon_plus")) as mode:
        out = model(x)
    assert mode.counts["conv"] == 2 and mode.counts["linear"] == 1 and mode.counts["pass"] == 2
    seed = torch.zeros_like(out)
    seed[:, 0] = out[:, 0]
    (r,) = torch.autograd.grad(out, x, seed)
    assert r.shape == x.shape and torch.isfinite(r).all()
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
