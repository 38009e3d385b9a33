"""Cross-framework checks shared by tests/tf/test_backend_twin_*.py (one file per model).

Oracle: the PyTorch backend run on the original model. tests/tf/twin.py builds the Keras twin
(same weights, NHWC); each Keras map, transposed to NCHW, must equal the torch map to 1e-4 of the
map's largest magnitude (float32 convolutions in the two frameworks sum in different orders, and
a ReLU whose input is within rounding of 0 may open in one and not the other).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from twin import NameMap, keras_twin, to_nhwc

from convscope.methods import (
    CAM, RISE, AblationCAM, AugSmooth, DeconvNet, EigenCAM, GradCAM, GradCAMPlusPlus, GradientSHAP, GuidedBackprop,
    GuidedGradCAM, HiResCAM, InputXGradient, IntegratedGradients, LayerCAM, Occlusion, Saliency, ScoreCAM,
    SmoothGrad, VarGrad, XGradCAM)
from convscope.targets import Channel, Direction, MaxNeuron, Neuron

Build = Callable[[Any], Any]

# the methods of the issue, with options that exercise max_batch, upsample and wrapping
METHODS: dict[str, Build] = {
    "saliency": lambda m: Saliency(m),
    "input_x_gradient": lambda m: InputXGradient(m, max_batch=1),
    "deconvnet": lambda m: DeconvNet(m),
    "guided_backprop": lambda m: GuidedBackprop(m),
    "grad_cam": lambda m: GradCAM(m),
    "grad_cam_plus_plus": lambda m: GradCAMPlusPlus(m, max_batch=1),
    "layer_cam": lambda m: LayerCAM(m, upsample=False),
    "score_cam": lambda m: ScoreCAM(m, max_batch=48),
    "integrated_gradients": lambda m: IntegratedGradients(m, steps=6, max_batch=5),
    "smooth_grad": lambda m: SmoothGrad(GuidedBackprop(m), samples=3, noise=0.2, max_batch=4),
    "occlusion": lambda m: Occlusion(m, window=12, stride=8, max_batch=32),  # the last window is cut off
}
# on a layer's smaller maps occlusion needs smaller windows
ON_LAYERS: dict[str, Build] = {**METHODS, "occlusion": lambda m: Occlusion(m, window=4, stride=3, max_batch=32)}
# the rest of the CAM family, VarGrad, Guided Grad-CAM, GradientSHAP and RISE: one model is enough
EXTRA: dict[str, Build] = {
    "cam": lambda m: CAM(m),
    "x_grad_cam": lambda m: XGradCAM(m),
    "hires_cam": lambda m: HiResCAM(m, relu=False),
    "var_grad": lambda m: VarGrad(m, samples=3),
    "guided_grad_cam": lambda m: GuidedGradCAM(m),
    "ablation_cam": lambda m: AblationCAM(m, max_batch=5),
    "eigen_cam": lambda m: EigenCAM(m),
    "gradient_shap": lambda m: GradientSHAP(m, baselines=0.2, samples=5, noise=0.1, max_batch=4),
    "rise": lambda m: RISE(m, masks=12, cells=3, max_batch=5),
    # eigen_smooth through the gradient path (per channel and per unit) and the activation path
    "grad_cam_eigen_smooth": lambda m: GradCAM(m, eigen_smooth=True),
    "layer_cam_eigen_smooth": lambda m: LayerCAM(m, relu=False, eigen_smooth=True),
    "ablation_cam_eigen_smooth": lambda m: AblationCAM(m, eigen_smooth=True, max_batch=5),
    "guided_grad_cam_eigen_smooth": lambda m: GuidedGradCAM(m, eigen_smooth=True),
    # augmentation smoothing of a CAM (mirrored on the width axis of each layout) and of a gradient map
    "aug_smooth": lambda m: AugSmooth(GradCAM(m)),
    "aug_smooth_saliency": lambda m: AugSmooth(Saliency(m), factors=(1.0, 1.2), normalise=True),
}


# small settings for every registered method, for the registry-driven cases
OPTIONS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"steps": 4, "max_batch": 3}, "gradient_shap": {"samples": 3, "noise": 0.1},
    "occlusion": {"window": 6, "stride": 4, "max_batch": 16}, "rise": {"masks": 10, "cells": 3, "max_batch": 4},
    "smooth_grad": {"samples": 2}, "smooth_grad_squared": {"samples": 2}, "var_grad": {"samples": 2},
    "score_cam": {"max_batch": 5}, "ablation_cam": {"max_batch": 5}}


def registered(name: str, **options: Any) -> Build:
    """A builder of the registered method ``name`` with :data:`OPTIONS` (and ``options``); a skip
    naming the reason for a method that declares it does not run on Keras."""
    import pytest

    from convscope.methods import get_method

    cls = get_method(name)
    if "tf" not in cls.frameworks:
        pytest.skip(f"{cls.__name__} declares that it runs on {cls.frameworks} only")
    return lambda model: cls(model, **{**OPTIONS.get(name, {}), **options})


# the wrappers every registered method is checked in (registry-driven cases), and the smaller
# windows and masks occlusion and RISE need on a layer's maps
WRAPPERS: dict[str, Callable[[Build], Build]] = {
    "alone": lambda m: m,
    "smooth_grad": lambda m: SmoothGrad(m, samples=2, noise=0.1, max_batch=3),
    "aug_smooth": lambda m: AugSmooth(m, factors=(1.0, 1.2)),
}
ON_LAYER: dict[str, dict[str, Any]] = {"occlusion": {"window": 3, "stride": 2}, "rise": {"masks": 10, "cells": 2}}


def builder(name: str, wrapper: str, options: dict[str, Any] | None = None) -> Build:
    """The registered method ``name`` (small settings, ``options``) inside wrapper ``wrapper``."""
    build = registered(name, **(options or {}))
    return lambda model: WRAPPERS[wrapper](build(model))


@dataclass
class Pair:
    """A torch model, its Keras twin, the name map, one input in both layouts, and a conv layer."""

    model: torch.nn.Module
    kmodel: Any
    names: NameMap
    x: torch.Tensor
    xk: np.ndarray
    layer: str
    channels: int
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method settings for this size


def make_pair(model: torch.nn.Module, hw: tuple[int, int], layer: str, channels: int, samples: int = 2,
              options: dict[str, dict[str, Any]] | None = None) -> Pair:
    kmodel, names = keras_twin(model.eval(), input_hw=hw)
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(1))[:samples]
    return Pair(model, kmodel, names, x, to_nhwc(x), layer, channels, options or {})


def assert_same(torch_map: torch.Tensor, keras_map: Any) -> None:
    expected, found = to_nhwc(torch_map), np.asarray(keras_map)
    assert found.shape == expected.shape
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-4 * max(1.0, float(np.abs(expected).max())))


def check_method(p: Pair, build: Build) -> None:
    """Per-sample predicted classes and a combined layer target, in one call per backend."""
    with torch.no_grad():
        predicted = p.model(p.x).argmax(1).tolist()
    targets = [predicted, 1 - 0.5 * Channel(p.layer, 3, reduce="mean")]
    keras_targets = [predicted, 1 - 0.5 * Channel(p.names[p.layer], 3, reduce="mean")]
    for expected, found in zip(build(p.model).attribute(p.x, targets=targets),
                               build(p.kmodel).attribute(p.xk, targets=keras_targets), strict=True):
        assert_same(expected, found)


def check_layer_targets(p: Pair, build: Build) -> None:
    """MaxNeuron (ranks too), Neuron, Direction and Channel(max) on a conv layer."""
    k = p.names[p.layer]
    v = torch.linspace(-1, 1, p.channels)
    cases = [(MaxNeuron(p.layer, 5), MaxNeuron(k, 5)), (MaxNeuron(p.layer, 2, rank=3), MaxNeuron(k, 2, rank=3)),
             (Neuron(p.layer, 4, 1, 2), Neuron(k, 4, 1, 2)), (Direction(p.layer, v), Direction(k, v)),
             (Channel(p.layer, 6, reduce="max"), Channel(k, 6, reduce="max"))]
    found = build(p.kmodel).attribute(p.xk, targets=[kt for _, kt in cases])
    expected = build(p.model).attribute(p.x, targets=[t for t, _ in cases])
    for e, f in zip(expected, found, strict=True):
        assert_same(e, f)


def check_wrt_layer(p: Pair, build: Build) -> None:
    assert_same(build(p.model).attribute(p.x, 2, wrt=p.layer), build(p.kmodel).attribute(p.xk, 2, wrt=p.names[p.layer]))


def check_delta_and_layers(p: Pair, last: str) -> None:
    """IG's completeness gap, and Grad-CAM on two layers (stacked, ``last_layers`` mapped)."""
    (m1, d1), = IntegratedGradients(p.model, steps=6).attribute_with_delta(p.x, targets=[1])
    (m2, d2), = IntegratedGradients(p.kmodel, steps=6).attribute_with_delta(p.xk, targets=[1])
    assert_same(m1, m2)
    np.testing.assert_allclose(np.asarray(d2), d1.numpy(), atol=1e-4 * max(1.0, float(m1.abs().sum((1, 2, 3)).max())))
    torch_cam = GradCAM(p.model, [p.layer, last])
    keras_cam = GradCAM(p.kmodel, [p.names[p.layer], p.names[last]])
    assert_same(torch_cam.attribute(p.x, 0), keras_cam.attribute(p.xk, 0))
    assert keras_cam.last_layers == (p.names[p.layer], p.names[last])
