"""CAM family: every weighting against a naive loop-by-loop re-implementation (activations and
gradients recorded with a plain hook and autograd), hand-computed CAM/Grad-CAM on a tiny
GAP + linear net, the CAM = Grad-CAM * h * w = fc-weights identity (also on shapes-resnet),
upsampling by hand, Score-CAM / Ablation-CAM with constant and dead channels, Eigen-CAM against
numpy's SVD, Guided Grad-CAM against naive guided backprop, batch independence, per-sample and
many targets, several layers, the automatic layer choice and input errors."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from nets import make, sample, torchvision_model
from reference.naive_backprop import naive_attribution
from torch import Tensor, nn

from convscope.errors import ConvscopeError
from convscope.methods import (
    CAM,
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
    methods,
)
from convscope.methods.cam import CAMMethod, default_layer, upsample
from convscope.targets import Channel

CLASSES = [0, 3, 1]


def close(a: Tensor, b: Tensor, tol: float = 1e-5) -> bool:
    return bool((a - b).abs().max() <= tol * max(float(b.abs().max()), 1e-12))


# ---------------------------------------------------------------- naive reference
def naive_acts_grads(model: nn.Module, x: Tensor, layer: str, classes: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """(A, dS/dA, S) from a plain forward hook on a deep copy and autograd."""
    clone = copy.deepcopy(model).eval()
    seen: list[Tensor] = []
    clone.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o))
    out = clone(x)
    score = out[torch.arange(len(x)), torch.tensor(classes)]
    (grad,) = torch.autograd.grad(score.sum(), seen[0])
    return seen[0].detach(), grad, score.detach()


def w_cam(a: Tensor, g: Tensor) -> Tensor:
    return torch.stack([g[k].sum() for k in range(len(a))])


def w_grad_cam(a: Tensor, g: Tensor) -> Tensor:
    return torch.stack([g[k].mean() for k in range(len(a))])


def w_plus_plus(a: Tensor, g: Tensor, eps: float = 0.0) -> Tensor:
    weights = []
    for k in range(len(a)):
        total, w = float(a[k].sum()), 0.0
        for gij in g[k].flatten().tolist():
            den = 2 * gij ** 2 + total * gij ** 3 + eps
            alpha = gij ** 2 / den if gij != 0 and den != 0 else 0.0
            w += max(gij, 0.0) * alpha
        weights.append(w)
    return torch.tensor(weights)


def w_x_grad(a: Tensor, g: Tensor) -> Tensor:
    return torch.stack([(g[k] * a[k]).sum() / a[k].sum() if a[k].sum() != 0 else torch.tensor(0.0)
                        for k in range(len(a))])


def per_channel(weigh: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    def raw(a: Tensor, g: Tensor) -> Tensor:
        w = weigh(a, g)
        return sum(float(w[k]) * a[k] for k in range(len(a)))

    return raw


NAIVE: dict[type[CAMMethod], Callable[[Tensor, Tensor], Tensor]] = {
    CAM: per_channel(w_cam),
    GradCAM: per_channel(w_grad_cam),
    GradCAMPlusPlus: per_channel(w_plus_plus),
    XGradCAM: per_channel(w_x_grad),
    HiResCAM: lambda a, g: sum(g[k] * a[k] for k in range(len(a))),
    LayerCAM: lambda a, g: sum(torch.relu(g[k]) * a[k] for k in range(len(a))),
}
LAYERS = {"tiny_vgg": ["features", "features.3"], "tiny_residual": ["layer2", "layer1"]}


@pytest.mark.parametrize("model_name", list(LAYERS))
@pytest.mark.parametrize("cls", list(NAIVE), ids=lambda c: c.__name__)
def test_gradient_weightings_match_naive_loops(cls: type[CAMMethod], model_name: str) -> None:
    model, x = make(model_name).eval(), sample(model_name)
    for layer in LAYERS[model_name]:
        a, g, _ = naive_acts_grads(model, x, layer, CLASSES)
        expected = torch.stack([NAIVE[cls](a[n], g[n]) for n in range(len(x))])[:, None]
        raw = cls(model, layer, upsample=False, relu=False).attribute(x, CLASSES)
        assert close(raw, expected)
        final = cls(model, layer).attribute(x, CLASSES)  # the default ReLU, then upsampling
        relu = torch.relu(expected) if cls.default_relu else expected
        assert close(final, F.interpolate(relu, size=x.shape[-2:], mode="bilinear", align_corners=False))


def test_grad_cam_plus_plus_eps_is_the_one_in_the_formula() -> None:
    model, x = make("tiny_vgg").eval(), sample("tiny_vgg")
    a, g, _ = naive_acts_grads(model, x, "features", CLASSES)
    expected = torch.stack([per_channel(lambda a_, g_: w_plus_plus(a_, g_, 1e-6))(a[n], g[n]) for n in range(3)])
    got = GradCAMPlusPlus(model, "features", upsample=False, relu=False, eps=1e-6).attribute(x, CLASSES)
    assert close(got, expected[:, None])
    assert not close(got, GradCAMPlusPlus(model, "features", upsample=False, relu=False).attribute(x, CLASSES), 1e-3)


# ---------------------------------------------------------------- identities and hand values
class GapNet(nn.Module):
    """1x1 conv (1 -> 2 channels, weights 1 and -1), global average pool, fc with W = [[1, 2], [3, -1]]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
            self.fc.bias.copy_(torch.tensor([0.5, -0.5]))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def test_hand_computed_cam_and_grad_cam() -> None:
    # A_0 = x, A_1 = -x; class 0: 1 * x + 2 * (-x) = -x; class 1: 3 * x - 1 * (-x) = 4x; h * w = 4
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    net = GapNet()
    assert torch.allclose(CAM(net, "conv", upsample=False).attribute(x, 0), -x)
    assert torch.allclose(CAM(net, "conv", upsample=False).attribute(x, 1), 4 * x)
    assert torch.allclose(GradCAM(net, "conv", upsample=False).attribute(x, 1), x)  # relu(4x / 4)
    assert torch.allclose(GradCAM(net, "conv", upsample=False).attribute(x, 0), torch.zeros_like(x))
    # HiResCAM without ReLU sums to the score minus the bias
    hires = HiResCAM(net, "conv", upsample=False, relu=False).attribute(x, 1)
    assert torch.isclose(hires.sum(), net(x)[0, 1] - net.fc.bias[1])  # = mean(4x) = 10


