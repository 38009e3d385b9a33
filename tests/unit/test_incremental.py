"""Incremental occlusion (convscope.backends.torch.incremental): the maps equal a naive loop of full
forward passes (written here) on the zoo models and torchvision's ResNet-18, ResNet-50, VGG-16 and MobileNet v2
at odd sizes, for overlapping and non-overlapping windows; models it cannot handle fall back (a
node, or the whole call) with the same result; the projective-field arithmetic against brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from nets import SPELLINGS, make, random_batch_norms, sample, torchvision_model
from torch import nn

from convscope.backends.torch.incremental import geometry, open_scores
from convscope.backends.torch.incremental.graph import IncrementalGraph
from convscope.errors import ConvscopeError
from convscope.methods import Occlusion
from convscope.targets import Channel, Class


def naive_occlusion(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, window: tuple[int, ...],
                    stride: tuple[int, ...], fill: float = 0.0) -> torch.Tensor:
    """Captum's windows (``k * stride`` until one reaches the edge, the last cut off) over (C, H, W);
    per position the mean over the windows covering it of ``score(x) - score(x with the window filled)``.
    The filled copies go through the model 32 at a time (each a full forward pass)."""
    window = (x.shape[1], *window) if len(window) == 2 else window
    stride = (x.shape[1], *stride) if len(stride) == 2 else stride
    starts = [range(0, max(n - w, 0) + s, s) for n, w, s in zip(x.shape[1:], window, stride)]
    boxes = [(slice(c, c + window[0]), slice(t, t + window[1]), slice(lf, lf + window[2]))
             for c, t, lf in itertools.product(*starts)]
    total, count = torch.zeros_like(x), torch.zeros_like(x)
    with torch.no_grad():
        for i, sample in enumerate(x):
            clean = model(sample[None])[0, classes[i]]
            for part in range(0, len(boxes), 32):
                batch = sample.repeat(len(boxes[part:part + 32]), 1, 1, 1)
                for j, box in enumerate(boxes[part:part + 32]):
                    batch[(j, *box)] = fill
                drops = clean - model(batch)[:, classes[i]]
                for drop, box in zip(drops, boxes[part:part + 32]):
                    total[(i, *box)] += drop
                    count[(i, *box)] += 1
    return total / count


def assert_same_map(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding: 1e-4 of the largest value."""
    scale = float(expected.abs().max())
    assert scale > 0
    assert float((got - expected).abs().max()) <= 1e-4 * scale


