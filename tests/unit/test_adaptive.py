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


def starts(n: int, w: int, s: int) -> list[int]:
    return list(range(0, max(n - w, 0) + s, s))


def window_drops(model: nn.Module, x: torch.Tensor, classes: list[int], window=WINDOW, stride=STRIDE) -> np.ndarray:
    """``[N, rows, cols]``: every window's drop, one full forward pass per window."""
    rows, cols = starts(x.shape[2], window[0], stride[0]), starts(x.shape[3], window[1], stride[1])
    out = np.zeros((len(x), len(rows), len(cols)))
    with torch.no_grad():
        for i, sample in enumerate(x):
            clean = float(model(sample[None])[0, classes[i]])
            for (r, t), (c, lf) in itertools.product(enumerate(rows), enumerate(cols)):
                copy = sample.clone()
                copy[:, t:t + window[0], lf:lf + window[1]] = 0
                out[i, r, c] = clean - float(model(copy[None])[0, classes[i]])
    return out


def naive_map(drops: np.ndarray, shape: tuple[int, int], window=WINDOW, stride=STRIDE) -> np.ndarray:
    """Per position the mean drop of the windows covering it, ``[N, H, W]``, by loops."""
    total, count = np.zeros((len(drops), *shape)), np.zeros(shape)
    rows, cols = starts(shape[0], window[0], stride[0]), starts(shape[1], window[1], stride[1])
    for (r, t), (c, lf) in itertools.product(enumerate(rows), enumerate(cols)):
        total[:, t:t + window[0], lf:lf + window[1]] += drops[:, r, c, None, None]
        count[t:t + window[0], lf:lf + window[1]] += 1
    return total / count


def naive_adaptive(drops: np.ndarray, keep: float, factor: int) -> tuple[np.ndarray, list[int]]:
    """The selection rule in loops: anchors every ``factor`` windows and the last; cells between
    consecutive anchors scored by their corners' largest drop; the best ``ceil(keep * cells)``
    (first in row-major order on ties) keep their windows' drops, the others interpolated."""
    out, scored = drops.copy(), []
    n_r, n_c = drops.shape[1:]
    ar = sorted(set(range(0, n_r, factor)) | {n_r - 1})
    ac = sorted(set(range(0, n_c, factor)) | {n_c - 1})
    cells = [(i, j) for i in range(max(len(ar) - 1, 1)) for j in range(max(len(ac) - 1, 1))]
    for n, d in enumerate(drops):
        def corners(i: int, j: int) -> list[float]:
            return [d[ar[a], ac[b]] for a in (i, min(i + 1, len(ar) - 1)) for b in (j, min(j + 1, len(ac) - 1))]

        order = sorted(range(len(cells)), key=lambda k: (-max(corners(*cells[k])), k))
        exact = {(r, c) for r in ar for c in ac}
        for k in order[:math.ceil(keep * len(cells))]:
            i, j = cells[k]
            for r in range(ar[i], ar[min(i + 1, len(ar) - 1)] + 1):
                for c in range(ac[j], ac[min(j + 1, len(ac) - 1)] + 1):
                    exact.add((r, c))
        scored.append(len(exact))
        for r, c in itertools.product(range(n_r), range(n_c)):
            if (r, c) in exact:
                continue
            r0, r1 = max(a for a in ar if a <= r), min(a for a in ar if a >= r)
            c0, c1 = max(a for a in ac if a <= c), min(a for a in ac if a >= c)
            tr = 0.0 if r1 == r0 else (r - r0) / (r1 - r0)
            tc = 0.0 if c1 == c0 else (c - c0) / (c1 - c0)
            out[n, r, c] = ((1 - tr) * (1 - tc) * d[r0, c0] + (1 - tr) * tc * d[r0, c1]
                            + tr * (1 - tc) * d[r1, c0] + tr * tc * d[r1, c1])
    return out, scored


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
        assert_close(occ.attribute(x, CLASSES), exact, 1e-5)
        assert occ.last_report.passes_saved() == 0


@pytest.mark.parametrize("keep, factor", [(0.3, 3), (0.1, 2)])
def test_matches_the_naive_selection_rule(net: nn.Module, x: torch.Tensor, keep: float, factor: int) -> None:
    drops = window_drops(net, x, CLASSES)
    approx, scored = naive_adaptive(drops, keep, factor)
    expected = naive_map(approx, x.shape[2:])
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


def test_each_target_uses_its_own_selection(net: nn.Module, x: torch.Tensor) -> None:
    occ = Occlusion(net, window=WINDOW, stride=STRIDE, incremental=False, adaptive=Adaptive(keep=0.2, factor=3))
    both = occ.attribute(x, targets=[CLASSES, [0, 2]])
    alone = occ.attribute(x, [0, 2])
    assert_close(both[1], alone, 1e-6)
    assert_close(both[0][:, 0], naive_map(naive_adaptive(window_drops(net, x, CLASSES), 0.2, 3)[0], x.shape[2:]))


def capped_forward(model: nn.Sequential, clean: torch.Tensor, occluded: torch.Tensor, box: tuple[int, int, int, int],
                   tau: float) -> torch.Tensor:
    """The cap by brute force: each spatial layer of ``model`` runs on the whole occluded map, then
    every position outside its kept box (``ceil(tau * side)`` per side, centred on the window
    ``box`` (top, bottom, left, right) scaled to the map, shifted inside it) is reset to the clean
    pass's value. Global pooling and the layers after it run as they are."""
    top, bottom, left, right = box
    cy, cx = (top + bottom) / 2 / clean.shape[2], (left + right) / 2 / clean.shape[3]
    a, b = clean, occluded
    for layer in model:
        a, b = layer(a), layer(b)
        if b.dim() != 4 or isinstance(layer, nn.AdaptiveAvgPool2d):
            continue
        h, w = b.shape[2:]
        sh, sw = math.ceil(tau * h), math.ceil(tau * w)
        t = min(max(math.floor(cy * h - sh / 2 + 0.5), 0), h - sh)
        lf = min(max(math.floor(cx * w - sw / 2 + 0.5), 0), w - sw)
        kept = torch.zeros(h, w, dtype=torch.bool)
        kept[t:t + sh, lf:lf + sw] = True
        b = torch.where(kept, b, a)
    return b


@pytest.mark.parametrize("tau", [0.3, 0.5])
def test_the_cap_matches_brute_force_and_not_the_batch(net: nn.Module, x: torch.Tensor, tau: float) -> None:
    window, stride = (5, 4), (3, 3)  # the last windows are cut off at both edges
    rows, cols = starts(x.shape[2], window[0], stride[0]), starts(x.shape[3], window[1], stride[1])
    drops = np.zeros((len(x), len(rows), len(cols)))
    with torch.no_grad():
        for i, sample in enumerate(x[:, None]):
            clean = float(net(sample)[0, CLASSES[i]])
            for (r, t), (c, lf) in itertools.product(enumerate(rows), enumerate(cols)):
                copy = sample.clone()
                copy[..., t:t + window[0], lf:lf + window[1]] = 0
                box = (t, min(t + window[0], x.shape[2]), lf, min(lf + window[1], x.shape[3]))
                drops[i, r, c] = clean - float(capped_forward(net, sample, copy, box, tau)[0, CLASSES[i]])
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
