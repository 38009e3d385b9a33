"""Adaptive occlusion (convscope.methods.adaptive) and the projective-field cap (incremental
geometry.Cap) against oracles written here: a naive loop of full forward passes scoring every
window, the selection rule and bilinear interpolation in plain loops, and the cap as full
forward passes whose layers are reset to their clean values outside the kept box; with every
cell refined the map is exact occlusion's; maps do not depend on max_batch; the model and the
input are left as they were. SSIM against scikit-image's."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from reference.naive_adaptive import naive_adaptive, naive_map, starts
from torch import nn

from convscope.errors import ConvscopeError
from convscope.methods import Occlusion
from convscope.methods.adaptive import Adaptive, AdaptiveReport
from convscope.ops.similarity import ssim


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                         nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).eval()


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return small_net()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 21, 19, generator=torch.Generator().manual_seed(1))


CLASSES = [1, 3]
WINDOW, STRIDE = (4, 4), (2, 2)


def occluded_copies(sample: torch.Tensor, window: tuple[int, int], stride: tuple[int, int]
                    ) -> tuple[torch.Tensor, list[tuple[int, int, int, int]], tuple[int, int]]:
    """Every window of ``sample [C, H, W]`` filled with 0, as a batch (row-major over the windows), the
    windows as (top, bottom, left, right), and the grid's size."""
    rows, cols = starts(sample.shape[1], window[0], stride[0]), starts(sample.shape[2], window[1], stride[1])
    boxes = [(t, min(t + window[0], sample.shape[1]), lf, min(lf + window[1], sample.shape[2]))
             for t, lf in itertools.product(rows, cols)]
    batch = sample.repeat(len(boxes), 1, 1, 1)
    for k, (t, b, lf, r) in enumerate(boxes):
        batch[k, :, t:b, lf:r] = 0
    return batch, boxes, (len(rows), len(cols))


