"""Anchor: tf-keras-vis (0.8, on Keras 3) agrees with convscope's Keras backend where both
implement the same formula.

- Grad-CAM: ``relu(sum_k mean_ij(dS/dA) A_k)`` at the layer's resolution (``expand_cam=False``,
  ``normalize_cam=False`` there; ``upsample=False`` here);
- Saliency: tf-keras-vis returns ``|dS/dx|`` (``keepdims=True``, ``normalize_map=False``).

tf-keras-vis's Grad-CAM++ and Score-CAM are other variants. The tests show it: each equals a naive
NumPy re-derivation of tf-keras-vis's own formula, and convscope's maps (the papers' formulas, as
pytorch-grad-cam computes them: tests/xlib) differ from them by design:

- its Grad-CAM++ multiplies the gradients by ``exp(S)`` and divides each channel's alphas by their
  spatial sum;
- its Score-CAM weights each channel by the class probability of the masked input (no softmax over
  channels), with masks upsampled corner-aligned.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")
pytest.importorskip("tf_keras_vis", reason="tf-keras-vis is not installed: pip install tf-keras-vis")

import keras

with warnings.catch_warnings():  # tf-keras-vis imports a deprecated scipy namespace
    warnings.simplefilter("ignore", DeprecationWarning)
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.saliency import Saliency as TkvSaliency
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.scores import CategoricalScore

from convscope.methods import GradCAM, GradCAMPlusPlus, Saliency, ScoreCAM

# tf-keras-vis calls Keras with a one-element list where Keras 3 expects a tensor
pytestmark = pytest.mark.filterwarnings("ignore:The structure of `inputs`:UserWarning")


@pytest.fixture(scope="module")
def model() -> keras.Sequential:
    keras.utils.set_random_seed(4)
    return keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.Conv2D(6, 3, activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv2"),
        keras.layers.Flatten(),
        keras.layers.Dense(5, name="logits"),
    ])


X = np.random.default_rng(5).random((3, 16, 16, 3)).astype(np.float32)
CLASSES = [1, 4, 2]


def test_grad_cam_agrees_with_tf_keras_vis(model: keras.Sequential) -> None:
    theirs = Gradcam(model, clone=False)(CategoricalScore(CLASSES), X, penultimate_layer="conv2", expand_cam=False,
                                         normalize_cam=False)
    ours = GradCAM(model, "conv2", upsample=False).attribute(X, CLASSES)
    np.testing.assert_allclose(np.asarray(ours)[..., 0], np.asarray(theirs), rtol=1e-5, atol=1e-7)
    assert np.asarray(theirs).max() > 0


def test_saliency_agrees_with_tf_keras_vis(model: keras.Sequential) -> None:
    theirs = TkvSaliency(model, clone=False)(CategoricalScore(CLASSES), X, keepdims=True, normalize_map=False)
    ours = np.abs(np.asarray(Saliency(model).attribute(X, CLASSES)))
    np.testing.assert_allclose(ours, np.asarray(theirs), rtol=1e-5, atol=1e-8)


def _layer_and_scores(model: keras.Sequential) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``A`` = conv2's output, the class scores ``S`` and ``dS/dA``, by a plain GradientTape."""
    names = [layer.name for layer in model.layers]
    acts = tf.constant(X)
    for layer in model.layers[:names.index("conv2") + 1]:
        acts = layer(acts)
    with tf.GradientTape() as tape:
        tape.watch(acts)
        h = acts
        for layer in model.layers[names.index("conv2") + 1:]:
            h = layer(h)
        scores = tf.gather(h, CLASSES, batch_dims=1)
        total = tf.reduce_sum(scores)
    return acts.numpy(), scores.numpy(), tape.gradient(total, acts).numpy()


def _normalised(cam: np.ndarray) -> np.ndarray:
    flat = cam.reshape(len(cam), -1)
    return ((flat - flat.min(1, keepdims=True)) / np.ptp(flat, 1, keepdims=True)).reshape(cam.shape)


