"""Occlusion and RISE: the exact linear-model identity, naive loops as references (windows, fills,
blur, per-sample targets, layers), window coverage, the documented RISE masks, the batch bound."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from nets import make, sample
from torch import nn

from convscope.ops import tensors
from convscope.errors import ConvscopeError
from convscope.methods import RISE, Occlusion
from convscope.methods.perturb import (
    WindowMasks,
    axis_windows,
    gathered_crops,
    gaussian_blur,
    rise_masks,
    windows,
)
from convscope.targets import Channel

TINY, X = make("tiny_vgg").eval(), sample("tiny_vgg")


def integer_linear(channels: int) -> tuple[nn.Module, torch.Tensor]:
    """A linear model and input with small integer values, so every float sum is exact."""
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(channels * 25, 3)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.randint(-4, 5, model[1].weight.shape, generator=g).float())
        model[1].bias.copy_(torch.randint(-4, 5, (3,), generator=g).float())
    return model, torch.randint(-3, 4, (2, channels, 5, 5), generator=g).float()


@pytest.mark.parametrize("channels, window", [(1, 1), (3, (1, 1, 1))])
def test_one_pixel_zero_fill_on_a_linear_model_is_input_times_weight_exactly(channels: int, window) -> None:
    model, x = integer_linear(channels)
    got = Occlusion(model, window=window, stride=1, fill=0.0).attribute(x, [2, 0])
    w = model[1].weight.detach().reshape(3, channels, 5, 5)
    assert torch.equal(got, x * w[[2, 0]])


def naive_occlusion(model: nn.Module, x: torch.Tensor, score, window: tuple[int, int], stride: tuple[int, int],
                    fill: torch.Tensor) -> torch.Tensor:
    """Windows at k*stride until one reaches the edge, the last cut off; mean score drop per pixel."""
    _, _, h, w = x.shape
    total, count = torch.zeros_like(x), torch.zeros_like(x)
    with torch.no_grad():
        clean = score(model(x))
        for top in range(0, max(h - window[0], 0) + stride[0], stride[0]):
            for left in range(0, max(w - window[1], 0) + stride[1], stride[1]):
                mask = torch.zeros_like(x, dtype=torch.bool)
                mask[:, :, top:top + window[0], left:left + window[1]] = True
                drop = clean - score(model(torch.where(mask, fill.expand_as(x), x)))
                total += mask * drop.reshape(-1, 1, 1, 1)
                count += mask
    return total / count


@pytest.mark.parametrize("window, stride", [((3, 3), (2, 2)), ((4, 5), (3, 5)), ((16, 2), (1, 2))])
def test_occlusion_matches_a_naive_loop(window, stride) -> None:
    fill = torch.tensor([0.5, -1.0, 2.0]).reshape(3, 1, 1)
    classes = torch.tensor([1, 4, 0])
    got = Occlusion(TINY, window=window, stride=stride, fill=fill, max_batch=7).attribute(X, classes)
    expected = naive_occlusion(TINY, X, lambda o: o.gather(1, classes[:, None])[:, 0], window, stride, fill)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_blur_fill_and_a_layer() -> None:
    got = Occlusion(TINY, window=4, stride=2, fill="blur", sigma=1.5).attribute(X, 2)
    expected = naive_occlusion(TINY, X, lambda o: o[:, 2], (4, 4), (2, 2), gaussian_blur(X, 1.5))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    below, above = TINY.features[:4], nn.Sequential(*TINY.features[4:], TINY.classifier)
    a = below(X).detach()
    layer = Occlusion(TINY, window=2, stride=1).attribute(X, 2, wrt="features.3")
    torch.testing.assert_close(layer, naive_occlusion(above, a, lambda o: o[:, 2], (2, 2), (1, 1), torch.zeros(1)),
                               rtol=1e-5, atol=1e-6)


def test_gaussian_blur_is_a_normalised_gaussian() -> None:
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1
    out = gaussian_blur(x, 1.0)
    assert float(out.sum()) == pytest.approx(1.0)
    ratio = float(out[0, 0, 4, 5] / out[0, 0, 4, 4])
    assert ratio == pytest.approx(math.exp(-0.5), rel=1e-5)


def test_windows_cover_everything_like_captum() -> None:
    plan = windows([1, 10, 7], [1, 4, 3], [1, 3, 3])
    rows = sorted({(w[1].start, w[1].stop) for w in plan})
    assert rows == [(0, 4), (3, 7), (6, 10)]                              # ceil((10-4)/3)+1 = 3
    assert sorted({(w[2].start, w[2].stop) for w in plan}) == [(0, 3), (3, 6), (6, 7)]  # the last one cut off
    with pytest.raises(ConvscopeError, match="stride .* larger than the window"):
        windows([1, 10, 10], [1, 2, 2], [1, 3, 3])
    with pytest.raises(ConvscopeError, match="larger than the tensor"):
        windows([1, 4, 4], [1, 5, 5], [1, 1, 1])


@pytest.mark.parametrize("shape, window, stride", [([3, 10, 7], [1, 4, 3], [1, 3, 3]), ([2, 5, 5], [2, 2, 2], [2, 1, 2])])
def test_window_masks_are_the_slices_written_one_by_one(shape, window, stride) -> None:
    plan = windows(shape, window, stride)
    masks = WindowMasks(axis_windows(shape, window, stride), tensors, like=torch.empty(0, dtype=torch.float64))
    got = masks(torch.arange(len(plan)))
    assert len(masks) == len(plan) and got.dtype == torch.bool
    expected = torch.zeros(len(plan), *shape, dtype=torch.bool)
    for k, w in enumerate(plan):
        expected[(k, *w)] = True
    assert torch.equal(got, expected)
    assert torch.equal(masks.coverage(torch.empty(0, dtype=torch.float64)), expected.double().sum(0))


def rise_reference(model: nn.Module, x: torch.Tensor, score, masks: int, cells: int, p: float, seed: int):
    """Petsiuk's RISE with the documented draws, mask by mask."""
    g = torch.Generator().manual_seed(seed)
    h, w = x.shape[2:]
    grid = (torch.rand(masks, 1, cells, cells, generator=g) < p).float()
    ch, cw = math.ceil(h / cells), math.ceil(w / cells)
    dy, dx = torch.randint(ch, (masks,), generator=g), torch.randint(cw, (masks,), generator=g)
    total = torch.zeros(len(x), 1, h, w)
    with torch.no_grad():
        for m in range(masks):
            up = F.interpolate(grid[m:m + 1], size=((cells + 1) * ch, (cells + 1) * cw), mode="bilinear",
                               align_corners=False)
            mask = up[:, :, dy[m]:dy[m] + h, dx[m]:dx[m] + w]
            total += score(model(x * mask)).reshape(-1, 1, 1, 1) * mask
    return (total / (masks * p)).expand_as(x)


