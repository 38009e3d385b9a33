"""Captum as an anchor for Grad-CAM and Guided Grad-CAM.

``LayerGradCam`` is Grad-CAM at layer resolution (ReLU optional): equal to ours to 1e-5.
``GuidedGradCam`` multiplies guided backprop by the Grad-CAM map resized with
``interpolate_mode`` ("nearest" by default); with "bilinear" it equals ours (which always resizes
bilinearly, as Selvaraju et al. do), with its default it does not - a difference by design.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from nets import make, sample
from torch import Tensor

from convscope.methods import GradCAM, GuidedGradCAM

captum_attr = pytest.importorskip("captum.attr")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CLASSES = torch.tensor([0, 3, 1])
MODELS = {"tiny_vgg": "features", "tiny_residual": "layer2", "spelling:module_inplace": "pool"}


def close(a: Tensor, b: Tensor, tol: float = 1e-5) -> bool:
    return bool((a - b).abs().max() <= tol * max(float(b.abs().max()), 1e-12))


def quiet(fn, *args, **kwargs):  # noqa: ANN001, ANN201, ANN002, ANN003
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("relu", [False, True])
def test_layer_grad_cam_agrees(model_name: str, relu: bool) -> None:
    model, x, layer = make(model_name).eval(), sample(model_name), MODELS[model_name]
    theirs = quiet(captum_attr.LayerGradCam(model, model.get_submodule(layer)).attribute,
                   x.clone(), target=CLASSES, relu_attributions=relu)
    assert close(GradCAM(model, layer, upsample=False, relu=relu).attribute(x, CLASSES), theirs)


@pytest.mark.parametrize("model_name", ["tiny_vgg", "spelling:module"])
def test_guided_grad_cam_agrees_with_bilinear_resizing(model_name: str) -> None:
    model, x = make(model_name).eval(), sample(model_name)
    layer = {"tiny_vgg": "features", "spelling:module": "pool"}[model_name]
    method = captum_attr.GuidedGradCam(model, model.get_submodule(layer))
    ours = GuidedGradCAM(model, layer).attribute(x, CLASSES)
    assert close(ours, quiet(method.attribute, x.clone(), target=CLASSES, interpolate_mode="bilinear"))
    assert not close(ours, quiet(method.attribute, x.clone(), target=CLASSES), 1e-2)  # nearest, by default
