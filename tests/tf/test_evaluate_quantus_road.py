"""ROAD against Quantus 0.6 (``quantus.ROAD`` and its ``noisy_linear_imputation``), with the noise
set to 0 on both sides. Here because importing quantus imports TensorFlow (tests/conftest.py has
imported torchvision before it)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import torch  # noqa: E402

quantus = pytest.importorskip("quantus")
from quantus.functions.perturb_func import noisy_linear_imputation as quantus_imputation  # noqa: E402
from torch import nn  # noqa: E402

from convscope.evaluate.road import linear_imputation, road  # noqa: E402


def small_net(channels: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 3)).eval()


def test_imputation_equals_quantus_without_noise():
    g = np.random.default_rng(0)
    x = g.random((3, 3, 9, 11))
    for fraction in (0.1, 0.5, 0.9):
        removed = g.random((3, 9, 11)) < fraction
        ours = linear_imputation(torch.tensor(x), torch.tensor(removed)).numpy()
        want = np.stack([quantus_imputation(arr=a, indices=np.flatnonzero(r), noise=0.0) for a, r in zip(x, removed)])
        assert np.abs(ours - want).max() < 1e-8


def test_road_accuracy_equals_quantus_on_one_channel_images():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(100, 3)).eval()  # reads single pixels: imputation flips classes
    g = np.random.default_rng(1)
    x = g.random((8, 1, 10, 10)).astype(np.float32)
    maps = g.random((8, 1, 10, 10)).astype(np.float32)  # distinct: Quantus's unstable argsort has no ties to break
    with torch.no_grad():
        y = net(torch.tensor(x)).argmax(1).numpy()
    y[::3] = (y[::3] + 1) % 3  # some samples start wrong
    percentages = [0, 10, 30, 50, 90]
    metric = quantus.ROAD(percentages=percentages, noise=0.0, normalise=False, abs=False, disable_warnings=True)
    want = metric(model=net, x_batch=x, y_batch=y, a_batch=maps, device="cpu", softmax=True)
    ours = road(net, torch.tensor(x), torch.tensor(y), torch.tensor(maps), percentages=percentages, noise=0.0,
                output="accuracy", max_batch=16)
    assert np.abs(ours.values.mean(0).numpy() - np.array([want[p] for p in percentages])).max() < 1e-6
    assert len(set(ours.values.mean(0).tolist())) >= 3  # the curve moves: the comparison can fail


def test_quantus_road_breaks_on_colour_images_with_one_channel_maps():
    """Quantus ranks the map broadcast over the image's channels and passes those flat indices to an
    imputation over one channel's pixels: a colour image fails, convscope ranks pixels."""
    net = small_net(3)
    g = np.random.default_rng(2)
    x, maps = g.random((2, 3, 8, 8)).astype(np.float32), g.random((2, 1, 8, 8)).astype(np.float32)
    metric = quantus.ROAD(percentages=[50], noise=0.0, normalise=False, disable_warnings=True)
    with pytest.raises(IndexError):
        metric(model=net, x_batch=x, y_batch=np.array([0, 1]), a_batch=maps, device="cpu")
    curve = road(net, torch.tensor(x), torch.tensor([0, 1]), torch.tensor(maps), percentages=[50], output="accuracy")
    assert curve.values.shape == (2, 1)