def window_drops(model: nn.Module, x: torch.Tensor, classes: list[int], window=WINDOW, stride=STRIDE) -> np.ndarray:
    """``[N, rows, cols]``: every window's drop, a full forward pass of each occluded copy."""
    out = []
    with torch.no_grad():
        for i, sample in enumerate(x):
            batch, _, grid = occluded_copies(sample, window, stride)
            out.append((model(sample[None])[0, classes[i]] - model(batch)[:, classes[i]]).view(grid).double().numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def drops(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    return window_drops(net, x, CLASSES)


def assert_close(got: torch.Tensor, expected: np.ndarray | torch.Tensor, tol: float = 1e-4) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float64)
    scale = float(expected.abs().max())
    assert scale > 0
    gap = float((got.double() - expected).abs().max())
    assert gap <= tol * scale, f"largest difference {gap:.3g} of {scale:.3g}"


def test_every_cell_refined_is_exact_occlusion(net: nn.Module, x: torch.Tensor) -> None:
    exact = Occlusion(net, window=WINDOW, stride=STRIDE, incremental=False).attribute(x, CLASSES)
    for settings, incremental in ((Adaptive(keep=1.0, factor=3), False), (Adaptive(keep=0.05, factor=1), True)):
        occ = Occlusion(net, window=WINDOW, stride=STRIDE, incremental=incremental, adaptive=settings, max_batch=7)
        got = occ.attribute(x, CLASSES)
        assert_close(got, exact, 1e-5)
        report = occ.last_report
        assert report.passes_saved() == 0 and (report.mac_share() is None) == (not incremental)
        assert report.compare(got, exact) == pytest.approx([1.0, 1.0], abs=1e-6) and "SSIM" in str(report)


@pytest.mark.parametrize("keep, factor", [(0.3, 3), (0.1, 2)])
def test_matches_the_naive_selection_rule(net: nn.Module, x: torch.Tensor, drops: np.ndarray, keep: float,
                                          factor: int) -> None:
    approx, scored = naive_adaptive(drops, keep, factor)
    expected = naive_map(approx, x.shape[2:], WINDOW, STRIDE)
    for incremental in (False, True):
        occ = Occlusion(net, window=WINDOW, stride=STRIDE, incremental=incremental, max_batch=16,
                        adaptive=Adaptive(keep=keep, factor=factor))
        got = occ.attribute(x, CLASSES)
        assert_close(got[:, 0], expected)
        assert torch.equal(got[:, 0], got[:, 2])  # the window spans every channel
        report = occ.last_report
        assert isinstance(report, AdaptiveReport) and report.scored == scored
        assert report.windows == drops[0].size and 0 < report.passes_saved() < 1
        assert report.path == ("incremental" if incremental else "plain")


def test_each_target_uses_its_own_selection(net: nn.Module, x: torch.Tensor, drops: np.ndarray) -> None:
    occ = Occlusion(net, window=WINDOW, stride=STRIDE, incremental=False, adaptive=Adaptive(keep=0.2, factor=3))
    both = occ.attribute(x, targets=[CLASSES, [0, 2]])
    alone = occ.attribute(x, [0, 2])
    assert_close(both[1], alone, 1e-6)
    approx, _ = naive_adaptive(drops, 0.2, 3)
    assert_close(both[0][:, 0], naive_map(approx, x.shape[2:], WINDOW, STRIDE))


def capped_forward(model: nn.Sequential, clean: torch.Tensor, occluded: torch.Tensor,
                   boxes: list[tuple[int, int, int, int]], tau: float) -> torch.Tensor:
    """The cap by brute force: each spatial layer of ``model`` runs on the whole occluded maps, then
    in copy ``k`` every position outside its kept box (``ceil(tau * side)`` per side, centred on
    the window ``boxes[k]`` (top, bottom, left, right) scaled to the map, shifted inside it) is
    reset to the clean pass's value. Global pooling and the layers after it run as they are."""
    a, b = clean, occluded
    for layer in model:
        a, b = layer(a), layer(b)
        if b.dim() != 4 or isinstance(layer, nn.AdaptiveAvgPool2d):
            continue
        h, w = b.shape[2:]
        sh, sw = math.ceil(tau * h), math.ceil(tau * w)
        kept = torch.zeros(len(boxes), 1, h, w, dtype=torch.bool)
        for k, (top, bottom, left, right) in enumerate(boxes):
            cy, cx = (top + bottom) / 2 / clean.shape[2], (left + right) / 2 / clean.shape[3]
            t = min(max(math.floor(cy * h - sh / 2 + 0.5), 0), h - sh)
            lf = min(max(math.floor(cx * w - sw / 2 + 0.5), 0), w - sw)
            kept[k, :, t:t + sh, lf:lf + sw] = True
        b = torch.where(kept, b, a)
    return b


@pytest.mark.parametrize("tau", [0.3, 0.5])
def test_the_cap_matches_brute_force_and_not_the_batch(net: nn.Module, x: torch.Tensor, tau: float) -> None:
    window, stride = (5, 4), (3, 3)  # the last windows are cut off at both edges
    found = []
    with torch.no_grad():
        for i, sample in enumerate(x):
            batch, boxes, grid = occluded_copies(sample, window, stride)
            clean = net(sample[None])[0, CLASSES[i]]
            found.append((clean - capped_forward(net, sample[None], batch, boxes, tau)[:, CLASSES[i]]).view(grid))
    drops = torch.stack(found).double().numpy()
    expected = naive_map(drops, x.shape[2:], window, stride)
    maps = []
    for max_batch in (3, 64):
        occ = Occlusion(net, window=window, stride=stride, incremental=True, max_batch=max_batch,
                        adaptive=Adaptive(keep=1.0, factor=1, tau=tau))
        maps.append(occ.attribute(x, CLASSES))
        assert occ.last_report.incremental.tau == tau
    assert_close(maps[0][:, 0], expected)
    assert_close(maps[0], maps[1], 1e-5)
    if tau < 0.4:  # small enough to cut this small net's projective fields: an approximation indeed
        exact = Occlusion(net, window=window, stride=stride, incremental=False).attribute(x, CLASSES)
        assert float((maps[0] - exact).abs().max()) > 1e-3 * float(exact.abs().max())


def test_results_do_not_depend_on_max_batch(net: nn.Module, x: torch.Tensor) -> None:
    settings = Adaptive(keep=0.25, factor=2, tau=0.5)
    got = [Occlusion(net, window=(5, 4), stride=(3, 3), adaptive=settings, incremental=True,
                     max_batch=mb).attribute(x, CLASSES) for mb in (3, 10, None)]
    assert_close(got[0], got[1], 1e-5)
    assert_close(got[0], got[2], 1e-5)


def test_model_and_input_untouched(x: torch.Tensor) -> None:
    model = small_net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x0 = x.clone()
    Occlusion(model, window=WINDOW, stride=STRIDE, adaptive=Adaptive(keep=0.2, tau=0.5), incremental=True,
              max_batch=9).attribute(x, CLASSES)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert torch.equal(x, x0)


def test_bad_settings_are_clear(net: nn.Module) -> None:
    for bad in (dict(keep=0), dict(keep=1.5), dict(factor=0), dict(factor=2.0), dict(tau=0), dict(tau=True)):
        with pytest.raises(ConvscopeError):
            Adaptive(**bad)
    with pytest.raises(ConvscopeError, match="adaptive="):
        Occlusion(net, adaptive="yes")


def test_ssim_matches_scikit_image() -> None:
    skimage = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 1, 30, 26, generator=g).cumsum(2)
    b = a + 0.5 * torch.randn(3, 1, 30, 26, generator=g)
    got = ssim(b, a)
    for i in range(3):
        ref, other = a[i, 0].double().numpy(), b[i, 0].double().numpy()
        expected = skimage.structural_similarity(other, ref, gaussian_weights=True, sigma=1.5,
                                                 use_sample_covariance=False, data_range=ref.max() - ref.min())
        assert abs(float(got[i]) - expected) < 1e-9
    assert torch.allclose(ssim(a, a), torch.ones(3, dtype=torch.float64))
