"""Captum as an anchor for the path, noise and perturbation methods, driven by the same draws.

- IntegratedGradients: every rule Captum has (its riemann_trapezoid uses weights 1/n halved at
  the ends, which sum to 1 - 1/n; we follow it), per-sample baselines and targets, and
  LayerIntegratedGradients for ``wrt=layer``.
- NoiseTunnel (smoothgrad, smoothgrad_sq, vargrad): Captum draws ``torch.normal`` from the global
  RNG with an absolute standard deviation; ours scales seeded draws by a fraction of each
  sample's range. We hand Captum our noise (``torch.normal`` patched) and expect equal maps.
- GradientShap: Captum draws baselines with ``np.random.choice``, alphas with
  ``np.random.uniform`` and noise with ``torch.normal``; the patches hand it our draws, repeated
  for every sample (ours: every sample sees the same draws).
- Occlusion: sliding_window_shapes / strides / baselines against window / stride / fill.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nets import make, sample

from convscope.methods import (
    GradientSHAP,
    GuidedBackprop,
    IntegratedGradients,
    Occlusion,
    Saliency,
    SmoothGrad,
    SmoothGradSquared,
    VarGrad,
)

captum_attr = pytest.importorskip("captum.attr")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY, X = make("tiny_vgg").eval(), sample("tiny_vgg")
CLASSES = [4, 0, 2]


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return bool((a - b).abs().max() <= tol * max(float(b.abs().max()), 1e-12))


@pytest.mark.parametrize("ours, theirs", [("riemann_left", "riemann_left"), ("riemann_right", "riemann_right"),
                                          ("riemann_middle", "riemann_middle"),
                                          ("riemann_trapezoid", "riemann_trapezoid"),
                                          ("gauss_legendre", "gausslegendre")])
def test_integrated_gradients_every_rule(ours: str, theirs: str) -> None:
    baseline = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))  # one per sample
    expected = captum_attr.IntegratedGradients(TINY).attribute(X.clone(), baselines=baseline, target=CLASSES,
                                                              n_steps=20, method=theirs)
    got = IntegratedGradients(TINY, steps=20, rule=ours, baseline=baseline, max_batch=16).attribute(X, CLASSES)
    assert close(got, expected)


def test_layer_integrated_gradients() -> None:
    expected = captum_attr.LayerIntegratedGradients(TINY, TINY.features[3]).attribute(
        X.clone(), baselines=torch.full_like(X, 0.25), target=1, n_steps=12)
    got = IntegratedGradients(TINY, steps=12, baseline=0.25).attribute(X, 1, wrt="features.3")
    assert close(got, expected)


def our_noise(x: torch.Tensor, samples: int, noise: float, seed: int) -> torch.Tensor:
    """The documented draws, scaled per sample and laid out sample-major like Captum's batch."""
    eps = torch.randn(samples, *x.shape[1:], generator=torch.Generator().manual_seed(seed))
    span = (x.amax((1, 2, 3)) - x.amin((1, 2, 3))).reshape(-1, 1, 1, 1, 1)
    return (noise * span * eps.unsqueeze(0)).reshape(-1, *x.shape[1:])


@pytest.mark.parametrize("ours, nt_type", [(SmoothGrad, "smoothgrad"), (SmoothGradSquared, "smoothgrad_sq"),
                                           (VarGrad, "vargrad")])
@pytest.mark.parametrize("inner, captum_inner, extra", [(Saliency, "Saliency", {"abs": False}),
                                                        (GuidedBackprop, "GuidedBackprop", {})])
def test_noise_tunnel_with_the_same_noise(ours, nt_type, inner, captum_inner, extra,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    noise = our_noise(X, 8, 0.2, 3)
    monkeypatch.setattr(torch, "normal", lambda mean, std: noise.clone())
    nt = captum_attr.NoiseTunnel(getattr(captum_attr, captum_inner)(TINY))
    expected = nt.attribute(X.clone(), nt_type=nt_type, nt_samples=8, stdevs=1.0, target=CLASSES, **extra)
    monkeypatch.undo()
    got = ours(inner(TINY), samples=8, noise=0.2, seed=3).attribute(X, CLASSES)
    assert close(got, expected)


def test_gradient_shap_with_the_same_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    bank = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    samples, n = 7, len(X)
    g = torch.Generator().manual_seed(11)  # GradientSHAP's documented draws: picks, alphas; noise from seed + 1
    pick, alpha = torch.randint(5, (samples,), generator=g), torch.rand(samples, generator=g, dtype=torch.float64)
    eps = torch.randn(samples, 3, 16, 16, generator=torch.Generator().manual_seed(12))
    span = (X.amax((1, 2, 3)) - X.amin((1, 2, 3))).reshape(-1, 1, 1, 1, 1)
    noise = (0.1 * span * eps.unsqueeze(0)).reshape(-1, 3, 16, 16)
    monkeypatch.setattr(np.random, "choice", lambda k, size: np.tile(pick.numpy(), n))
    monkeypatch.setattr(np.random, "uniform", lambda lo, hi, size: np.tile(alpha.numpy(), n))
    monkeypatch.setattr(torch, "normal", lambda mean, std: noise.clone())
    expected = captum_attr.GradientShap(TINY).attribute(X.clone(), baselines=bank, n_samples=samples, stdevs=1.0,
                                                        target=CLASSES)
    monkeypatch.undo()
    got = GradientSHAP(TINY, baselines=bank, samples=samples, noise=0.1, seed=11).attribute(X, CLASSES)
    assert close(got, expected)


@pytest.mark.parametrize("window, stride, captum_window, captum_stride", [
    ((4, 4), (2, 2), (3, 4, 4), (3, 2, 2)),
    ((1, 3, 5), (1, 2, 3), (1, 3, 5), (1, 2, 3)),
])
def test_occlusion(window, stride, captum_window, captum_stride) -> None:
    expected = captum_attr.Occlusion(TINY).attribute(X.clone(), sliding_window_shapes=captum_window,
                                                     strides=captum_stride, baselines=0.5, target=CLASSES,
                                                     perturbations_per_eval=16)
    got = Occlusion(TINY, window=window, stride=stride, fill=0.5, max_batch=16).attribute(X, CLASSES)
    assert close(got, expected)