def check_cam_identities(model: nn.Module, x: Tensor, layer: str, fc: nn.Linear, classes: list[int]) -> None:
    a, _, score = naive_acts_grads(model, x, layer, classes)
    fc_map = torch.einsum("nk,nkhw->nhw", fc.weight[classes].detach(), a)[:, None]  # Zhou et al.'s CAM
    cam = CAM(model, layer, upsample=False).attribute(x, classes)
    grad_cam = GradCAM(model, layer, upsample=False, relu=False).attribute(x, classes)
    assert close(cam, fc_map)
    assert close(grad_cam * a.shape[2] * a.shape[3], fc_map)
    hires = HiResCAM(model, layer, upsample=False, relu=False).attribute(x, classes)
    assert close(hires.sum((1, 2, 3)), score - fc.bias[classes].detach())


def test_cam_equals_grad_cam_and_fc_weights_on_a_gap_head() -> None:
    model = make("tiny_residual").eval()
    check_cam_identities(model, sample("tiny_residual"), "layer2", model.fc, CLASSES)


def test_cam_identities_on_shapes_resnet(shapes_resnet: nn.Module) -> None:
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    check_cam_identities(shapes_resnet, x, "layer3", shapes_resnet.fc, [0, 5, 2, 3])


def test_upsample_by_hand() -> None:
    # half-pixel centres, 2 -> 4: the 1-D weights of [v0, v1] are [1, 0], [.75, .25], [.25, .75], [0, 1]
    got = upsample(torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2), (4, 4))
    ramp = torch.tensor([0.0, 0.25, 0.75, 1.0])
    assert torch.allclose(got[0, 0], 2 * ramp[:, None] + ramp[None, :])


# ---------------------------------------------------------------- perturbation weightings
def with_flat_channels(model: nn.Module) -> nn.Module:
    """tiny_vgg whose features.3 channels 0-1 are dead (all zero) and channel 2 constant (> 0)."""
    model = copy.deepcopy(model).eval()
    conv = model.features[3]
    with torch.no_grad():
        conv.weight[:3] = 0
        conv.bias[:3] = torch.tensor([-1.0, -0.5, 0.7])
    return model


