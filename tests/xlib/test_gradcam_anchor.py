"""pytorch-grad-cam as an anchor for the CAM family.

pytorch-grad-cam returns maps min-max normalised per image and resized with ``cv2.resize``;
its raw (layer-resolution, pre-ReLU) maps are reachable through ``get_cam_image`` with the
activations and gradients its hooks recorded. Raw maps agree with ours to 1e-5 for GradCAM,
GradCAM++ (with its ``eps=1e-6``), XGradCAM, HiResCAM, LayerCAM, ScoreCAM (with its
``align_corners=True`` masks), AblationCAM (on post-ReLU layers) and EigenCAM (up to the SVD's
sign, which convscope fixes), with and without ``eigen_smooth`` (up to the same sign); end to
end, its GradCAM output equals ours normalised the same way, and its ``aug_smooth`` equals
:class:`~convscope.methods.AugSmooth` with ``normalise=True``. Differences by design, shown here:
the normalisation itself (also of each map that ``aug_smooth`` averages), the sign of the
``eigen_smooth`` projection, Score-CAM's mask interpolation, and Ablation-CAM on layers with
negative values (it sets a channel to ``min - 1e7``, not 0).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nets import make, sample, torchvision_model
from torch import Tensor, nn

from convscope.methods import (
    AblationCAM,
    AugSmooth,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from convscope.methods.cam import CAMMethod

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CLASSES = [0, 3, 1]
# ours (with the options that match) -> pytorch-grad-cam's class
PAIRS: dict[str, tuple[Callable[[nn.Module, str], CAMMethod], str]] = {
    "grad_cam": (lambda m, layer: GradCAM(m, layer, upsample=False, relu=False), "GradCAM"),
    "grad_cam_plus_plus": (lambda m, layer: GradCAMPlusPlus(m, layer, upsample=False, relu=False, eps=1e-6),
                           "GradCAMPlusPlus"),
    "x_grad_cam": (lambda m, layer: XGradCAM(m, layer, upsample=False, relu=False), "XGradCAM"),
    "hires_cam": (lambda m, layer: HiResCAM(m, layer, upsample=False, relu=False), "HiResCAM"),
    "layer_cam": (lambda m, layer: LayerCAM(m, layer, upsample=False, relu=False), "LayerCAM"),
    "score_cam": (lambda m, layer: ScoreCAM(m, layer, upsample=False, relu=False, align_corners=True), "ScoreCAM"),
    "ablation_cam": (lambda m, layer: AblationCAM(m, layer, upsample=False, relu=False), "AblationCAM"),
    "eigen_cam": (lambda m, layer: EigenCAM(m, layer, upsample=False, relu=False), "EigenCAM"),
}
MODELS = {"tiny_vgg": "features", "tiny_residual": "layer2"}


def close(a: Tensor, b: Tensor, tol: float = 1e-5) -> bool:
    return bool((a - b).abs().max() <= tol * max(float(b.abs().max()), 1e-12))


def theirs_raw(name: str, model: nn.Module, layer: str, x: Tensor, classes: list[int],
               eigen_smooth: bool = False) -> Tensor:
    """pytorch-grad-cam's raw map [N, 1, h, w]: its own forward/backward, then ``get_cam_image``."""
    model = copy.deepcopy(model)  # it runs .backward() into the parameters and swaps layers
    module = model.get_submodule(layer)
    cam = getattr(pgc, PAIRS[name][1])(model=model, target_layers=[module])
    targets = [ClassifierOutputTarget(c) for c in classes]
    with cam:
        cam(input_tensor=x.clone(), targets=targets)
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy() if cam.uses_gradients else None
        raw = cam.get_cam_image(x.clone(), module, targets, acts, grads, eigen_smooth)
    return torch.from_numpy(np.asarray(raw, dtype=np.float32))[:, None]


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("name", list(PAIRS))
def test_raw_maps_agree(name: str, model_name: str) -> None:
    model, x, layer = make(model_name).eval(), sample(model_name), MODELS[model_name]
    ours = PAIRS[name][0](model, layer).attribute(x, CLASSES)
    theirs = theirs_raw(name, model, layer, x, CLASSES)
    if name == "eigen_cam":  # the SVD's sign is arbitrary; convscope fixes it, pytorch-grad-cam does not
        assert close(ours, signs(ours, theirs) * theirs, 1e-4)  # float32 SVDs by two libraries
    else:
        assert close(ours, theirs)