def test_rise_matches_the_reference_and_keeps_the_global_rng() -> None:
    state = torch.get_rng_state()
    classes = torch.tensor([3, 3, 1])
    got = RISE(TINY, masks=40, cells=4, p=0.4, seed=5, max_batch=9).attribute(X, classes)
    assert torch.equal(torch.get_rng_state(), state)
    expected = rise_reference(TINY, X, lambda o: o.gather(1, classes[:, None])[:, 0], 40, 4, 0.4, 5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(got, RISE(TINY, masks=40, cells=4, p=0.4, seed=5, max_batch=9).attribute(X, classes))
    assert not torch.equal(got, RISE(TINY, masks=40, cells=4, p=0.4, seed=6, max_batch=9).attribute(X, classes))


@pytest.mark.parametrize("channels, size", [(1, (9, 9)), (3, (7, 12)), (2, (1, 1))])
def test_gathered_crops_are_the_sliced_crops(channels: int, size: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(channels)
    images = torch.randn(6, channels, size[0] + 5, size[1] + 4, generator=g)
    shifts = torch.stack([torch.randint(6, (6,), generator=g), torch.randint(5, (6,), generator=g)], 1)
    sliced = torch.stack([images[i, :, dy:dy + size[0], dx:dx + size[1]] for i, (dy, dx) in enumerate(shifts.tolist())])
    assert torch.equal(gathered_crops(images, shifts, size), sliced)


def test_rise_masks_slice_on_the_cpu_and_gather_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    grid, shifts = (torch.rand(4, 1, 3, 3) < 0.5).float(), torch.tensor([[0, 1], [2, 0], [1, 1], [2, 2]])
    calls: list[str] = []
    monkeypatch.setattr("convscope.methods.perturb.gathered_crops",
                        lambda *a: calls.append(a[0].device.type) or gathered_crops(*a))
    assert rise_masks(grid, shifts, (7, 8)).shape == (4, 1, 7, 8) and calls == []
    # the meta device stands in for a GPU here (shapes only); tests/unit/test_cuda.py checks the values
    assert rise_masks(grid.to("meta"), shifts, (7, 8)).shape == (4, 1, 7, 8) and calls == ["meta"]


@pytest.mark.parametrize("make_method", [lambda b: Occlusion(TINY, window=4, stride=4, max_batch=b),
                                         lambda b: RISE(TINY, masks=10, max_batch=b)])
def test_no_model_call_exceeds_max_batch(make_method) -> None:
    full = make_method(None).attribute(X, targets=[[0, 1, 2], Channel("features.3", 1)])
    sizes: list[int] = []
    handle = TINY.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    try:
        got = make_method(3).attribute(X, targets=[[0, 1, 2], Channel("features.3", 1)])
        make_method(3).attribute(X, 0, wrt="features.3")
    finally:
        handle.remove()
    assert max(sizes) == 3
    for a, b in zip(got, full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bad_settings_name_the_problem() -> None:
    with pytest.raises(ConvscopeError, match="window"):
        Occlusion(TINY, window=0)
    with pytest.raises(ConvscopeError, match="fill='gray'"):
        Occlusion(TINY, fill="gray")  # type: ignore[arg-type]
    with pytest.raises(ConvscopeError, match=r"needs \[N, C, H, W\]"):
        Occlusion(TINY).attribute(X, 0, wrt="classifier.1")
    with pytest.raises(ConvscopeError, match="fits neither one sample"):
        Occlusion(TINY, fill=torch.zeros(2, 2)).attribute(X, 0)
    with pytest.raises(ConvscopeError, match="p="):
        RISE(TINY, p=0)
    with pytest.raises(ConvscopeError, match="masks"):
        RISE(TINY, masks=0)


@pytest.mark.parametrize("incremental", [False, True])
def test_one_fill_per_sample_equals_each_sample_with_its_own_fill(incremental: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    x, fills = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    together = Occlusion(model, window=4, stride=2, fill=fills, incremental=incremental, max_batch=2).attribute(
        x, [0, 1, 2])
    alone = torch.cat([Occlusion(model, window=4, stride=2, fill=fills[i], incremental=incremental).attribute(
        x[i:i + 1], i) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-6)
    with pytest.raises(ConvscopeError, match=r"fits neither one sample \[3, 8, 8\] nor the batch \[3, 3, 8, 8\]"):
        Occlusion(model, window=4, fill=torch.zeros(2, 3, 8, 8)).attribute(x, 0)