FLAT = with_flat_channels(make("tiny_vgg"))
RESNET18 = torchvision_model("resnet18")


def naive_score_cam(model: nn.Module, x: Tensor, layer: str, classes: list[int]) -> Tensor:
    a, _, _ = naive_acts_grads(model, x, layer, classes)
    maps = []
    with torch.no_grad():
        for n in range(len(x)):
            scores = []
            for k in range(a.shape[1]):
                # a constant grid upsamples to a constant (the bilinear weights sum to 1): mask 0; in
                # floating point it picks up rounding noise that min-max would blow up, so decide on the grid
                up = F.interpolate(a[n, k][None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
                flat = a[n, k].max() == a[n, k].min()
                mask = torch.zeros_like(up) if flat else (up - up.min()) / (up.max() - up.min())
                scores.append(model(x[n:n + 1] * mask)[0, classes[n]])
            w = torch.softmax(torch.stack(scores), 0)
            maps.append(sum(w[k] * a[n, k] for k in range(a.shape[1])))
    return torch.stack(maps)[:, None]


def naive_ablation_cam(model: nn.Module, x: Tensor, layer: str, classes: list[int]) -> Tensor:
    a, _, score = naive_acts_grads(model, x, layer, classes)
    clone = copy.deepcopy(model).eval()
    maps = []
    with torch.no_grad():
        for n in range(len(x)):
            weights = []
            for k in range(a.shape[1]):
                ablated = a[n:n + 1].clone()
                ablated[0, k] = 0
                handle = clone.get_submodule(layer).register_forward_hook(lambda m, i, o, v=ablated: v)
                s_k = clone(x[n:n + 1])[0, classes[n]]
                handle.remove()
                weights.append((score[n] - s_k) / score[n])
            maps.append(sum(weights[k] * a[n, k] for k in range(a.shape[1])))
    return torch.stack(maps)[:, None]


PERTURB_NAIVE = {ScoreCAM: naive_score_cam, AblationCAM: naive_ablation_cam}


@pytest.mark.parametrize("model_name", ["flat_vgg", "tiny_residual"])
@pytest.mark.parametrize("cls", list(PERTURB_NAIVE), ids=lambda c: c.__name__)
def test_perturbation_weightings_match_naive_loops(cls: type[CAMMethod], model_name: str) -> None:
    model = FLAT if model_name == "flat_vgg" else make(model_name).eval()
    x = sample("tiny_vgg" if model_name == "flat_vgg" else model_name)
    layer = "features" if model_name == "flat_vgg" else "layer2"
    expected = PERTURB_NAIVE[cls](model, x, layer, CLASSES)
    for max_batch in (None, 1, 5):
        got = cls(model, layer, upsample=False, relu=False, max_batch=max_batch).attribute(x, CLASSES)
        assert close(got, expected)


def test_flat_channels_are_really_flat() -> None:
    a, _, _ = naive_acts_grads(FLAT, sample("tiny_vgg"), "features", CLASSES)
    assert bool((a[:, :2] == 0).all()) and bool((a[:, 2] == a[:, 2, :1, :1]).all()) and bool((a[:, 2] > 0).all())


def test_score_cam_shares_one_evaluation_for_flat_channels() -> None:
    x = sample("tiny_vgg")
    a, _, _ = naive_acts_grads(FLAT, x, "features", CLASSES)
    varying = int((a.flatten(2).amax(2) > a.flatten(2).amin(2)).sum())
    calls: list[int] = []
    handle = FLAT.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        ScoreCAM(FLAT, "features", max_batch=100).attribute(x, CLASSES)
    finally:
        handle.remove()
    # one forward of the batch, one shared zero image, and every varying mask in one batch
    assert varying <= 3 * 5 and calls == [3, 1, varying]


def naive_eigen_cam(model: nn.Module, x: Tensor, layer: str) -> Tensor:
    a, _, _ = naive_acts_grads(model, x, layer, [0] * len(x))
    maps = []
    for n in range(len(x)):
        flat = a[n].reshape(a.shape[1], -1).T.double().numpy()
        flat = flat - flat.mean(axis=0)
        v = np.linalg.svd(flat)[2][0]
        v = -v if v.sum() < 0 else v
        maps.append(torch.from_numpy(flat @ v).float().view(a.shape[2:]))
    return torch.stack(maps)[:, None]


def test_eigen_cam_matches_numpy_svd_and_ignores_the_target() -> None:
    model, x = make("tiny_vgg").eval(), sample("tiny_vgg")
    expected = naive_eigen_cam(model, x, "features.3")
    method = EigenCAM(model, "features.3", upsample=False, relu=False)
    one, other = method.attribute(x, targets=[0, Channel("features.3", 2)])
    assert close(one, expected, 1e-4) and torch.equal(one, other)


def numpy_principal_projection(weighted: Tensor, plain: Tensor) -> Tensor:
    """eigen_smooth by hand: ``weighted [K, h, w]`` as h*w points, centred, projected on numpy's first
    right singular vector, the sign taken so that the projection agrees with ``plain [h, w]``."""
    flat = weighted.reshape(len(weighted), -1).T.double().numpy()
    flat = flat - flat.mean(axis=0)
    projection = flat @ np.linalg.svd(flat)[2][0]
    plain_flat = plain.flatten().double().numpy()
    if projection @ (plain_flat - plain_flat.mean()) < 0:
        projection = -projection
    return torch.from_numpy(projection).float().view(plain.shape)


EIGEN_WEIGHTS = {GradCAM: lambda a, g: w_grad_cam(a, g)[:, None, None], HiResCAM: lambda a, g: g,
                 LayerCAM: lambda a, g: torch.relu(g), XGradCAM: lambda a, g: w_x_grad(a, g)[:, None, None]}


@pytest.mark.parametrize("model_name", list(LAYERS))
@pytest.mark.parametrize("cls", list(EIGEN_WEIGHTS), ids=lambda c: c.__name__)
def test_eigen_smooth_is_the_numpy_principal_projection_of_the_weighted_maps(cls: type[CAMMethod],
                                                                            model_name: str) -> None:
    model, x = make(model_name).eval(), sample(model_name)
    layer = LAYERS[model_name][0]
    a, g, _ = naive_acts_grads(model, x, layer, CLASSES)
    expected = []
    for n in range(len(x)):
        weighted = EIGEN_WEIGHTS[cls](a[n], g[n]) * a[n]
        expected.append(numpy_principal_projection(weighted, weighted.sum(0)))
    raw = cls(model, layer, upsample=False, relu=False, eigen_smooth=True).attribute(x, CLASSES)
    assert close(raw, torch.stack(expected)[:, None], 1e-4)  # float32 against float64 SVDs
    final = cls(model, layer, eigen_smooth=True).attribute(x, CLASSES)
    assert close(final, F.interpolate(torch.relu(raw), size=x.shape[-2:], mode="bilinear", align_corners=False))
    assert not close(raw, cls(model, layer, upsample=False, relu=False).attribute(x, CLASSES), 1e-2)


def test_eigen_smooth_of_a_single_channel_is_the_centred_map() -> None:
    # one channel: its only principal direction is that channel, so P1(w A) = w A - mean(w A)
    model = nn.Sequential(nn.Conv2d(3, 1, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)).eval()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    model(x)
    plain = GradCAM(model, "1", upsample=False, relu=False).attribute(x, [0, 1])
    smooth = GradCAM(model, "1", upsample=False, relu=False, eigen_smooth=True).attribute(x, [0, 1])
    assert close(smooth, plain - plain.mean((2, 3), keepdim=True))


def test_guided_grad_cam_passes_eigen_smooth_to_its_grad_cam() -> None:
    model, x = make("tiny_vgg").eval(), sample("tiny_vgg")
    guided = GuidedBackprop(model).attribute(x, CLASSES)
    cam = GradCAM(model, "features", eigen_smooth=True).attribute(x, CLASSES)
    assert close(GuidedGradCAM(model, "features", eigen_smooth=True).attribute(x, CLASSES), guided * cam)
    assert not close(GuidedGradCAM(model, "features").attribute(x, CLASSES), guided * cam, 1e-2)


def test_eigen_smooth_leaves_eigen_cam_as_it_is_and_checks_its_flag() -> None:
    model, x = make("tiny_vgg").eval(), sample("tiny_vgg")
    plain = EigenCAM(model, "features.3").attribute(x, 0)
    assert torch.equal(EigenCAM(model, "features.3", eigen_smooth=True).attribute(x, 0), plain)
    assert "eigen_smooth=True" in repr(ScoreCAM(model, eigen_smooth=True))
    with pytest.raises(ConvscopeError, match="eigen_smooth='yes' must be True or False"):
        GradCAMPlusPlus(model, eigen_smooth="yes")  # type: ignore[arg-type]


def test_guided_grad_cam_is_naive_guided_backprop_times_grad_cam() -> None:
    model, x = make("tiny_vgg").eval(), sample("tiny_vgg")
    guided = naive_attribution(model, x, lambda m, t: m(t)[torch.arange(3), torch.tensor(CLASSES)], rule="guided")
    a, g, _ = naive_acts_grads(model, x, "features", CLASSES)
    cam = torch.relu(torch.stack([NAIVE[GradCAM](a[n], g[n]) for n in range(3)])[:, None])
    expected = guided * F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    method = GuidedGradCAM(model, "features")
    assert close(method.attribute(x, CLASSES), expected) and method.last_layers == ("features",)


# ---------------------------------------------------------------- batches, targets, layers
CAM_METHODS = [info.cls for info in methods().values() if issubclass(info.cls, CAMMethod) or info.cls is GuidedGradCAM]
RESIDUAL, RESIDUAL_X = make("tiny_residual").eval(), sample("tiny_residual", n=5)
RESIDUAL_CLASSES = [0, 3, 1, 4, 2]


def test_every_cam_method_is_registered() -> None:
    names = {"cam", "grad_cam", "grad_cam_plus_plus", "x_grad_cam", "hires_cam", "layer_cam", "score_cam",
             "ablation_cam", "eigen_cam", "guided_grad_cam"}
    assert names <= set(methods()) and all(methods()[n].description for n in names)
    assert len(CAM_METHODS) == len(names)


@pytest.mark.parametrize("cls", CAM_METHODS, ids=lambda c: c.__name__)
def test_per_sample_and_many_targets(cls: type) -> None:
    method = cls(RESIDUAL)
    per_sample, channel = method.attribute(RESIDUAL_X, targets=[RESIDUAL_CLASSES, Channel("layer1", 2)])
    singles = torch.cat([method.attribute(RESIDUAL_X[i:i + 1], c) for i, c in enumerate(RESIDUAL_CLASSES)])
    tol = 1e-6 * float(per_sample.abs().max())
    torch.testing.assert_close(per_sample, singles, rtol=1e-5, atol=tol)
    torch.testing.assert_close(channel, method.attribute(RESIDUAL_X, Channel("layer1", 2)), rtol=1e-5, atol=tol)
    expected_channels = 3 if cls is GuidedGradCAM else 1
    assert per_sample.shape == (5, expected_channels, 16, 16)


FULL: dict[type, Tensor] = {}


@settings(max_examples=10, deadline=None)
@given(max_batch=st.integers(1, 12), perm=st.permutations(range(5)),
       cls=st.sampled_from([ScoreCAM, AblationCAM, GradCAMPlusPlus, EigenCAM]))
def test_results_do_not_depend_on_max_batch_or_neighbours(max_batch: int, perm: list[int], cls: type) -> None:
    if cls not in FULL:
        FULL[cls] = cls(RESIDUAL).attribute(RESIDUAL_X, RESIDUAL_CLASSES)
    full = FULL[cls]
    classes = [RESIDUAL_CLASSES[i] for i in perm]
    got = cls(RESIDUAL, max_batch=max_batch).attribute(RESIDUAL_X[perm], classes)
    torch.testing.assert_close(got, full[perm], rtol=1e-5, atol=1e-6 * float(full.abs().max()))


def test_several_layers_give_one_channel_each() -> None:
    model, x = make("tiny_vgg").eval(), sample("tiny_vgg")
    method = GradCAM(model, ["features.3", "features"])
    both = method.attribute(x, CLASSES)
    assert both.shape == (3, 2, 16, 16) and method.last_layers == ("features.3", "features")
    assert torch.equal(both[:, :1], GradCAM(model, "features.3").attribute(x, CLASSES))
    assert torch.equal(both[:, 1:], GradCAM(model, model.features).attribute(x, CLASSES))
    raw = GradCAM(model, ["features.3", "features.4"], upsample=False).attribute(x, targets=[1, 2])
    assert raw[0].shape == (3, 2, 8, 8)
    with pytest.raises(ConvscopeError, match="different resolutions"):
        GradCAM(model, ["features.3", "features"], upsample=False).attribute(x, 1)


def test_wrt_gives_the_raw_map_of_that_layer() -> None:
    model, x = make("tiny_vgg").eval(), sample("tiny_vgg")
    method = LayerCAM(model)
    got = method.attribute(x, 2, wrt="features.3")
    assert method.last_layers == ("features.3",)
    assert torch.equal(got, LayerCAM(model, "features.3", upsample=False).attribute(x, 2))


def vgg_head() -> nn.Module:
    """A VGG-shaped net: features, then an adaptive 7x7 average pool (which resizes, 2x2 -> 7x7)."""
    features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4))
    return nn.Sequential(OrderedDict(features=features, avgpool=nn.AdaptiveAvgPool2d(7), flatten=nn.Flatten(),
                                     fc=nn.Linear(4 * 49, 3)))


