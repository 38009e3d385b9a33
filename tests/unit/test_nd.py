"""1-D and 3-D networks (signals ``[N, C, L]``, volumes ``[N, C, D, H, W]``), parametrised by the
number of spatial axes, with 2-D alongside where it costs nothing.

Oracles:
- the rule-form deconvnet (:class:`~convscope.methods.DeconvNet`: the deconvnet rule at every ReLU
  during autograd's backward) against the explicit mirror :func:`convscope.deconv.reconstruct`
  (switches recorded, every layer transposed by hand): two independent implementations, over
  random chains (hypothesis: kernels, strides, paddings, dilations, ceil_mode, odd sizes);
- the CAM family against naive re-implementations written here: hooks and autograd for the
  activations and gradients, NumPy's ``np.interp`` along each axis for the linear and trilinear
  upsampling (half-pixel centres), explicit loops over channels for Score-CAM and Ablation-CAM;
- pytorch-grad-cam 1.5.7, which has 3-D Grad-CAM, at the layer's own resolution: it upsamples
  volumes with ``scipy.ndimage.zoom`` (cubic splines, corner-aligned), a different convention,
  so upsampled maps are not compared; it refuses 1-D inputs (shown below);
- ``project`` against the feature map's own top-k, computed independently, and the explicit mirror.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from convscope.deconv import reconstruct
from convscope.errors import ConvscopeError
from convscope.methods import DeconvNet, GuidedBackprop
from convscope.methods.cam import (CAM, AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, GuidedGradCAM, HiResCAM,
                                   LayerCAM, ScoreCAM, XGradCAM)
from convscope.project import project
from convscope.targets import Class, MaxNeuron, Neuron

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
AVGPOOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
ADAPTIVE = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
BATCHNORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
SIZES = {1: (9, 23), 2: (7, 13), 3: (6, 9)}  # spatial sizes drawn per axis: odd and even


def assert_same(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    """Equal to ``tol`` relative to the larger map's largest entry, and not trivially zero."""
    scale = b.abs().max()
    assert scale > 0
    assert (a - b).abs().max() <= tol * scale


# ------------------------------------------------------------------ the deconvnet: rule == explicit

def axes(draw: st.DrawFn, dims: int, low: int, high: int) -> tuple[int, ...]:
    return tuple(draw(st.integers(low, high)) for _ in range(dims))


