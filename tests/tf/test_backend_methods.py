"""The Keras methods against hand-written references on a small Sequential CNN.

Oracles, all written here independently of convscope: an eager ``tf.GradientTape`` over the
model's layers for gradients and CAM weights (formulas from the papers, in numpy), naive loops
for Score-CAM (one masked image at a time), integrated gradients (a plain Riemann sum), SmoothGrad
(noisy copies one by one) and occlusion (one window at a time), plus IG's completeness.
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import keras  # noqa: E402
import torch  # noqa: E402

from convscope.methods import (  # noqa: E402
    GradCAM, GradCAMPlusPlus, InputXGradient, IntegratedGradients, LayerCAM, Occlusion, Saliency, ScoreCAM,
    SmoothGrad)

RNG = np.random.default_rng(1)
X = RNG.random((2, 10, 10, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> keras.Sequential:
    keras.utils.set_random_seed(2)
    return keras.Sequential([
        keras.Input((10, 10, 3)),
        keras.layers.Conv2D(6, 3, activation="relu", name="conv1"),
        keras.layers.Conv2D(5, 3, name="conv2"),
        keras.layers.ReLU(name="relu2"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(4, name="logits"),
    ])


def tape_grads(model: keras.Sequential, x: np.ndarray, k: int,
               layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(value, d logit_k / d value) for the input or a layer, calling the layers one by one, eagerly."""
    t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(t)
        out, value = t, t
        for lay in model.layers:
            out = lay(out)
            if lay.name == layer:
                value = out
        score = tf.reduce_sum(out[:, k])
    return value.numpy(), tape.gradient(score, value).numpy()


def logits(model: keras.Sequential, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x))


def resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return tf.image.resize(maps, size, method="bilinear").numpy()  # half-pixel centres, as documented


def test_saliency_and_input_x_gradient_are_the_tape_gradient(model: keras.Sequential) -> None:
    _, grad = tape_grads(model, X, 2)
    np.testing.assert_allclose(np.asarray(Saliency(model).attribute(X, 2)), grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(InputXGradient(model).attribute(tf.constant(X), 2)), X * grad,
                               rtol=1e-5, atol=1e-6)
    _, g = tape_grads(model, X, 2, "conv1")
    np.testing.assert_allclose(np.asarray(Saliency(model).attribute(X, 2, wrt="conv1")), g, rtol=1e-5, atol=1e-6)


