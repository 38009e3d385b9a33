"""Infidelity (Yeh et al. 2019) against Captum's ``infidelity`` with the same perturbations replayed,
and against a naive loop over samples and draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convscope.errors import ConvscopeError
from convscope.evaluate.infidelity import GaussianNoise, SquareRemoval, infidelity

captum_metrics = pytest.importorskip("captum.metrics")

K = 6


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
                        nn.Linear(36, 4)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 8, 9, generator=g)
    maps = torch.randn(3, 1, 8, 9, generator=g)
    return net, x, torch.tensor([1, 3, 0]), maps


def drawn(perturbation, x: torch.Tensor, seed: int) -> torch.Tensor:
    """``[N * K, ...]``: the perturbations of sample-major rows (sample n, draw k) = row n * K + k."""
    samples = torch.arange(len(x)).repeat_interleave(K)
    return perturbation(x[samples], samples, torch.arange(K).repeat(len(x)), seed)


@pytest.mark.parametrize("perturbation", [GaussianNoise(0.2), SquareRemoval(3, baseline=0.5)], ids=["gauss", "square"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("output", ["logit", "probability"])
def test_infidelity_equals_captum_with_the_same_perturbations(case, perturbation, normalize, output):
    net, x, labels, maps = case
    fixed = drawn(perturbation, x, seed=5)

    def replay(inputs: torch.Tensor):
        assert inputs.shape == fixed.shape  # Captum perturbs all N * K repeated rows in one call here
        return fixed, inputs - fixed

    forward = net if output == "logit" else (lambda t: net(t).softmax(1))
    repeated = maps.expand_as(x).contiguous()  # Captum wants maps shaped like the input
    want = captum_metrics.infidelity(forward, replay, x, repeated, target=labels, n_perturb_samples=K, normalize=normalize)
    ours = infidelity(net, x, labels, maps, perturbation=perturbation, n_perturb_samples=K, normalize=normalize,
                      seed=5, output=output, max_batch=4)
    assert torch.allclose(ours, want.float(), rtol=1e-4, atol=1e-7)


def test_infidelity_equals_a_naive_loop_for_every_max_batch(case):
    net, x, labels, maps = case
    fixed = drawn(GaussianNoise(0.3), x, seed=2).view(len(x), K, *x.shape[1:])
    want = []
    with torch.no_grad():
        for n in range(len(x)):
            f = net(x[n:n + 1])[0, labels[n]]
            errors = [(float((fixed[n, k] * maps[n]).sum()) - float(f - net(x[n:n + 1] - fixed[n, k])[0, labels[n]])) ** 2
                      for k in range(K)]
            want.append(np.mean(errors))
    for max_batch in (None, 5, 1):
        ours = infidelity(net, x, labels, maps, perturbation=GaussianNoise(0.3), n_perturb_samples=K, seed=2,
                          max_batch=max_batch)
        assert np.abs(ours.numpy() - np.array(want)).max() < 1e-5 * max(1.0, max(want))


def test_a_linear_model_and_its_gradient_times_the_perturbation_have_zero_infidelity():
    """For f(x) = w.x the map w explains every drop exactly: f(x) - f(x - I) = I.w."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Flatten(), nn.Linear(2 * 5 * 5, 3)).eval()
    x = torch.rand(2, 2, 5, 5)
    w = net[1].weight.detach().view(3, 2, 5, 5)
    labels = torch.tensor([2, 0])
    exact = infidelity(net, x, labels, w[labels], n_perturb_samples=4, seed=0)
    assert float(exact.max()) < 1e-9
    assert float(infidelity(net, x, labels, 3 * w[labels], n_perturb_samples=4, normalize=True).max()) < 1e-9
    assert float(infidelity(net, x, labels, 3 * w[labels], n_perturb_samples=4).min()) > 1e-4


def test_square_removal_sets_one_square_to_the_baseline():
    x = torch.rand(40, 2, 7, 9)
    samples, draws = torch.arange(40), torch.zeros(40, dtype=torch.long)
    perturbation = SquareRemoval(3, baseline=-1.0)
    perturb = perturbation(x, samples, draws, 0)
    changed = (perturb != 0).all(1)
    assert (changed.flatten(1).sum(1) == 9).all() and ((perturb != 0).any(1) == changed).all()
    assert torch.allclose((x - perturb)[changed[:, None].expand_as(x)], torch.tensor(-1.0))
    rows, cols = changed.any(2), changed.any(1)
    assert (rows.sum(1) == 3).all() and (cols.sum(1) == 3).all()
    assert len({tuple(r.nonzero()[:, 0].tolist()) for r in rows}) > 2  # positions vary
    assert torch.equal(perturb, perturbation(x, samples, draws, 0))


def test_infidelity_rejects_bad_input(case):
    net, x, labels, maps = case
    with pytest.raises(ConvscopeError, match="n_perturb_samples"):
        infidelity(net, x, labels, maps, n_perturb_samples=0)
    with pytest.raises(ConvscopeError, match="does not fit"):
        infidelity(net, x, labels, maps, perturbation=SquareRemoval(20))
    with pytest.raises(ConvscopeError, match="perturbation returned"):
        infidelity(net, x, labels, maps, perturbation=lambda t, s, d, seed: t[:, :1])
    with pytest.raises(ConvscopeError, match="do not fit"):
        infidelity(net, x, labels, maps[:2])