def images(n: int, h: int, w: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def incremental(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, window, stride, **kw) -> torch.Tensor:
    occ = Occlusion(model, window=window, stride=stride, incremental=True, **kw)
    got = occ.attribute(x, classes)
    assert occ.last_report.path == "incremental", str(occ.last_report)
    return got


@pytest.mark.slow
@pytest.mark.parametrize("window, stride", [((24, 20), (16, 20)), ((20, 20), (20, 20))])  # overlap, none
@pytest.mark.parametrize("arch", ["resnet18", "vgg16", "mobilenet_v2"])
def test_torchvision_models_match_the_naive_loop(arch: str, window, stride) -> None:
    model = random_batch_norms(torchvision_model(arch))
    x, classes = images(1, 67, 71), torch.tensor([7])
    got = incremental(model, x, classes, window, stride, max_batch=6)
    assert_same_map(got, naive_occlusion(model, x, classes, window, stride))


@pytest.mark.slow
def test_resnet50_matches_the_naive_loop() -> None:
    """Bottlenecks (1x1 convolutions, strided 3x3 and projection shortcuts), at a small odd size."""
    model = random_batch_norms(torchvision_model("resnet50"))
    x, classes, window, stride = images(1, 45, 49), torch.tensor([7]), (20, 18), (13, 16)
    assert_same_map(incremental(model, x, classes, window, stride, max_batch=4),
                    naive_occlusion(model, x, classes, window, stride))


@pytest.mark.slow
@pytest.mark.parametrize("window, stride", [((17, 13), (12, 10)), ((16, 16), (16, 16)), ((1, 20, 22), (1, 16, 22))])
def test_zoo_models_match_the_naive_loop(shapes_vgg: nn.Module, shapes_resnet: nn.Module, window, stride) -> None:
    x, classes = images(2, 64, 64), torch.tensor([1, 4])
    for model in (shapes_vgg, shapes_resnet):
        got = incremental(model, x, classes, window, stride, max_batch=10, fill=0.5)
        assert_same_map(got, naive_occlusion(model, x, classes, window, stride, fill=0.5))


class Pools(nn.Module):
    """One of each local rule at small sizes: strided, dilated and grouped convolutions, max pooling with
    padding and ceil mode, average pooling with padding, adaptive pooling to the map's own size (the
    identity), to a divisor of it (a pooling) and to 1x1 (the global mean), a concatenation, an addition
    and a product with a per-channel tensor, then flatten and a linear layer. 3x20x21 -> 4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, stride=2, padding=1)             # 20x21 -> 10x11
        self.conv2 = nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=3)  # 10x11
        self.same = nn.Conv2d(6, 4, 4, padding="same")                   # 10x11
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)  # 10x11 -> 6x6
        self.avgpool = nn.AvgPool2d(3, stride=1, padding=1)               # 6x6
        self.keep = nn.AdaptiveAvgPool2d((10, 11))                        # the identity
        self.shrink = nn.AdaptiveMaxPool2d((3, 3))                        # 6x6 -> 3x3
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 10)[:, None, None])
        self.fc = nn.Linear(10 * 3 * 3 + 10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.keep(torch.relu(self.conv1(x)))
        b = torch.cat([self.conv2(a), self.same(a)], dim=1) * self.scale
        c = self.avgpool(self.maxpool(b)) + 0.5
        d = c
        pooled = torch.nn.functional.adaptive_avg_pool2d(d, 1).flatten(1)
        return self.fc(torch.cat([self.shrink(d).flatten(1), pooled], dim=1))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_one_model_with_every_rule_matches_the_naive_loop() -> None:
    torch.manual_seed(0)
    model, x, classes = Pools().eval(), images(2, 20, 21), torch.tensor([3, 1])
    for window, stride in (((4, 3), (2, 3)), ((5, 5), (5, 5))):
        occ = Occlusion(model, window=window, stride=stride, incremental=True, max_batch=7)
        got = occ.attribute(x, classes)
        assert occ.last_report.path == "incremental" and not any(
            n.mode == "full" for n in occ.last_report.nodes if n.name in ("keep", "shrink", "adaptive_avg_pool2d"))
        assert_same_map(got, naive_occlusion(model, x, classes, window, stride))


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_relu_spelling_and_the_residual_net(spelling: str) -> None:
    model = make(f"spelling:{spelling}").eval()
    x, classes = sample(f"spelling:{spelling}"), torch.tensor([0, 3, 1])
    assert_same_map(incremental(model, x, classes, (3, 3), (2, 2)), naive_occlusion(model, x, classes, (3, 3), (2, 2)))
    model, x = make("tiny_residual").eval(), sample("tiny_residual")
    assert_same_map(incremental(model, x, classes, (5, 5), (3, 3), max_batch=4),
                    naive_occlusion(model, x, classes, (5, 5), (3, 3)))


def test_auto_takes_the_incremental_path_on_the_folded_twin(shapes_resnet: nn.Module) -> None:
    """Enough work for the inference twin (batch norms folded, channels-last) and small windows: auto
    takes the incremental path, on the twin."""
    x, classes = images(2, 64, 64, seed=5), torch.tensor([2, 0])
    occ = Occlusion(shapes_resnet, window=8, stride=4, max_batch=64)
    got = occ.attribute(x, classes)
    report = occ.last_report
    assert report.path == "incremental" and report.reason.startswith("auto") and report.estimate < 0.6
    assert any(n.label == "pointwise Identity" for n in report.nodes)  # a batch norm folded by the twin
    assert report.full_nodes() and all(n.name in ("flatten", "fc") for n in report.full_nodes())
    assert_same_map(got, naive_occlusion(shapes_resnet, x, classes, (8, 8), (4, 4)))


def test_auto_declines_big_windows_little_work_and_other_devices(shapes_resnet: nn.Module) -> None:
    x, target = images(1, 64, 64), [Class(0)]
    scorer, report = open_scores(shapes_resnet, {}, target, x, (48, 48), "auto", work=1 << 30)
    assert scorer is None and "more than 60%" in report.reason and report.estimate > 0.6
    assert open_scores(shapes_resnet, {}, target, x, (48, 48), True)[0] is not None  # forced: taken
    scorer, report = open_scores(shapes_resnet, {}, target, x, (8, 8), "auto", work=100, min_work=1000)
    assert scorer is None and "too little work" in report.reason
    scorer, report = open_scores(shapes_resnet, {}, target, x.to("meta"), (8, 8), "auto", work=1 << 30)
    assert scorer is None and "CPU only" in report.reason


class Untraceable(nn.Module):
    """TinyVGG whose forward branches on a value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = make("tiny_vgg").eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return out if float(out.sum()) != 1234.5 else -out


class Mirrored(nn.Module):
    """TinyVGG with a left-right flip (no local rule) after the first block."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = make("tiny_vgg").eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.inner.features
        x = torch.flip(f[2](f[1](f[0](x))), dims=(3,))
        return self.inner.classifier(f[5](f[4](f[3](x))))


def test_an_untraceable_or_hooked_model_takes_the_plain_path_with_the_same_result() -> None:
    x, classes = sample("tiny_vgg"), torch.tensor([1, 0, 3])
    model = Untraceable()
    occ = Occlusion(model, window=4, stride=2, incremental=True)
    got = occ.attribute(x, classes)
    assert occ.last_report.path == "plain" and "torch.fx cannot trace" in occ.last_report.reason
    assert torch.equal(got, Occlusion(model, window=4, stride=2, incremental=False).attribute(x, classes))
    assert_same_map(got, naive_occlusion(model, x, classes, (4, 4), (2, 2)))
    handle = model.inner.features[0].register_forward_hook(lambda m, i, o: o * 2)
    try:
        hooked = Occlusion(model.inner, window=4, stride=2, incremental=True)
        got = hooked.attribute(x, classes)
        assert hooked.last_report.path == "plain" and "hooks on features.0" in hooked.last_report.reason
        assert_same_map(got, naive_occlusion(model.inner, x, classes, (4, 4), (2, 2)))
    finally:
        handle.remove()


def test_an_unsupported_node_and_all_after_it_run_on_whole_maps() -> None:
    model, x, classes = Mirrored(), sample("tiny_vgg"), torch.tensor([2, 2, 4])
    occ = Occlusion(model, window=(5, 3), stride=(3, 3), incremental=True, max_batch=9)
    got = occ.attribute(x, classes)
    modes = {n.name: n.mode for n in occ.last_report.nodes}
    assert modes["inner_features_0"] == "local" and modes["flip"] == "full" and modes["inner_features_3"] == "full"
    assert "flip is not supported" in next(n.reason for n in occ.last_report.nodes if n.name == "flip")
    assert_same_map(got, naive_occlusion(model, x, classes, (5, 3), (3, 3)))


def test_layer_targets_several_targets_and_chunks_across_samples() -> None:
    model, x = make("tiny_vgg").eval(), sample("tiny_vgg")
    targets = [[0, 1, 2], Channel("features.3", 1)]
    plain = Occlusion(model, window=4, stride=3, incremental=False, max_batch=5).attribute(x, targets=targets)
    occ = Occlusion(model, window=4, stride=3, incremental=True, max_batch=5)
    sizes: list[int] = []
    original = IncrementalGraph.run
    IncrementalGraph.run = lambda self, chunk, s, *a: sizes.append(len(s)) or original(self, chunk, s, *a)
    try:
        got = occ.attribute(x, targets=targets)
    finally:
        IncrementalGraph.run = original
    assert occ.last_report.path == "incremental" and max(sizes) == 5
    for a, b in zip(got, plain):
        assert_same_map(a, b)


def test_the_clean_cache_is_bounded_by_the_chunk_not_the_batch(shapes_vgg: nn.Module) -> None:
    held = []
    for n in (1, 4):
        occ = Occlusion(shapes_vgg, window=16, stride=16, incremental=True, max_batch=16)  # 16 windows a sample
        occ.attribute(images(n, 64, 64), 0)
        held.append(occ.last_report.cache_bytes)
    assert 0 < held[0] and held[1] == held[0]


def test_a_bad_switch_names_the_problem() -> None:
    with pytest.raises(ConvscopeError, match="incremental='yes'"):
        Occlusion(make("tiny_vgg"), incremental="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("kernel, stride, pad, dilation, size", [(3, 1, 1, 1, 20), (7, 2, 3, 1, 23), (3, 2, 0, 2, 19),
                                                                 (2, 2, 0, 1, 17), (1, 2, 0, 1, 9), (5, 3, 2, 1, 16)])
def test_projective_fields_against_brute_force(kernel: int, stride: int, pad: int, dilation: int, size: int) -> None:
    out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    axis = geometry.Axis(kernel, stride, pad, dilation, size, out)
    reads = {o: {o * stride - pad + j * dilation for j in range(kernel)} for o in range(out)}
    for lo in range(size):
        for hi in range(lo + 1, size + 1):
            hit = [o for o in range(out) if reads[o] & set(range(lo, hi))]
            first, stop = axis.changed(np.array([lo]), np.array([hi]))
            first, stop = int(first[0]), int(stop[0])
            if dilation == 1:  # contiguous reads: exactly the outputs that read the change
                assert (first, stop) == ((hit[0], hit[-1] + 1) if hit else (first, first))
            else:  # gaps between the taps: a range holding every such output (more is recomputed, still exact)
                assert all(first <= o < stop for o in hit)
    for start in range(out):
        for length in range(1, out - start + 1):
            first, count = axis.reads(np.array([start]), length)
            needed = set().union(*(reads[o] for o in range(start, start + length)))
            assert (int(first[0]), count) == (min(needed), max(needed) - min(needed) + 1)
    assert axis.pad_after == max(0, max(reads[out - 1]) + 1 - size)


def test_boxes_take_the_largest_size_and_stay_inside() -> None:
    box = geometry.box_of(np.array([0, 5, 18]), np.array([4, 8, 20]), np.array([3, 3, 3]), np.array([4, 4, 4]), (20, 9))
    assert (box.h, box.w) == (4, 1)
    assert box.top.tolist() == [0, 5, 16] and box.left.tolist() == [3, 3, 3]
    assert math.isclose(box.h * box.w / (20 * 9), 4 / 180)
