"""Max-sensitivity (Yeh et al. 2019) against Captum's ``sensitivity_max`` replaying the same shifts,
and against a naive loop over samples and draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convscope.errors import ConvscopeError
from convscope.evaluate.draws import keyed_draws
from convscope.evaluate.sensitivity import max_sensitivity
from convscope.methods.gradient import InputXGradient, Saliency

captum_metrics = pytest.importorskip("captum.metrics")

K = 5


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
                        nn.Linear(36, 4), nn.Tanh(), nn.Linear(4, 4)).eval()
    x = torch.rand(3, 3, 8, 9, generator=torch.Generator().manual_seed(1))
    return net, x, torch.tensor([1, 3, 0])


def shifts(x: torch.Tensor, radius: float, seed: int) -> torch.Tensor:
    """``[N * K, ...]``: the documented draws, sample-major (row n * K + k is sample n, draw k)."""
    samples = torch.arange(len(x)).repeat_interleave(K)
    return radius * (2 * keyed_draws("uniform", seed, samples, torch.arange(K).repeat(len(x)), x.shape[1:], "cpu") - 1)


@pytest.mark.parametrize("method", [Saliency, InputXGradient])
def test_max_sensitivity_equals_captum_with_the_same_shifts(case, method):
    net, x, labels = case
    explain = method(net)
    fixed = shifts(x, 0.1, seed=4)

    def replay(inputs: torch.Tensor) -> torch.Tensor:
        assert inputs.shape == fixed.shape  # one call with all N * K repeated rows
        return inputs + fixed

    def explanation(inputs, target: torch.Tensor) -> tuple[torch.Tensor]:
        inputs = inputs[0] if isinstance(inputs, tuple) else inputs  # Captum passes the originals as a tuple
        return (explain.attribute(inputs, torch.as_tensor(target).tolist()),)  # and wants tuples back

    want = captum_metrics.sensitivity_max(explanation, x, perturb_func=replay, n_perturb_samples=K, target=labels)
    ours = max_sensitivity(explain, x, labels, radius=0.1, n_perturb_samples=K, seed=4, max_batch=4)
    assert torch.allclose(ours, want.float(), rtol=1e-4, atol=1e-7)
    assert float(ours.min()) > 0


def test_max_sensitivity_equals_a_naive_loop_relative_and_absolute(case):
    net, x, labels = case
    explain = Saliency(net)
    fixed = shifts(x, 0.05, seed=1).view(len(x), K, *x.shape[1:])
    relative, absolute = [], []
    for n in range(len(x)):
        base = explain.attribute(x[n:n + 1], int(labels[n]))
        changes = [float((explain.attribute(x[n:n + 1] + fixed[n, k], int(labels[n])) - base).norm()) for k in range(K)]
        absolute.append(max(changes))
        relative.append(max(changes) / float(base.norm()))
    for max_batch in (None, 4):
        got = max_sensitivity(explain, x, labels, radius=0.05, n_perturb_samples=K, seed=1, max_batch=max_batch)
        assert np.abs(got.numpy() - np.array(relative)).max() < 1e-5 * max(relative)
    got = max_sensitivity(explain, x, labels, radius=0.05, n_perturb_samples=K, seed=1, relative=False)
    assert np.abs(got.numpy() - np.array(absolute)).max() < 1e-5 * max(absolute)


def test_a_linear_model_has_zero_sensitivity_and_zero_radius_changes_nothing(case):
    net, x, labels = case
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 9, 4)).eval()
    assert float(max_sensitivity(Saliency(linear), x, labels, radius=0.5).max()) == 0.0  # the gradient is w
    assert float(max_sensitivity(Saliency(net), x, labels, radius=0.0).max()) < 1e-5  # batch-size rounding only


def test_max_sensitivity_rejects_bad_input(case):
    net, x, labels = case
    with pytest.raises(ConvscopeError, match="convscope method"):
        max_sensitivity(net, x, labels)
    with pytest.raises(ConvscopeError, match="radius"):
        max_sensitivity(Saliency(net), x, labels, radius=-1)
    with pytest.raises(ConvscopeError, match="n_perturb_samples"):
        max_sensitivity(Saliency(net), x, labels, n_perturb_samples=0)
    with pytest.raises(ConvscopeError, match="seed"):
        max_sensitivity(Saliency(net), x, labels, seed=None)
