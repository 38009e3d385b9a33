"""AugSmooth: the hand-computed mean on a linear model, a naive loop with explicit mirrors as the
reference on a CNN, normalisation, many targets, the caller's tensors and method left as they
were, and the settings it refuses. pytorch-grad-cam's aug_smooth is the anchor in
tests/xlib/test_gradcam_anchor.py."""

from __future__ import annotations

import copy

import pytest
import torch
from nets import make, sample
from torch import nn

from convscope.errors import ConvscopeError
from convscope.methods import (
    AugSmooth,
    GradCAM,
    InputXGradient,
    LayerCAM,
    Saliency,
    SmoothGrad,
)
from convscope.methods.augment import unit_range

TINY, X = make("tiny_vgg").eval(), sample("tiny_vgg")
CLASSES = [0, 3, 1]


def test_input_x_gradient_of_a_linear_model_by_hand() -> None:
    # f(x) = <w, x>: at the input t(x) = c R(x) the map is c R(x) * w; mirrored back, c x * R(w);
    # so the mean over c in (0.5, 1, 2) and both mirrors is x * (w + R(w)) / 2 * 7/6
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 4, 1, bias=False)).eval()
    x = torch.randn(2, 2, 3, 4, generator=torch.Generator().manual_seed(0))
    w = model[1].weight.detach().view(2, 3, 4)
    got = AugSmooth(InputXGradient(model), factors=(0.5, 1.0, 2.0)).attribute(x, 0)
    torch.testing.assert_close(got, x * (w + w.flip(-1)) / 2 * (3.5 / 3), rtol=1e-6, atol=1e-6)
    no_mirror = AugSmooth(InputXGradient(model), flips=False, factors=(0.5, 1.0, 2.0)).attribute(x, 0)
    torch.testing.assert_close(no_mirror, x * w * (3.5 / 3), rtol=1e-6, atol=1e-6)


def naive_aug_smooth(method, x: torch.Tensor, target, factors, normalise: bool = False) -> torch.Tensor:
    """Mirror each image column by column, run the method, put the map's columns back, average."""
    width = x.shape[-1]
    total = torch.zeros(())
    for mirrored in (False, True):
        seen = x[..., list(reversed(range(width)))] if mirrored else x
        for c in factors:
            m = method.attribute(seen * c, target)
            m = m[..., list(reversed(range(width)))] if mirrored else m
            if normalise:
                m = torch.stack([torch.stack([(ch - ch.min()) / (ch.max() - ch.min()) if ch.max() > ch.min()
                                              else torch.zeros_like(ch) for ch in row]) for row in m])
            total = total + m
    return total / (2 * len(factors))


@pytest.mark.parametrize("normalise", [False, True])
@pytest.mark.parametrize("build", [lambda m: GradCAM(m, "features"), lambda m: LayerCAM(m, "features.3"),
                                   lambda m: Saliency(m)], ids=["grad_cam", "layer_cam", "saliency"])
def test_matches_a_naive_loop_with_explicit_mirrors(build, normalise: bool) -> None:
    method = build(TINY)
    got = AugSmooth(method, normalise=normalise).attribute(X, CLASSES)
    want = naive_aug_smooth(method, X, CLASSES, (0.9, 1.0, 1.1), normalise)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    if normalise:
        assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0


def test_many_targets_and_the_default_grad_cam() -> None:
    one, other = AugSmooth(TINY).attribute(X, targets=[CLASSES, 2])
    assert torch.equal(one, AugSmooth(GradCAM(TINY)).attribute(X, CLASSES))
    assert torch.equal(other, AugSmooth(TINY).attribute(X, 2))
    assert not torch.equal(one, other)


def test_leaves_the_input_the_model_and_the_wrapped_method_as_they_were() -> None:
    x, inner = X.clone(), GradCAM(TINY, "features", max_batch=2)
    state = copy.deepcopy(TINY.state_dict())
    AugSmooth(inner).attribute(x, CLASSES)
    assert torch.equal(x, X) and inner.max_batch == 2 and inner.layers == ("features",)
    assert all(torch.equal(v, state[k]) for k, v in TINY.state_dict().items())
    assert not TINY._forward_hooks and all(not m._forward_hooks and not m._backward_hooks for m in TINY.modules())


def test_unit_range_of_flat_and_ordinary_maps() -> None:
    maps = torch.tensor([[[[2.0, 4.0], [3.0, 6.0]], [[5.0, 5.0], [5.0, 5.0]]]])
    assert torch.equal(unit_range(maps), torch.tensor([[[[0.0, 0.5], [0.25, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]]))


@pytest.mark.parametrize("make_bad, message", [
    (lambda: AugSmooth(GradCAM(TINY, upsample=False)), "cannot be mirrored back exactly"),
    (lambda: AugSmooth(TINY, factors=()), "must be a non-empty list of positive numbers"),
    (lambda: AugSmooth(TINY, factors=(1.0, -0.5)), "must be a non-empty list of positive numbers"),
    (lambda: AugSmooth(TINY, flips="yes"), "flips='yes' must be True or False"),
    (lambda: AugSmooth(TINY, use=int), "is not an attribution method class"),
    (lambda: AugSmooth(TINY).attribute(X, 0, wrt="features"), "needs maps of the input"),
    (lambda: AugSmooth(Saliency(TINY)).attribute(X[0, 0], 0), "needs inputs [N, C, H, W]"),
])
def test_bad_settings_name_the_problem(make_bad, message: str) -> None:
    with pytest.raises(ConvscopeError, match=message.replace("[", r"\[").replace("(", r"\(")):
        make_bad()
