"""IntegratedGradients and GradientSHAP: quadrature rules by hand, exact answers on linear models,
a naive autograd loop as the reference (per-sample baselines and targets, layers), the
completeness identity on a zoo model, the batch bound and seeded draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nets import make, sample
from torch import nn

from convscope.errors import ConvscopeError
from convscope.methods import GradientSHAP, IntegratedGradients
from convscope.methods.path import quadrature
from convscope.targets import Channel

TINY, X = make("tiny_vgg").eval(), sample("tiny_vgg")


def naive_nodes(rule: str, n: int) -> tuple[list[float], list[float]]:
    """Textbook quadrature on [0, 1] (Captum's trapezoid: 1/n weights halved at the ends)."""
    if rule == "gauss_legendre":
        t, w = np.polynomial.legendre.leggauss(n)
        return list((t + 1) / 2), list(w / 2)
    k = np.arange(n)
    nodes = {"riemann_left": k / n, "riemann_right": (k + 1) / n, "riemann_middle": (k + 0.5) / n,
             "riemann_trapezoid": k / (n - 1)}[rule]
    weights = np.full(n, 1 / n)
    if rule == "riemann_trapezoid":
        weights[[0, -1]] /= 2
    return list(nodes), list(weights)


def naive_ig(model: nn.Module, x: torch.Tensor, baseline: torch.Tensor, score, rule: str, n: int) -> torch.Tensor:
    total = torch.zeros_like(x)
    for a, w in zip(*naive_nodes(rule, n)):
        point = (baseline + a * (x - baseline)).requires_grad_()
        (g,) = torch.autograd.grad(score(model(point)).sum(), point)
        total += w * g
    return (x - baseline) * total


def test_quadrature_by_hand() -> None:
    nodes, weights = quadrature("riemann_middle", 2)
    assert nodes.tolist() == [0.25, 0.75] and weights.tolist() == [0.5, 0.5]
    nodes, weights = quadrature("riemann_trapezoid", 3)
    assert nodes.tolist() == [0.0, 0.5, 1.0] and weights.tolist() == pytest.approx([1 / 6, 1 / 3, 1 / 6])
    nodes, weights = quadrature("gauss_legendre", 3)  # exact for t^5: integral 1/6
    assert float((weights * nodes ** 5).sum()) == pytest.approx(1 / 6, abs=1e-14)
    assert quadrature("gausslegendre", 4)[0].tolist() == quadrature("gauss_legendre", 4)[0].tolist()


@pytest.mark.parametrize("rule", ["riemann_left", "riemann_right", "riemann_middle", "gauss_legendre"])
def test_linear_model_gives_input_minus_baseline_times_weight(rule: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    x, baseline = torch.randn(2, 3, 2, 2), torch.randn(3, 2, 2)
    got = IntegratedGradients(model, steps=5, rule=rule, baseline=baseline).attribute(x, [2, 0])
    w = model[1].weight.detach().reshape(3, 3, 2, 2)
    torch.testing.assert_close(got, (x - baseline) * w[[2, 0]])


@pytest.mark.parametrize("rule", ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
                                  "gauss_legendre"])
def test_matches_the_naive_loop_with_per_sample_baselines_and_targets(rule: str) -> None:
    baseline = torch.randn(3, *X.shape[1:], generator=torch.Generator().manual_seed(5))
    classes = torch.tensor([4, 0, 2])
    got = IntegratedGradients(TINY, steps=7, rule=rule, baseline=baseline, max_batch=5).attribute(X, classes)
    expected = naive_ig(TINY, X, baseline, lambda out: out.gather(1, classes[:, None]), rule, 7)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_many_targets_and_a_layer() -> None:
    below, above = TINY.features[:4], nn.Sequential(*TINY.features[4:], TINY.classifier)
    ig = IntegratedGradients(TINY, steps=6, baseline=0.5)
    by_class, by_channel = ig.attribute(X, targets=[3, Channel("features.3", 2)])
    torch.testing.assert_close(by_class, naive_ig(TINY, X, torch.full_like(X, 0.5), lambda o: o[:, 3],
                                                  "gauss_legendre", 6))
    torch.testing.assert_close(by_channel, naive_ig(below, X, torch.full_like(X, 0.5), lambda o: o[:, 2].sum((1, 2)),
                                                    "gauss_legendre", 6))
    a, a0 = below(X).detach(), below(torch.full_like(X[:1], 0.5)).detach()  # the path runs between activations
    torch.testing.assert_close(ig.attribute(X, 3, wrt="features.3"), naive_ig(above, a, a0, lambda o: o[:, 3],
                                                                              "gauss_legendre", 6))


def test_completeness_delta_shrinks_with_steps(shapes_vgg: nn.Module) -> None:
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gap = shapes_vgg(x)[:, 1] - shapes_vgg(torch.zeros_like(x))[:, 1]
    deltas = {}
    for steps in (2, 8, 256):
        maps, delta = IntegratedGradients(shapes_vgg, steps=steps, max_batch=128).attribute_with_delta(x, 1)
        torch.testing.assert_close(delta, maps.sum((1, 2, 3)) - gap, rtol=1e-4, atol=1e-4)  # its definition
        deltas[steps] = float(delta.abs().max())
    assert deltas[256] < deltas[8] < deltas[2]
    assert deltas[256] < 2e-2 * float(gap.abs().max())  # ReLU kinks: slower than smooth-path convergence


def count_batches(model: nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    sizes: list[int] = []
    return sizes, model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))