def signs(ours: Tensor, theirs: Tensor) -> Tensor:
    """Per map, +1 where ``theirs`` correlates with ``ours``, -1 where it anti-correlates."""
    return torch.sign((ours * theirs).flatten(1).sum(1)).view(-1, 1, 1, 1)


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("name", list(PAIRS))
def test_eigen_smooth_raw_maps_agree_up_to_their_sign(name: str, model_name: str) -> None:
    model, x, layer = make(model_name).eval(), sample(model_name), MODELS[model_name]
    method = PAIRS[name][0](model, layer)
    method.eigen_smooth = True
    ours = method.attribute(x, CLASSES)
    theirs = theirs_raw(name, model, layer, x, CLASSES, eigen_smooth=True)
    assert close(ours, signs(ours, theirs) * theirs, 1e-4)  # float32 SVDs by two libraries


def test_their_eigen_smooth_sign_can_turn_the_map_around() -> None:
    # pytorch-grad-cam keeps the sign its SVD returns: on tiny_vgg its Grad-CAM projection
    # anti-correlates with its own plain Grad-CAM map, so after the ReLU it shows the rest of the
    # image; convscope's projection agrees in sign with the plain map by construction
    model, x, layer = make("tiny_vgg").eval(), sample("tiny_vgg"), MODELS["tiny_vgg"]
    plain = theirs_raw("grad_cam", model, layer, x, CLASSES)
    theirs = theirs_raw("grad_cam", model, layer, x, CLASSES, eigen_smooth=True)
    ours = GradCAM(model, layer, upsample=False, relu=False, eigen_smooth=True).attribute(x, CLASSES)
    centred = plain - plain.mean((2, 3), keepdim=True)
    assert (signs(centred, theirs) < 0).any()
    assert (signs(centred, ours) > 0).all()


@pytest.mark.parametrize("name", ["grad_cam", "grad_cam_plus_plus", "x_grad_cam", "hires_cam", "layer_cam"])
def test_raw_maps_agree_on_resnet18(name: str) -> None:
    model, x = torchvision_model("resnet18"), torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    assert close(PAIRS[name][0](model, "layer4").attribute(x, [7, 1]), theirs_raw(name, model, "layer4", x, [7, 1]))


def pgc_normalise(maps: Tensor) -> Tensor:
    """pytorch-grad-cam's ``scale_cam_image``: ``(m - min) / (1e-7 + max)`` per map."""
    flat = maps.flatten(1)
    flat = flat - flat.amin(1, keepdim=True)
    return (flat / (1e-7 + flat.amax(1, keepdim=True))).view_as(maps)


