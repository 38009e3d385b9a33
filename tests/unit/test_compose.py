"""Wrappers compose with every method: the template's one contract is ``_compute``.

Oracles: a noise tunnel equals the mean over the documented noisy copies of the wrapped method's
own maps, each computed by a separate ``attribute`` call (``noisy_maps`` from test_smooth); with
``noise=0`` every copy is the input itself, so the tunnel must return the wrapped method's maps;
AugSmooth equals the mean over mirrored and rescaled inputs written out here.
"""

from __future__ import annotations

import pytest
import torch
from nets import convnet_methods, make, sample
from test_smooth import noisy_maps

from convscope.methods import (
    AugSmooth, GradCAM, GuidedGradCAM, ScoreCAM, SmoothGrad, VarGrad, get_method)

TINY, X = make("tiny_vgg").eval(), sample("tiny_vgg")
OPTIONS = {"integrated_gradients": {"steps": 3}, "gradient_shap": {"samples": 3}, "occlusion": {"window": 4},
           "rise": {"masks": 6}, "smooth_grad": {"samples": 2}, "smooth_grad_squared": {"samples": 2},
           "var_grad": {"samples": 2}}


def build(name: str):
    return get_method(name)(TINY, **OPTIONS.get(name, {}))


def close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * max(1.0, float(expected.abs().max())))


def test_a_noise_tunnel_around_a_cam_is_the_mean_of_the_cams_of_the_noisy_copies() -> None:
    cam = GradCAM(TINY, "features.4")
    got = SmoothGrad(cam, samples=3, noise=0.2, seed=2).attribute(X, [1, 0, 2])
    expected = noisy_maps(cam, X, [1, 0, 2], 3, 0.2, 2).mean(0)
    close(got, expected)
    assert got.shape == cam.attribute(X, 0).shape == (len(X), 1, *X.shape[2:])


def test_var_grad_around_guided_grad_cam_and_aug_smooth_around_score_cam() -> None:
    guided = GuidedGradCAM(TINY)
    close(VarGrad(guided, samples=3, noise=0.1, seed=1).attribute(X, 2),
          noisy_maps(guided, X, 2, 3, 0.1, 1).var(0, unbiased=False))
    score = ScoreCAM(TINY, "features.4", max_batch=5)
    want = sum(score.attribute(X * f, 3) + score.attribute(X.flip(-1) * f, 3).flip(-1) for f in (0.9, 1.1)) / 4
    close(AugSmooth(score, factors=(0.9, 1.1)).attribute(X, 3), want)


def test_a_noise_tunnel_around_aug_smooth() -> None:
    inner = AugSmooth(GradCAM(TINY), factors=(1.0,))
    close(SmoothGrad(inner, samples=2, noise=0.1, seed=3).attribute(X, 0), noisy_maps(inner, X, 0, 2, 0.1, 3).mean(0))


@pytest.mark.parametrize("name", convnet_methods())
def test_a_noise_tunnel_without_noise_is_the_method_itself(name: str) -> None:
    method = build(name)
    expected = method.attribute(X, [1, 0, 2])
    close(SmoothGrad(method, samples=2, noise=0.0).attribute(X, [1, 0, 2]), expected)


def test_wrapped_cams_report_their_layers() -> None:
    wrapped = SmoothGrad(GradCAM(TINY), samples=2)
    wrapped.attribute(X, 0)
    assert wrapped.last_layers == ("features",)