@pytest.mark.parametrize("make_method", [
    lambda m, b: IntegratedGradients(m, steps=5, max_batch=b),
    lambda m, b: GradientSHAP(m, baselines=torch.zeros(2, 3, 16, 16), samples=5, noise=0.1, max_batch=b),
])
def test_no_model_call_exceeds_max_batch_and_results_do_not_depend_on_it(make_method) -> None:
    full = make_method(TINY, None).attribute(X, targets=[[0, 1, 2], 3])
    for max_batch in (1, 4, 7):
        sizes, handle = count_batches(TINY)
        try:
            got = make_method(TINY, max_batch).attribute(X, targets=[[0, 1, 2], 3])
            layer = make_method(TINY, max_batch).attribute(X, 1, wrt="features.3")
        finally:
            handle.remove()
        assert max(sizes) <= max_batch and sum(sizes) >= 15
        for a, b in zip(got, full):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
        assert layer.shape == (3, 8, 8, 8)


def test_gradient_shap_matches_a_naive_loop_over_its_documented_draws() -> None:
    bank = torch.randn(4, *X.shape[1:], generator=torch.Generator().manual_seed(9))
    state = torch.get_rng_state()
    got = GradientSHAP(TINY, baselines=bank, samples=6, noise=0.2, seed=3).attribute(X, [1, 2, 3])
    assert torch.equal(torch.get_rng_state(), state)  # only the explicit generator was used
    g = torch.Generator().manual_seed(3)
    pick, alpha = torch.randint(4, (6,), generator=g), torch.rand(6, generator=g, dtype=torch.float64)
    eps = torch.randn(6, *X.shape[1:], generator=torch.Generator().manual_seed(3 + 1))  # noise: seed + 1
    expected = torch.zeros_like(X)
    for n, cls in enumerate([1, 2, 3]):
        sigma = 0.2 * (X[n].max() - X[n].min())
        for k in range(6):
            noisy, b = X[n:n + 1] + sigma * eps[k], bank[pick[k]]
            point = (b + float(alpha[k]) * (noisy - b)).requires_grad_()
            (grad,) = torch.autograd.grad(TINY(point)[0, cls], point)
            expected[n] += ((noisy - b) * grad)[0] / 6
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    again = GradientSHAP(TINY, baselines=bank, samples=6, noise=0.2, seed=3).attribute(X, [1, 2, 3])
    assert torch.equal(got, again)
    other_seed = GradientSHAP(TINY, baselines=bank, samples=6, noise=0.2, seed=4).attribute(X, [1, 2, 3])
    assert not torch.equal(got, other_seed)


def test_bad_settings_name_the_problem() -> None:
    with pytest.raises(ConvscopeError, match="unknown integration rule 'simpson'"):
        IntegratedGradients(TINY, rule="simpson")
    with pytest.raises(ConvscopeError, match="too few"):
        IntegratedGradients(TINY, steps=1, rule="riemann_left")
    with pytest.raises(ConvscopeError, match="baseline .* does not fit"):
        IntegratedGradients(TINY, baseline=torch.zeros(2, 3, 16, 16)).attribute(X, 0)
    with pytest.raises(ConvscopeError, match="not a batch of samples"):
        GradientSHAP(TINY, baselines=torch.zeros(3, 16, 16)).attribute(X, 0)
    with pytest.raises(ConvscopeError, match="samples"):
        GradientSHAP(TINY, samples=0)


def test_baselines_given_as_a_callable_of_the_input() -> None:
    from convscope.ops.tensors import gaussian_blur

    model, x = make("tiny_vgg").eval(), sample("tiny_vgg", n=3)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(t, 2.0)

    given = IntegratedGradients(model, steps=8, baseline=blur(x), max_batch=2).attribute(x, [0, 1, 2])
    called = IntegratedGradients(model, steps=8, baseline=blur, max_batch=2).attribute(x, [0, 1, 2])
    assert torch.allclose(given, called, atol=1e-6)
    bank = torch.randn(4, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    drawn = GradientSHAP(model, baselines=bank, samples=6).attribute(x, 1)
    assert torch.allclose(drawn, GradientSHAP(model, baselines=lambda t: bank, samples=6).attribute(x, 1))
    with pytest.raises(ConvscopeError, match="does not fit an input"):
        IntegratedGradients(model, baseline=lambda t: t[:, :1]).attribute(x, 0)