def test_end_to_end_grad_cam_equals_ours_normalised_the_same_way() -> None:
    model, x = make("tiny_residual").eval(), sample("tiny_residual")
    clone = copy.deepcopy(model)
    with pgc.GradCAM(model=clone, target_layers=[clone.layer2]) as cam:
        theirs = torch.from_numpy(cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(c) for c in CLASSES]))
    raw = GradCAM(model, "layer2", upsample=False).attribute(x, CLASSES)  # with ReLU, as theirs
    ours = pgc_normalise(F.interpolate(pgc_normalise(raw), size=x.shape[-2:], mode="bilinear", align_corners=False))
    assert close(ours[:, 0], theirs)
    # by design they differ from our map: theirs spans [0, 1] per image, ours keeps the scale
    assert not close(GradCAM(model, "layer2").attribute(x, CLASSES)[:, 0], theirs, 1e-2)


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("ours_cls, theirs_name", [(GradCAM, "GradCAM"), (LayerCAM, "LayerCAM")])
def test_aug_smooth_with_normalised_maps_equals_theirs(ours_cls: type[CAMMethod], theirs_name: str,
                                                       model_name: str) -> None:
    model, x, layer = make(model_name).eval(), sample(model_name), MODELS[model_name]
    clone = copy.deepcopy(model)
    with getattr(pgc, theirs_name)(model=clone, target_layers=[clone.get_submodule(layer)]) as cam:
        theirs = torch.from_numpy(cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(c) for c in CLASSES],
                                      aug_smooth=True))
    ours = AugSmooth(ours_cls(model, layer), normalise=True).attribute(x, CLASSES)
    assert close(ours[:, 0], theirs)
    # by design, AugSmooth's default averages the maps as they are, which weighs each augmentation by its scale
    assert not close(pgc_normalise(AugSmooth(ours_cls(model, layer)).attribute(x, CLASSES))[:, 0], theirs, 1e-2)


def test_score_cam_mask_interpolation_differs_by_design() -> None:
    model, x = make("tiny_residual").eval(), sample("tiny_residual")
    theirs = theirs_raw("score_cam", model, "layer2", x, CLASSES)
    ours_default = ScoreCAM(model, "layer2", upsample=False, relu=False).attribute(x, CLASSES)
    assert not close(ours_default, theirs, 1e-4)  # half-pixel masks (the paper's code) vs corner-aligned


def naive_ablation(model: nn.Module, layer: str, x: Tensor, classes: list[int], fill: str = "zero") -> Tensor:
    """Ablation-CAM's raw map by loops: channel k set to 0 (``fill="zero"``, the paper) or as
    pytorch-grad-cam does on a layer with negative values (``fill="pgc"``): its ablation layer
    writes ``min(batch) - 1e7`` into row after row of one in-place batch, so the k-th channel of
    a batch gets ``min - (k + 1) * 1e7``; ``w_k = (S - S_k) / S``."""
    clone, seen = copy.deepcopy(model).eval(), []
    handle = clone.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    with torch.no_grad():
        scores = clone(x)[torch.arange(len(x)), torch.tensor(classes)]
    handle.remove()
    acts, maps = seen[0], []
    for n in range(len(x)):
        weights = []
        for k in range(acts.shape[1]):
            ablated = acts[n:n + 1].clone()
            ablated[0, k] = 0.0 if fill == "zero" else float(acts[n].min()) - (k % 32 + 1) * 1e7
            handle = clone.get_submodule(layer).register_forward_hook(lambda m, i, o, v=ablated: v)
            with torch.no_grad():
                weights.append((scores[n] - clone(x[n:n + 1])[0, classes[n]]) / scores[n])
            handle.remove()
        maps.append(sum(w * acts[n, k] for k, w in enumerate(weights)))
    return torch.stack(maps)[:, None]


def test_ablation_cam_on_a_layer_with_negative_values_differs_by_design() -> None:
    # layer2.conv2 has negative values: pytorch-grad-cam then sets ablated channels to ever lower
    # values (min - 1e7, min - 2e7, ... within a batch of 32); the paper (and convscope) use 0
    model, x = make("tiny_residual").eval(), sample("tiny_residual")
    layer = "layer2.conv2"
    ours = AblationCAM(model, layer, upsample=False, relu=False).attribute(x, CLASSES)
    theirs = theirs_raw("ablation_cam", model, layer, x, CLASSES)
    assert close(ours, naive_ablation(model, layer, x, CLASSES))
    assert close(theirs, naive_ablation(model, layer, x, CLASSES, fill="pgc"), 1e-3)
    assert not close(ours, theirs, 1e-2)