def test_grad_cam_plus_plus_is_another_variant_in_tf_keras_vis(model: keras.Sequential) -> None:
    acts, scores, g = _layer_and_scores(model)
    total = acts.sum((1, 2), keepdims=True)
    # the paper's (and pytorch-grad-cam's) formula: alpha = g^2 / (2 g^2 + sum(A) g^3), 0 where g = 0
    denom = 2 * g ** 2 + total * g ** 3
    alpha = np.where(g != 0, g ** 2 / np.where(denom == 0, 1, denom), 0)
    paper = np.maximum(((alpha * np.maximum(g, 0)).sum((1, 2))[:, None, None] * acts).sum(-1), 0)
    # tf-keras-vis: gradients times exp(S), alphas divided by their spatial sum per channel
    e = np.exp(scores)[:, None, None, None]
    second, third = e * g ** 2, e * g ** 3
    a = second / (2 * second + third * total + (second == 0))
    a_sum = a.sum((1, 2), keepdims=True)
    a = a / (a_sum + (a_sum == 0))
    theirs_naive = np.maximum(((np.maximum(e * g, 0) * a).sum((1, 2))[:, None, None] * acts).sum(-1), 0)

    theirs = np.asarray(GradcamPlusPlus(model, clone=False)(CategoricalScore(CLASSES), X, penultimate_layer="conv2",
                                                           expand_cam=False, normalize_cam=False))
    ours = np.asarray(GradCAMPlusPlus(model, "conv2", upsample=False).attribute(X, CLASSES))[..., 0]
    np.testing.assert_allclose(theirs, theirs_naive, rtol=1e-4, atol=1e-6 * theirs_naive.max())
    np.testing.assert_allclose(ours, paper, rtol=1e-4, atol=1e-6 * paper.max())
    assert np.abs(_normalised(ours) - _normalised(theirs)).max() > 0.05  # not the same map, even up to scale


def _corner_aligned(a: np.ndarray, size: int) -> np.ndarray:
    """``[N, h, w, K] -> [N, size, size, K]``: linear interpolation, first and last pixels on the corners."""
    def axis(src: int) -> tuple[np.ndarray, np.ndarray]:
        pos = np.arange(size) * (src - 1) / (size - 1)
        lo = np.minimum(np.floor(pos).astype(int), src - 2)
        return lo, pos - lo

    (ly, fy), (lx, fx) = axis(a.shape[1]), axis(a.shape[2])
    rows = a[:, ly] * (1 - fy)[None, :, None, None] + a[:, ly + 1] * fy[None, :, None, None]
    return rows[:, :, lx] * (1 - fx)[None, None, :, None] + rows[:, :, lx + 1] * fx[None, None, :, None]


def test_score_cam_is_another_variant_in_tf_keras_vis(model: keras.Sequential) -> None:
    acts, _, _ = _layer_and_scores(model)
    up = _corner_aligned(acts, X.shape[1])
    low, high = up.min((1, 2), keepdims=True), up.max((1, 2), keepdims=True)
    masks = (up - low) / (high - low + keras.config.epsilon())
    weights = np.zeros(acts.shape[::3])
    for n, cls in enumerate(CLASSES):  # one masked input per channel; weight = its class probability
        masked = X[n][None] * np.moveaxis(masks[n], -1, 0)[..., None]
        weights[n] = tf.nn.softmax(model(masked)).numpy()[:, cls]
    theirs_naive = np.maximum((acts * weights[:, None, None, :]).sum(-1), 0)

    theirs = np.asarray(Scorecam(model, clone=False)(CategoricalScore(CLASSES), X, penultimate_layer="conv2",
                                                    expand_cam=False, normalize_cam=False))
    ours = np.asarray(ScoreCAM(model, "conv2", upsample=False).attribute(X, CLASSES))[..., 0]
    np.testing.assert_allclose(theirs, theirs_naive, rtol=1e-4, atol=1e-6 * theirs_naive.max())
    # close on this small net (2% of the range at most) but not the same map: far above float32 rounding
    assert np.abs(_normalised(ours) - _normalised(theirs)).max() > 1e-3