def test_gradient_cams_follow_their_formulas(model: keras.Sequential) -> None:
    a, g = tape_grads(model, X, 1, "relu2")  # [2, 6, 6, 5]
    grad_cam = np.maximum((a * g.mean((1, 2), keepdims=True)).sum(-1, keepdims=True), 0)
    np.testing.assert_allclose(np.asarray(GradCAM(model, "relu2").attribute(X, 1)), resize(grad_cam, (10, 10)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(GradCAM(model, "relu2", upsample=False).attribute(X, 1)), grad_cam,
                               rtol=1e-5, atol=1e-6)
    g2, g3 = g ** 2, g ** 3
    den = 2 * g2 + a.sum((1, 2), keepdims=True) * g3
    alpha = np.where(g != 0, g2 / np.where(den != 0, den, 1), 0) * (den != 0)
    w = (np.maximum(g, 0) * alpha).sum((1, 2), keepdims=True)
    plus = np.maximum((w * a).sum(-1, keepdims=True), 0)
    np.testing.assert_allclose(np.asarray(GradCAMPlusPlus(model, "relu2", upsample=False).attribute(X, 1)), plus,
                               rtol=1e-4, atol=1e-6)
    layer = np.maximum((np.maximum(g, 0) * a).sum(-1, keepdims=True), 0)
    np.testing.assert_allclose(np.asarray(LayerCAM(model, "relu2", upsample=False).attribute(X, 1)), layer,
                               rtol=1e-5, atol=1e-6)
    both = np.asarray(GradCAM(model, ["conv1", "relu2"]).attribute(X, 1))
    assert both.shape == (2, 10, 10, 2)
    np.testing.assert_allclose(both[..., 1:], resize(grad_cam, (10, 10)), rtol=1e-5, atol=1e-6)


def test_score_cam_is_a_softmax_over_masked_scores(model: keras.Sequential) -> None:
    act = tape_grads(model, X, 3, "relu2")[0]
    want = []
    for n in range(2):
        scores = []
        for k in range(act.shape[-1]):
            m = resize(act[n:n + 1, :, :, k:k + 1], (10, 10))
            span = m.max() - m.min()
            mask = (m - m.min()) / span if act[n, :, :, k].max() > act[n, :, :, k].min() else np.zeros_like(m)
            scores.append(logits(model, X[n:n + 1] * mask)[0, 3])
        w = np.exp(scores - np.max(scores))
        w /= w.sum()
        want.append(np.maximum((act[n] * w).sum(-1, keepdims=True), 0))
    found = ScoreCAM(model, "relu2", upsample=False, max_batch=3).attribute(X, 3)
    np.testing.assert_allclose(np.asarray(found), np.stack(want), rtol=1e-4, atol=1e-6)


def test_integrated_gradients_is_a_riemann_sum_and_nearly_complete(model: keras.Sequential) -> None:
    steps, base = 7, np.full_like(X, 0.2)
    total = sum(tape_grads(model, base + (k + 0.5) / steps * (X - base), 0)[1] for k in range(steps)) / steps
    ig = IntegratedGradients(model, steps=steps, rule="riemann_middle", baseline=0.2, max_batch=4)
    np.testing.assert_allclose(np.asarray(ig.attribute(X, 0)), (X - base) * total, rtol=1e-4, atol=1e-6)
    maps, delta = IntegratedGradients(model, steps=64).attribute_with_delta(X, 0)
    gap = np.asarray(maps).reshape(2, -1).sum(1) - (logits(model, X)[:, 0] - logits(model, np.zeros_like(X))[:, 0])
    np.testing.assert_allclose(np.asarray(delta), gap, rtol=1e-4, atol=1e-5)
    assert np.abs(gap).max() < 1e-3 * np.abs(logits(model, X)[:, 0]).max() + 1e-4


def test_smooth_grad_averages_gradients_at_the_documented_noisy_copies(model: keras.Sequential) -> None:
    samples, noise = 4, 0.3
    eps = torch.randn(samples, 3, 10, 10, generator=torch.Generator().manual_seed(5)).permute(0, 2, 3, 1).numpy()
    sigma = noise * (X.max((1, 2, 3)) - X.min((1, 2, 3)))
    want = np.stack([np.mean([tape_grads(model, X[n:n + 1] + sigma[n] * eps[k:k + 1], 1)[1][0]
                              for k in range(samples)], 0) for n in range(2)])
    found = SmoothGrad(model, samples=samples, noise=noise, seed=5, max_batch=3).attribute(X, 1)
    np.testing.assert_allclose(np.asarray(found), want, rtol=1e-4, atol=1e-6)


def test_occlusion_averages_the_score_drop_over_the_windows_covering_each_pixel(model: keras.Sequential) -> None:
    base = logits(model, X)[:, 2]
    total, count = np.zeros_like(X), np.zeros_like(X[0])
    for y in (0, 3, 6):  # window 4, stride 3 over 10 px: starts 0, 3, 6 (the last reaches the edge)
        for x in (0, 3, 6):
            occluded = X.copy()
            occluded[:, y:y + 4, x:x + 4, :] = 0.5
            total[:, y:y + 4, x:x + 4, :] += (base - logits(model, occluded)[:, 2])[:, None, None, None]
            count[y:y + 4, x:x + 4, :] += 1
    found = Occlusion(model, window=4, stride=3, fill=0.5, max_batch=5).attribute(X, 2)
    np.testing.assert_allclose(np.asarray(found), total / count, rtol=1e-4, atol=1e-5)


def test_adaptive_occlusion_follows_the_naive_rule(model: keras.Sequential) -> None:
    from reference.naive_adaptive import naive_adaptive, naive_map

    from convscope.methods import Adaptive

    base = logits(model, X)[:, 2]
    drops = np.zeros((len(X), 9, 9))  # window 2, stride 1 over 10 px: 9 x 9 windows
    for y in range(9):
        for x in range(9):
            occluded = X.copy()
            occluded[:, y:y + 2, x:x + 2, :] = 0.5
            drops[:, y, x] = base - logits(model, occluded)[:, 2]
    for keep in (0.3, 1.0):
        expected = naive_map(naive_adaptive(drops, keep, 3)[0], (10, 10), (2, 2), (1, 1))
        found = Occlusion(model, window=2, stride=1, fill=0.5, max_batch=7,
                          adaptive=Adaptive(keep=keep, factor=3)).attribute(X, 2)
        np.testing.assert_allclose(np.asarray(found)[..., 0], expected, rtol=1e-4, atol=1e-5)


def test_the_users_input_is_not_changed(model: keras.Sequential) -> None:
    x = X.copy()
    for method in (Saliency(model), IntegratedGradients(model, steps=4), Occlusion(model, window=5)):
        method.attribute(x, 1)
    np.testing.assert_array_equal(x, X)


def test_aug_smooth_averages_gradients_of_mirrored_and_scaled_copies(model: keras.Sequential) -> None:
    from convscope.errors import ConvscopeError
    from convscope.methods import AugSmooth

    # Saliency is d logit / d input: at the copy c * mirror(x) take the tape gradient, mirror it back
    want = np.mean([tape_grads(model, c * (X[:, :, ::-1] if m else X), 3)[1][:, :, ::-1 if m else 1]
                    for m in (False, True) for c in (0.5, 2.0)], 0)
    x = X.copy()
    found = AugSmooth(Saliency(model), factors=(0.5, 2.0)).attribute(x, 3)
    np.testing.assert_allclose(np.asarray(found), want, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(x, X)
    wrapped = AugSmooth(model).method
    assert type(wrapped) is GradCAM and wrapped.backend.name == "tf"
    with pytest.raises(ConvscopeError, match="cannot be mirrored back exactly"):
        AugSmooth(GradCAM(model, "conv2", upsample=False))
    with pytest.raises(ConvscopeError, match="needs maps of the input"):
        AugSmooth(model).attribute(X, 0, wrt="conv2")
    for wrapper in (AugSmooth, SmoothGrad):
        with pytest.raises(ConvscopeError, match="use=<class 'int'> is not an attribution method class"):
            wrapper(model, use=int)
