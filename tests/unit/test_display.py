"""Display kinds: every method declares how its maps are shown, wrappers show what they wrap, and
RISE's maps, near one level everywhere, show their structure when scaled by their own range."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nets import make

from convscope import render
from convscope.methods import (
    RISE, AugSmooth, GradCAM, IntegratedGradients, Occlusion, Saliency, SmoothGrad, display_kind, methods)
from convscope.methods.cam import CAMMethod


def test_every_registered_method_declares_a_known_display_kind() -> None:
    for name, info in methods().items():
        assert display_kind(info.cls) in render.DISPLAY_KINDS, name
        if issubclass(info.cls, CAMMethod):
            assert display_kind(info.cls) == "positive", name  # a CAM shows the evidence for the class
    assert (display_kind(RISE), display_kind(Occlusion)) == ("relative", "positive")
    assert display_kind(Saliency) == display_kind(IntegratedGradients) == "magnitude"


def test_wrappers_show_what_they_wrap() -> None:
    model = make("tiny_vgg")
    assert display_kind(AugSmooth(RISE(model))) == "relative"
    assert display_kind(SmoothGrad(GradCAM(model))) == "positive"
    assert display_kind(AugSmooth(SmoothGrad(RISE(model)))) == "relative"  # wrappers all the way down
    assert display_kind(SmoothGrad(model)) == "magnitude"  # wraps Saliency by default


def test_rise_maps_show_structure_only_on_their_own_range(shapes_vgg: torch.nn.Module) -> None:
    from convscope import zoo
    from convscope.data import Shapes

    images, _, labels = Shapes(1, seed=2).arrays()
    x = zoo.preset("shapes-vgg").to_tensor(images)
    rise = RISE(shapes_vgg, masks=128).attribute(x, target=int(labels[0]))[0]
    flat = render.heat(rise, "magnitude")  # 0 .. its 99.5th percentile: every pixel near the mean score
    shown = render.heat(rise, display_kind(RISE))
    assert np.percentile(flat, 5) > 0.5  # what the demo used to show: a near-uniform map
    assert np.percentile(shown, 95) - np.percentile(shown, 5) > 0.4
    assert shown.min() == pytest.approx(0.0) and shown.max() == pytest.approx(1.0)
