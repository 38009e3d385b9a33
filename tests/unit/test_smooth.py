"""SmoothGrad, SmoothGradSquared and VarGrad around any method: a naive loop over the documented
noise draws as the reference, the noise scale, wrapping forms, seeds and the global RNG, the
batch bound, and the wrapped method left as it was."""

from __future__ import annotations

import pytest
import torch
from nets import make, sample
from torch import nn

from convscope.errors import ConvscopeError
from convscope.methods import (
    GuidedBackprop,
    IntegratedGradients,
    Method,
    Saliency,
    SmoothGrad,
    SmoothGradSquared,
    VarGrad,
)
from convscope.targets import Channel

TINY, X = make("tiny_vgg").eval(), sample("tiny_vgg")


def noisy_maps(inner: Method, x: torch.Tensor, target, samples: int, noise: float, seed: int) -> torch.Tensor:
    """[samples, N, ...]: the inner method's maps of each documented noisy copy, one sample at a time."""
    eps = torch.randn(samples, *x.shape[1:], generator=torch.Generator().manual_seed(seed))
    out = []
    for k in range(samples):
        rows = []
        for n in range(len(x)):
            sigma = noise * (x[n].max() - x[n].min())
            t = target[n] if isinstance(target, list) else target
            rows.append(inner.attribute(x[n:n + 1] + sigma * eps[k], t))
        out.append(torch.cat(rows))
    return torch.stack(out)


@pytest.mark.parametrize("wrapper, reduce", [
    (SmoothGrad, lambda m: m.mean(0)),
    (SmoothGradSquared, lambda m: (m * m).mean(0)),
    (VarGrad, lambda m: m.var(0, unbiased=False)),
])
def test_matches_a_naive_loop_over_the_same_noise(wrapper: type[Method], reduce) -> None:
    classes = [2, 0, 4]
    got = wrapper(GuidedBackprop(TINY), samples=6, noise=0.15, seed=1, max_batch=4).attribute(X, classes)
    expected = reduce(noisy_maps(GuidedBackprop(TINY), X, classes, 6, 0.15, 1))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))


def test_noise_is_a_fraction_of_each_samples_range() -> None:
    """On a linear model the gradient ignores noise, and the input x gradient shows it exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).eval()
    x = torch.randn(2, 3, 2, 2) * torch.tensor([1.0, 10.0]).reshape(2, 1, 1, 1)
    w = model[1].weight.detach()[1].reshape(3, 2, 2)
    torch.testing.assert_close(SmoothGrad(model, samples=4, noise=0.5).attribute(x, 1), w.expand_as(x))
    torch.testing.assert_close(VarGrad(model, samples=4, noise=0.5).attribute(x, 1), torch.zeros_like(x))
    eps = torch.randn(5, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    span = (x.amax((1, 2, 3)) - x.amin((1, 2, 3))).reshape(2, 1, 1, 1)
    from convscope.methods import InputXGradient

    got = SmoothGrad(InputXGradient(model), samples=5, noise=0.3).attribute(x, 1)
    torch.testing.assert_close(got, (x + 0.3 * span * eps.mean(0)) * w)


def test_wrapping_forms_and_the_registered_default() -> None:
    by_class = SmoothGrad(TINY, use=GuidedBackprop, samples=3, seed=2).attribute(X, 1)
    by_instance = SmoothGrad(GuidedBackprop(TINY), samples=3, seed=2).attribute(X, 1)
    assert torch.equal(by_class, by_instance)
    default = SmoothGrad(TINY)
    assert isinstance(default.method, Saliency) and default.samples == 32 and default.noise == 0.15
    assert default.attribute(X, 0).shape == X.shape


def test_wraps_integrated_gradients_within_the_batch_bound() -> None:
    inner = IntegratedGradients(TINY, steps=4, max_batch=64)
    sizes: list[int] = []
    handle = TINY.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    try:
        got = SmoothGrad(inner, samples=3, noise=0.1, max_batch=5).attribute(X, [1, 2, 3])
    finally:
        handle.remove()
    assert max(sizes) <= 5 and inner.max_batch == 64  # the caller's object is untouched
    expected = noisy_maps(IntegratedGradients(TINY, steps=4), X, [1, 2, 3], 3, 0.1, 0).mean(0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-8)


def test_seeds_and_the_global_random_state() -> None:
    state = torch.get_rng_state()
    a = SmoothGrad(TINY, samples=4, seed=7).attribute(X, targets=[1, Channel("features.3", 0)])
    assert torch.equal(torch.get_rng_state(), state)
    b = SmoothGrad(TINY, samples=4, seed=7).attribute(X, targets=[1, Channel("features.3", 0)])
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], SmoothGrad(TINY, samples=4, seed=8).attribute(X, 1))


def test_bad_settings_name_the_problem() -> None:
    with pytest.raises(ConvscopeError, match="samples"):
        SmoothGrad(TINY, samples=0)
    with pytest.raises(ConvscopeError, match="noise"):
        SmoothGrad(TINY, noise=-0.1)
    with pytest.raises(ConvscopeError, match="not an attribution method class"):
        SmoothGrad(TINY, use=nn.ReLU)  # type: ignore[arg-type]
