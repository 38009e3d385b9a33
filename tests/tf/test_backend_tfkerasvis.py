"""Anchor: tf-keras-vis (0.8, on Keras 3) agrees with convscope's Keras backend where both
implement the same formula.

- Grad-CAM: ``relu(sum_k mean_ij(dS/dA) A_k)`` at the layer's resolution (``expand_cam=False``,
  ``normalize_cam=False`` there; ``upsample=False`` here);
- Saliency: tf-keras-vis returns ``|dS/dx|`` (``keepdims=True``, ``normalize_map=False``).

tf-keras-vis's Grad-CAM++ and Score-CAM are other variants, so no agreement is asserted for them:
its Grad-CAM++ multiplies the gradients by ``exp(S)`` and divides each channel's alphas by their
spatial sum; its Score-CAM weights each channel by the class probability of the masked input
(no softmax over channels) with corner-aligned upsampling.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")
pytest.importorskip("tf_keras_vis", reason="tf-keras-vis is not installed: pip install tf-keras-vis")

import keras  # noqa: E402

with warnings.catch_warnings():  # tf-keras-vis imports a deprecated scipy namespace
    warnings.simplefilter("ignore", DeprecationWarning)
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.saliency import Saliency as TkvSaliency
    from tf_keras_vis.utils.scores import CategoricalScore

from convscope.methods import GradCAM, Saliency  # noqa: E402

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