@st.composite
def chain_case(draw: st.DrawFn, dims: int) -> dict:
    """A random conv-[bn]-relu-maxpool-conv-relu-(avg|adaptive)-flatten-linear chain and its input size."""
    k1 = axes(draw, dims, 1, 3)
    s1 = axes(draw, dims, 1, 2)
    same = draw(st.booleans()) and s1 == (1,) * dims
    pk = axes(draw, dims, 1, 3)
    return {
        "size": axes(draw, dims, *SIZES[dims]),
        "conv1": {"kernel_size": k1, "stride": s1, "dilation": axes(draw, dims, 1, 2),
                  "padding": "same" if same else tuple(draw(st.integers(0, k)) for k in k1)},
        "batchnorm": draw(st.booleans()),
        "pool": {"kernel_size": pk, "stride": draw(st.none() | st.tuples(*[st.integers(1, 3)] * dims)),
                 "padding": tuple(draw(st.integers(0, k // 2)) for k in pk), "dilation": axes(draw, dims, 1, 2),
                 "ceil_mode": draw(st.booleans())},
        "conv2": {"kernel_size": axes(draw, dims, 1, 2), "stride": axes(draw, dims, 1, 2),
                  "padding": axes(draw, dims, 0, 1)},
        "head": draw(st.sampled_from(["avg", "adaptive"])),
        "seed": draw(st.integers(0, 2**16)),
    }


def chain(case: dict, dims: int) -> tuple[nn.Sequential, torch.Tensor] | None:
    """The case's model (eval mode) and input, or None when PyTorch refuses the geometry."""
    torch.manual_seed(case["seed"])
    x = torch.randn(2, 2, *case["size"])
    layers = [CONV[dims](2, 3, **case["conv1"])]
    if case["batchnorm"]:
        bn = BATCHNORM[dims](3)
        with torch.no_grad():
            bn.running_var.uniform_(0.5, 2), bn.running_mean.uniform_(-1, 1), bn.weight.uniform_(0.5, 2)
        layers.append(bn)
    layers += [nn.ReLU(), MAXPOOL[dims](**case["pool"]), CONV[dims](3, 4, **case["conv2"]), nn.ReLU()]
    layers.append(AVGPOOL[dims](2, stride=1) if case["head"] == "avg" else ADAPTIVE[dims](2))
    features = nn.Sequential(*layers).eval()
    try:
        with torch.no_grad():
            flat = features(x).flatten(1).shape[1]
    except RuntimeError:  # a window or kernel larger than its padded input: no such network
        return None
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, 3)).eval(), x


def check_chain(case: dict, dims: int) -> None:
    built = chain(case, dims)
    assume(built is not None)
    model, x = built
    conv2 = str(len(model) - 6)  # the second conv: [... conv2, relu, head, flatten, linear]
    pool = next(i for i, m in enumerate(model) if isinstance(m, MAXPOOL[dims]))
    with torch.no_grad():  # PyTorch's max-pool puts -inf where a window holds padding only
        padding_only = bool(torch.isinf(model[:pool + 1](x)).any())
    if padding_only:
        with pytest.raises(ConvscopeError, match="covers only padding"):
            reconstruct(model, x, 1)
        return
    for target in (Class(1), MaxNeuron(conv2, 2), MaxNeuron(str(int(conv2) - 1), 1, rank=1)):
        got, expected = reconstruct(model, x, target), DeconvNet(model).attribute(x, target)
        assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()  # a dead unit: both exactly 0


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("dims", [1, 2, 3])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(data=st.data())
def test_rule_form_deconvnet_equals_the_explicit_mirror(dims: int, data: st.DataObject) -> None:
    check_chain(data.draw(chain_case(dims)), dims)


@pytest.mark.parametrize("dims", [1, 3])
def test_padding_only_pool_windows_are_refused_by_name(dims: int) -> None:
    """dilation + padding + ceil_mode: PyTorch's pool makes a window of padding only (-inf)."""
    model = nn.Sequential(CONV[dims](1, 2, 1), MAXPOOL[dims](2, 2, padding=1, dilation=3, ceil_mode=True),
                          nn.Flatten(), nn.LazyLinear(2)).eval()
    x = torch.randn(1, 1, *(1,) * dims)
    with torch.no_grad():
        assert torch.isinf(model[1](model[0](x))).any()  # PyTorch itself: a window with no maximum
    with pytest.raises(ConvscopeError, match=r"pooling window 0 on spatial axis 0 .* covers only padding"):
        reconstruct(model, x, MaxNeuron("0", 0))


# ------------------------------------------------------------------ the CAM family, naive oracles

def interpolate(a: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """``a [n, *space]`` resized linearly along each spatial axis (half-pixel centres, edges held):
    position ``i`` of ``o`` reads source coordinate ``(i + 0.5) * n / o - 0.5``."""
    for axis, o in enumerate(size, start=1):
        n = a.shape[axis]
        src = (np.arange(o) + 0.5) * n / o - 0.5
        a = np.apply_along_axis(lambda v: np.interp(src, np.arange(n), v), axis, a)
    return a


SEEDS = {1: 6, 2: 2, 3: 1}


def small_net(dims: int, seed: int | None = None) -> tuple[nn.Sequential, torch.Tensor]:
    """conv-relu-maxpool-conv-relu-gap-linear on a signal [2, 2, 19] or a volume [2, 2, 7, 6, 9]
    (seeds chosen so that every map of these tests is non-zero for both samples)."""
    torch.manual_seed(SEEDS[dims] if seed is None else seed)
    model = nn.Sequential(CONV[dims](2, 4, 3, padding=1), nn.ReLU(), MAXPOOL[dims](2),
                          CONV[dims](4, 5, 3, padding=1), nn.ReLU(), ADAPTIVE[dims](1), nn.Flatten(),
                          nn.Linear(5, 3)).eval()
    x = torch.randn(2, 2, *{1: (19,), 2: (11, 9), 3: (7, 6, 9)}[dims])
    return model, x


def naive_acts_grads(model: nn.Module, x: torch.Tensor, layer: nn.Module, cls: int) -> tuple[torch.Tensor, torch.Tensor]:
    store: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: store.append(out))
    try:
        out = model(x)
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(out[:, cls].sum(), store[0])
    return store[0].detach(), grads


NAIVE_WEIGHTS = {  # the papers' weightings, written out on [n, K, *space] (means and sums over space)
    CAM: lambda a, g, sp: g.sum(sp, keepdim=True),
    GradCAM: lambda a, g, sp: g.mean(sp, keepdim=True),
    GradCAMPlusPlus: lambda a, g, sp: (torch.relu(g) * torch.nan_to_num(
        g**2 / (2 * g**2 + a.sum(sp, keepdim=True) * g**3), nan=0.0, posinf=0.0, neginf=0.0)).sum(sp, keepdim=True),
    XGradCAM: lambda a, g, sp: (g * a).sum(sp, keepdim=True) / torch.where(a.sum(sp, keepdim=True) == 0, 1,
                                                                           a.sum(sp, keepdim=True)),
    HiResCAM: lambda a, g, sp: g,
    LayerCAM: lambda a, g, sp: torch.relu(g),
}


@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize("method", list(NAIVE_WEIGHTS), ids=lambda m: m.__name__)
def test_gradient_cams_equal_naive_loops(dims: int, method: type) -> None:
    model, x = small_net(dims)
    acts, grads = naive_acts_grads(model, x, model[3], 2)
    space = tuple(range(2, acts.dim()))
    raw = (NAIVE_WEIGHTS[method](acts, grads, space) * acts).sum(1)
    if method is not CAM:
        raw = torch.relu(raw)
    expected = interpolate(raw.numpy().astype(np.float64), tuple(x.shape[2:]))[:, None]
    got = method(model, "3").attribute(x, 2)
    assert got.shape == (2, 1, *x.shape[2:])
    assert_same(got.double(), torch.from_numpy(expected))
    at_layer = method(model, "3", upsample=False).attribute(x, 2)
    assert_same(at_layer, raw[:, None])


@pytest.mark.parametrize("dims", [1, 3])
def test_the_default_layer_is_the_last_feature_map_with_the_inputs_axes(dims: int) -> None:
    model, x = small_net(dims)
    cam = GradCAM(model)
    torch.testing.assert_close(cam.attribute(x, 1), GradCAM(model, "4").attribute(x, 1))
    assert cam.last_layers == ("4",)  # the last ReLU; the adaptive pool (1 position) and the head do not count


def test_feature_maps_must_have_the_inputs_axes() -> None:
    model, x = small_net(1)
    with pytest.raises(ConvscopeError, match=r"'7' outputs shape \[2, 3\], not a feature map \[N, C, l\]"):
        GradCAM(model, "7").attribute(x, 1)
    with pytest.raises(ConvscopeError, match=r"signals \[N, C, L\], images .* or volumes \[N, C, D, H, W\]"):
        GradCAM(model).attribute(x[..., None, None, None], 1)
    with pytest.raises(ConvscopeError, match=r"no layer of this Sequential outputs a feature map \[N, C, l\]"):
        GradCAM(nn.Sequential(nn.Flatten(), nn.Linear(38, 2))).attribute(x, 1)


@pytest.mark.parametrize("dims", [1, 3])
def test_score_cam_equals_a_loop_over_masked_inputs(dims: int) -> None:
    model, x = small_net(dims)
    acts, _ = naive_acts_grads(model, x, model[3], 0)
    up = torch.from_numpy(interpolate(acts.flatten(0, 1).numpy().astype(np.float64), tuple(x.shape[2:])))
    up = up.reshape(*acts.shape[:2], *x.shape[2:]).float()
    expected = []
    for n in range(len(x)):
        scores = []
        for k in range(acts.shape[1]):
            m = up[n, k]
            mask = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else torch.zeros_like(m)
            with torch.no_grad():
                scores.append(model(x[n:n + 1] * mask)[0, 0])
        w = torch.softmax(torch.stack(scores), 0)
        expected.append(torch.relu((w.reshape(-1, *[1] * dims) * acts[n]).sum(0)))
    got = ScoreCAM(model, "3", upsample=False, max_batch=3).attribute(x, 0)
    assert_same(got, torch.stack(expected)[:, None])


@pytest.mark.parametrize("dims", [1, 3])
def test_ablation_cam_equals_a_loop_over_zeroed_channels(dims: int) -> None:
    model, x = small_net(dims)
    acts, _ = naive_acts_grads(model, x, model[4], 0)
    with torch.no_grad():
        score = model(x)[:, 0]
    weights = torch.zeros(acts.shape[:2])
    for k in range(acts.shape[1]):
        def zero(_m: nn.Module, _i: object, out: torch.Tensor, k: int = k) -> torch.Tensor:
            out = out.clone()
            out[:, k] = 0
            return out

        handle = model[4].register_forward_hook(zero)
        try:
            with torch.no_grad():
                weights[:, k] = (score - model(x)[:, 0]) / score
        finally:
            handle.remove()
    expected = torch.relu((weights.reshape(*weights.shape, *[1] * dims) * acts).sum(1, keepdim=True))
    assert_same(AblationCAM(model, "4", upsample=False).attribute(x, 0), expected)


@pytest.mark.parametrize("dims", [1, 3])
def test_eigen_cam_is_the_first_principal_component(dims: int) -> None:
    model, x = small_net(dims)
    acts, _ = naive_acts_grads(model, x, model[4], 0)
    for n in range(len(x)):
        points = acts[n].flatten(1).T.double()  # [positions, K]
        centred = points - points.mean(0)
        _, _, vh = np.linalg.svd(centred.numpy(), full_matrices=False)
        v = torch.from_numpy(vh[0]) * (1 if vh[0].sum() >= 0 else -1)
        expected = torch.relu(centred @ v).reshape(acts.shape[2:])
        got = EigenCAM(model, "4", upsample=False).attribute(x[n:n + 1], 0)[0, 0]
        assert_same(got.double(), expected, tol=1e-4)


@pytest.mark.parametrize("dims", [1, 3])
def test_guided_grad_cam_is_guided_backprop_times_the_interpolated_grad_cam(dims: int) -> None:
    model, x = small_net(dims)
    acts, grads = naive_acts_grads(model, x, model[4], 2)
    cam = torch.relu((grads.mean(tuple(range(2, grads.dim())), keepdim=True) * acts).sum(1))
    cam = torch.from_numpy(interpolate(cam.numpy().astype(np.float64), tuple(x.shape[2:]))).float()[:, None]
    got = GuidedGradCAM(model, "4").attribute(x, 2)
    assert got.shape == x.shape
    assert_same(got, GuidedBackprop(model).attribute(x, 2) * cam)


def test_pytorch_grad_cam_agrees_on_volumes_at_the_layers_resolution() -> None:
    """Its 3-D Grad-CAM, at a layer with the input's size (its zoom by 1 is the identity), min-max
    scaled as it returns maps (it scales twice, by ``1e-7 + max`` each time: the second scaling
    undoes the first one's epsilon); on a signal it raises (no 1-D support in 1.5.7)."""
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x = small_net(3)
    ours = GradCAM(model, "1").attribute(x, 2)[:, 0]
    with grad_cam.GradCAM(model, [model[1]]) as theirs:
        got = torch.from_numpy(theirs(x, [ClassifierOutputTarget(2)] * len(x)))
    flat = ours.flatten(1)
    low, span = flat.min(1).values, flat.max(1).values - flat.min(1).values
    scaled = (ours - low.reshape(-1, 1, 1, 1)) / span.reshape(-1, 1, 1, 1)  # min-max'd twice: eps cancels
    assert got.shape == ours.shape
    torch.testing.assert_close(got, scaled, atol=1e-4, rtol=0)
    signal_model, signal = small_net(1)
    with grad_cam.GradCAM(signal_model, [signal_model[1]]) as theirs, pytest.raises(ValueError):
        theirs(signal, [ClassifierOutputTarget(2)] * len(signal))


# ------------------------------------------------------------------ project on 1-D and 3-D nets

@pytest.mark.parametrize("dims", [1, 3])
def test_project_finds_the_strongest_units_and_mirrors_each_alone(dims: int) -> None:
    model, x = small_net(dims)
    p = project(model, x, "4", 3, top=2)
    with torch.no_grad():
        fmap = model[:5](x)[:, 3]  # [2, *space], computed independently
    space = fmap.shape[1:]
    assert p.maps.shape == (2, 2, *x.shape[1:]) and p.positions.shape == (2, 2, dims)
    for n in range(2):
        three = torch.topk(fmap[n].flatten(), 3).values
        assert three[0] > three[1] > three[2] and three[1] > 0  # an unambiguous ranking of live units
        values, flat = torch.topk(fmap[n].flatten(), 2)
        torch.testing.assert_close(p.values[n], values)
        for k in range(2):
            position = np.unravel_index(int(flat[k]), tuple(space))
            assert p.positions[n, k].tolist() == [int(i) for i in position]
            seed = float(values[k]) * Neuron("4", 3, *map(int, position))
            assert_same(p.maps[n, k], reconstruct(model, x[n:n + 1], seed)[0])


def test_every_mirror_keeps_the_model_and_input_untouched_on_volumes() -> None:
    model, x = small_net(3)
    model.train()
    before_x, before = x.clone(), [p.clone() for p in model.parameters()]
    reconstruct(model, x, MaxNeuron("3", 1))
    GradCAM(model).attribute(x, 1)
    assert torch.equal(x, before_x) and model.training
    assert all(torch.equal(p, q) and p.grad is None for p, q in zip(model.parameters(), before))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch._C._len_torch_function_stack() == 0  # no mode left behind
