"""ROAD, infidelity, max-sensitivity and HOG on CUDA equal the same computations on the CPU.

Skipped where no CUDA device exists. Draws made on the device (ROAD's noise, Gaussian
perturbations, max-sensitivity's shifts) differ between CUDA and CPU generators, so ROAD runs
without noise, infidelity with square removal (its corners are drawn on the CPU), and
max-sensitivity is checked against its CUDA draws replayed on the CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convscope.evaluate.draws import keyed_draws
from convscope.evaluate.hog import hog
from convscope.evaluate.infidelity import SquareRemoval, infidelity
from convscope.evaluate.road import road
from convscope.evaluate.sensitivity import max_sensitivity
from convscope.methods.gradient import Saliency

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 3)).eval()


def test_road_infidelity_and_hog_on_cuda_equal_cpu() -> None:
    net = small_net()
    g = torch.Generator().manual_seed(1)
    x, maps, y = torch.rand(3, 3, 12, 12, generator=g), torch.rand(3, 1, 12, 12, generator=g), [0, 1, 2]
    gpu = small_net().cuda()
    want = road(net, x, y, maps, percentages=[20, 60, 90], noise=0.0, output="logit").values
    got = road(gpu, x.cuda(), y, maps.cuda(), percentages=[20, 60, 90], noise=0.0, output="logit").values
    assert torch.allclose(got.cpu(), want, atol=1e-4)
    want = infidelity(net, x, y, maps, perturbation=SquareRemoval(4), n_perturb_samples=4, seed=2)
    got = infidelity(gpu, x.cuda(), y, maps.cuda(), perturbation=SquareRemoval(4), n_perturb_samples=4, seed=2)
    assert torch.allclose(got.cpu(), want, rtol=1e-3, atol=1e-5)
    assert torch.allclose(hog(maps.cuda()).cpu(), hog(maps), atol=1e-9)


def test_max_sensitivity_on_cuda_uses_its_cuda_draws() -> None:
    net, gpu = small_net(), small_net().cuda()
    x, y, k = torch.rand(2, 3, 10, 10, generator=torch.Generator().manual_seed(3)), [2, 0], 3
    got = max_sensitivity(Saliency(gpu), x.cuda(), y, radius=0.1, n_perturb_samples=k, seed=4).cpu()
    explain = Saliency(net)
    base = explain.attribute(x, y)
    samples, draws = torch.arange(2).repeat_interleave(k), torch.arange(k).repeat(2)
    shifts = (0.1 * (2 * keyed_draws("uniform", 4, samples, draws, x.shape[1:], "cuda") - 1)).cpu()
    moved = explain.attribute(x[samples] + shifts, [y[int(s)] for s in samples])
    change = (moved - base[samples]).flatten(1).norm(dim=1) / base[samples].flatten(1).norm(dim=1)
    assert torch.allclose(got, change.view(2, k).amax(1), rtol=1e-3)
