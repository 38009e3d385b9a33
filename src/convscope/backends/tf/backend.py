"""The Keras backend (:class:`convscope.backends.protocol.Backend`): inputs ``[N, H, W, C]``
numpy arrays or tf tensors, maps ``tf.Tensor`` in the same layout, layers named by path.

Conventions (the methods themselves are the PyTorch ones, written once):

- **NHWC in, NHWC out.** Gradient, path, noise and perturbation maps are shaped like the input (or
  like layer ``wrt``'s output); CAM maps are ``[N, H, W, L]``, one channel per layer at the *end*.
  Run on a PyTorch twin of the model, every map equals the torch map after ``NCHW -> NHWC``.
- **Targets** are the objects of :mod:`convscope.targets`, read channels-last:
  ``Channel(layer, c)`` is ``act[..., c]``, ``Neuron(layer, c, y, x)`` is ``act[:, y, x, c]``.
  Layers are named by Keras layer names; a layer inside a nested model is ``"outer/inner"`` (or
  just ``"inner"`` where that name is used once).
- **Rules** (deconvnet, guided backprop) wrap each ReLU in a ``tf.custom_gradient`` function
  while a ``tf.function`` is traced (see :mod:`convscope.backends.tf.rules`).
- ``max_batch="auto"`` starts at 32 samples per evaluation and halves after an out-of-memory error.

Example::

    maps = GuidedBackprop(keras_model).attribute(images_nhwc, target=3)        # like images_nhwc
    cams = GradCAM(keras_model, "block5_conv3").attribute(images_nhwc, [3, 7])  # [N, H, W, 1]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from convscope.backends.tf import tensors
from convscope.backends.tf.engine import KerasEngine
from convscope.backends.tf.model import keras_net
from convscope.backends.tf.relu import check_rule
from convscope.errors import ConvscopeError
from convscope.rules import RuleMap
from convscope.targets import Target, as_targets


def as_input(x: object) -> tf.Tensor:
    """``x`` (numpy array or tf tensor, NHWC) as a float tensor with a batch dimension, else a clear error."""
    if type(x).__module__.startswith("torch"):
        raise ConvscopeError("the input is a torch tensor but the model is a Keras model",
                             "Pass a numpy array or tf tensor in the Keras layout [N, H, W, C], e.g. "
                             "x.permute(0, 2, 3, 1).numpy().")
    try:
        t = tf.convert_to_tensor(x)
    except (TypeError, ValueError) as error:
        raise ConvscopeError(f"the input (a {type(x).__name__}) cannot be converted to a tensor: {error}",
                             "Pass a numpy array or tf tensor [N, H, W, C].") from None
    if not t.dtype.is_floating:
        raise ConvscopeError(f"the input has dtype {t.dtype.name}; attribution needs a floating-point input",
                             "Convert it, e.g. x.astype('float32') / 255.")
    if t.shape.rank is None or t.shape.rank < 1 or t.shape[0] == 0:
        raise ConvscopeError(f"the input of shape {t.shape.as_list()} holds no samples",
                             "Pass a batch with at least one sample, e.g. x[None] for one image.")
    return t


def _plain(target: Any) -> Any:
    """An integer tf tensor as a numpy array (the API edge makes a Class of numpy integers)."""
    if tf.is_tensor(target) and np.asarray(target).dtype.kind in "iu":
        return np.asarray(target)
    return target


class KerasBackend:
    """Keras 3 models on TensorFlow (see the module docstring)."""

    name = "tf"
    ops = tensors
    layer_types = (str, keras.Layer)
    image_layout = "[N, H, W, C]"
    feature_layout = "[N, h, w, C]"
    #: input ranks the CAM family takes, and the feature map of each
    cam_ranks = (3, 4, 5)
    cam_layouts = "signals [N, L, C], images [N, H, W, C] or volumes [N, D, H, W, C]"
    feature_layouts = {3: "[N, l, C]", 4: "[N, h, w, C]", 5: "[N, d, h, w, C]"}

    def as_input(self, x: Any) -> tf.Tensor:
        return as_input(x)

    def inputs(self, x: Any, args: Any = None, kwargs: Any = None) -> tuple[tf.Tensor, None]:
        """The input as one float tensor: several inputs and forward arguments are PyTorch-only."""
        several = isinstance(x, tuple) or isinstance(x, list) and any(hasattr(v, "shape") for v in x)
        if several or args or kwargs:
            what = "several input tensors" if several else "extra forward arguments"
            raise ConvscopeError(f"{what} are supported on PyTorch models only, not on a Keras model",
                                 "Pass one input batch [N, H, W, C]; for a Keras model with several inputs or "
                                 "arguments, wrap it in a keras.Model taking one input, with the rest held inside.")
        return as_input(x), None

    def targets(self, target: Any, targets: Sequence[Any] | None, n: int) -> tuple[list[Target], bool]:
        return as_targets(_plain(target), None if targets is None else [_plain(t) for t in targets], n)

    def accepts_rules(self, rules: RuleMap) -> None:
        """A clear error for a rule without a TensorFlow form."""
        for rule in rules.rules():
            check_rule(rule)

    def check_rules(self, model: keras.Model, rules: RuleMap) -> None:
        self.accepts_rules(rules)

    def default_layer(self, model: keras.Model, x: tf.Tensor) -> str:
        return keras_net(model).default_layer(x)

    def layer_key(self, model: keras.Model, key: Any) -> str:
        return keras_net(model).path(key)

    def feature_key(self, model: keras.Model, key: Any) -> str:
        return keras_net(model).channels_last(key)

    def layer_name(self, model: keras.Model | None, key: str) -> str:
        return key

    @contextmanager
    def engine(self, method: Any, x: tf.Tensor, targets: list[Target], wrt: str | None, layers: Sequence[str],
               rules: RuleMap | None, inputs: None = None) -> Iterator[KerasEngine]:
        net = keras_net(method.model)
        if rules is not None:
            self.check_rules(method.model, rules)
        yield KerasEngine(net, targets, wrt, layers, method.max_batch)


BACKEND = KerasBackend()
