"""TensorFlow / Keras backend: the same attribution methods on Keras 3 models.

``Saliency(keras_model)`` (and every other registered method, see :func:`supported`) returns the
Keras implementation registered for that class here (``Method.__new__`` dispatches on the model
type); nothing else changes in the API::

    maps = GuidedBackprop(keras_model).attribute(images_nhwc, target=3)        # like images_nhwc
    cams = GradCAM(keras_model, "block5_conv3").attribute(images_nhwc, [3, 7])  # [N, H, W, 1]

Conventions on the Keras side:

- **NHWC in, NHWC out.** Inputs are numpy arrays or tf tensors ``[N, H, W, C]`` (any float
  dtype; the model's own layout). Maps are ``tf.Tensor``: gradient, path, noise and perturbation maps
  are shaped like the input (or like layer ``wrt``'s output); CAM maps are ``[N, H, W, L]``, one
  channel per layer at the *end*. Run on a PyTorch twin of the model, every map equals the torch
  map after the transpose ``NCHW -> NHWC``.
- **Targets** are the framework-neutral objects of :mod:`convscope.targets`, read channels-last:
  ``Channel(layer, c)`` is ``act[..., c]``, ``Neuron(layer, c, y, x)`` is ``act[:, y, x, c]``;
  ``MaxNeuron`` ties go to the first position in row-major ``(y, x)`` order, as in torch.
  Layers are named by Keras layer names; a layer inside a nested model is ``"outer/inner"`` (or
  just ``"inner"`` where that name is used once).
- **Rules** (deconvnet, guided backprop) wrap each ReLU in a ``tf.custom_gradient`` function
  while a ``tf.function`` is traced: ``tf.nn.relu`` (and so fused ``activation="relu"``,
  ``Activation("relu")``, ``keras.ops.relu`` and ``tf.nn.relu`` inside custom layers) and each
  ``ReLU`` layer (``max_value``/``threshold`` included). Every patch lives in the tracing call
  only and is undone on exit, also on errors (see :mod:`convscope.backends.tf.rules`).
- All gradient work runs in ``tf.function``s compiled once per model and configuration, with the
  batch dimension left open (chunks of any size share a graph). Random draws (SmoothGrad noise,
  GradientSHAP baselines, RISE masks) are the torch backend's, moved to channels-last.
- ``max_batch="auto"`` starts at 32 samples per evaluation and halves after an out-of-memory error.

Importing this package does not import TensorFlow: :func:`wants_keras` recognises a Keras model
only if Keras is already imported (a model cannot exist otherwise).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

# modules whose import registers the Keras implementations
_MODULES = (
    "convscope.backends.tf.gradient",
    "convscope.backends.tf.cam",
    "convscope.backends.tf.score_cam",
    "convscope.backends.tf.guided_cam",
    "convscope.backends.tf.activation_cams",
    "convscope.backends.tf.path",
    "convscope.backends.tf.smooth",
    "convscope.backends.tf.perturb",
    "convscope.backends.tf.augment",
)


def wants_keras(obj: object) -> bool:
    """Whether ``obj`` is a Keras model or a Keras-backend method (never imports TensorFlow)."""
    if getattr(type(obj), "backend", None) == "tf":
        return True
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(obj, getattr(keras, "Model", ()))


def _registry() -> Any:
    registry = importlib.import_module("convscope.backends.tf.method")
    for module in _MODULES:
        importlib.import_module(module)
    return registry


def implementation(cls: type) -> type:
    """The Keras implementation of method class ``cls`` (imports TensorFlow); a clear error if none."""
    return _registry().implementation_of(cls)


def supported() -> list[str]:
    """The registry names of the methods that run on Keras models."""
    return _registry().supported_names()