@pytest.mark.parametrize("name, size, expected", [
    ("tiny_vgg", 16, "features"), ("tiny_residual", 16, "layer2"), ("spelling:shared_inplace", 8, "pool"),
    ("spelling:F.relu", 8, "pool"), ("resnet18", 64, "layer4"), ("resnet18", 32, "layer3"),
    ("vgg_head", 8, "features")])
def test_automatic_layer_is_the_last_spatial_one(name: str, size: int, expected: str) -> None:
    model = {"resnet18": lambda: RESNET18, "vgg_head": vgg_head}.get(name, lambda: make(name))()
    x = torch.rand(2, 3, size, size)
    assert default_layer(model, x) == expected
    if name == "tiny_residual":
        method = GradCAM(model)
        method.attribute(x, 1)
        assert method.last_layers == ("layer2",)


def test_no_hooks_left_and_parameters_untouched() -> None:
    model, x = make("tiny_residual").train(), sample("tiny_residual")
    state = copy.deepcopy(model.state_dict())
    for cls in (GradCAM, ScoreCAM, AblationCAM):
        cls(model, max_batch=2).attribute(x, CLASSES)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(not (m._forward_hooks or m._forward_pre_hooks) for m in model.modules())


def test_clear_errors() -> None:
    model, x = make("tiny_vgg").eval(), sample("tiny_vgg")
    with pytest.raises(ConvscopeError, match="no layer named"):
        GradCAM(model, "featurez").attribute(x, 1)
    with pytest.raises(ConvscopeError, match="not a feature map"):
        GradCAM(model, "classifier.1").attribute(x, 1)
    with pytest.raises(ConvscopeError, match=r"forward pass failed.*batch dimension"):
        GradCAM(model).attribute(x[0], 1)  # [C, H, W] reads as a batch of signals: the model says no
    with pytest.raises(ConvscopeError, match=r"signals \[N, C, L\], images \[N, C, H, W\] or volumes"):
        GradCAM(model).attribute(x[0, 0], 1)
    with pytest.raises(ConvscopeError, match="non-empty list"):
        GradCAM(model, [])
    with pytest.raises(ConvscopeError, match="twice"):
        GradCAM(model, ["features", "features"])
    with pytest.raises(ConvscopeError, match="True or False"):
        ScoreCAM(model, relu="yes")  # type: ignore[arg-type]
    with pytest.raises(ConvscopeError, match="not a feature map"):
        GuidedGradCAM(model).attribute(x, 1, wrt="classifier.1")
    with pytest.raises(ConvscopeError, match="no layer of this Sequential"):
        GradCAM(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))).attribute(x, 1)


def test_the_default_layer_is_found_once_per_model_and_sample_shape() -> None:
    """One pass to find the layer the first time; after that each call runs its own pass only."""
    model = make("tiny_vgg").eval()
    calls = []
    handle = model.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    try:
        x = sample("tiny_vgg")
        first = GradCAM(model).attribute(x, 0)
        assert calls == [1, len(x)]  # the layer search (one sample), then the map
        calls.clear()
        torch.testing.assert_close(GradCAM(model).attribute(x, 0), first)
        assert calls == [len(x)]
        model.features[0] = torch.nn.Conv2d(3, model.features[0].out_channels, 3, padding=1)  # a new module tree
        calls.clear()
        GradCAM(model).attribute(x, 0)
        assert calls == [1, len(x)]
    finally:
        handle.remove()
