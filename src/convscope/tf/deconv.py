"""The explicit Zeiler-Fergus deconvnet for Keras conv-relu-pool chains (NHWC).

The Keras counterpart of :mod:`convscope.deconv`, with the same rules and conventions. The model
(Sequential or functional, nested models flattened into their layers) must be a chain: each
layer reads the previous layer's output. One eager forward pass records the max-pool switches
and the target's layer outputs; the target plants its seed ``d score / d activation`` (for
``MaxNeuron``: the strongest activation, all others zero) and the signal walks back down, each
layer mirrored by hand:

==================================  ========================================================
forward layer                       mirror (signal ``s`` -> signal below)
==================================  ========================================================
``MaxPooling2D`` / global max       ``unpool(s, argmax)`` at the recorded switches
                                    (:func:`convscope.tf.ops.max_pool_with_switches`)
``ReLU``, ``Activation("relu")``,   ``relu(s)``: rectify (a fused ``activation="relu"`` is
fused ``activation="relu"``         mirrored before its layer's linear part)
``Conv2D``                          ``conv2d_transpose(s, kernel)``: its own kernel, no bias
``Dense``                           ``s @ kernel.T``: the transpose, no bias
``BatchNormalization`` (inference)  ``s * gamma / sqrt(moving_variance + eps)``: no shift
``AveragePooling2D``, global avg    the transpose of the averaging (``AvgPoolGrad``)
``ZeroPadding2D``                   crop the padding off
``Flatten``, ``Reshape``,           reshape back to the layer's input shape
``Dropout``, ``Identity``
==================================  ========================================================

Targets address Keras layers as everywhere on the Keras side (:mod:`convscope.tf.paths`:
``"block/conv"`` inside a nested model, the bare name when it is unique) and read channels from
the last axis: ``Neuron("conv2", c, y, x)`` is ``act[n, y, x, c]``. Anything else on the path (a
branch, a residual add, a non-ReLU activation, a sublayer of a custom layer) raises a
:class:`~convscope.errors.ConvscopeError` naming the layer.

Example::

    from convscope.targets import MaxNeuron
    img = reconstruct(model, x, MaxNeuron("conv3", 7))   # NHWC, shaped like x
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import torch

from convscope.errors import ConvscopeError
from convscope.targets import Record, Target, TargetLike, as_target
from convscope.tf.gradients import _as_inputs
from convscope.tf.ops import max_pool_with_switches, unpool
from convscope.tf.paths import model_route, resolve_path

Mirror = Callable[[tf.Tensor], tf.Tensor]
_HINT = ("DeconvNet(model).attribute(x, target) applies the same deconvnet rule during backprop through "
         "any graph; or target a layer below this one.")


class _CannotMirror(Exception):
    """Raised while building a layer's mirror; a ConvscopeError only if the signal gets there."""


@dataclass
class Step:
    """One layer on the chain: its path name, its input and output, and its mirror (or why not)."""

    name: str
    layer: keras.layers.Layer
    inp: tf.Tensor
    out: tf.Tensor
    mirror: Mirror | None
    why: str = ""


def _channels_last(layer: keras.layers.Layer) -> None:
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise _CannotMirror("it is channels_first; the TF backend works on NHWC")


def _is_relu(fn: object) -> bool:
    return fn is keras.activations.relu or getattr(fn, "__name__", "") == "relu"


def _with_activation(layer: keras.layers.Layer, linear: Mirror) -> Mirror:
    """``linear`` preceded by the mirror of the layer's fused activation (relu or none)."""
    act = getattr(layer, "activation", None)
    if act is None or act is keras.activations.linear:
        return linear
    if _is_relu(act):
        return lambda s: linear(tf.nn.relu(s))
    raise _CannotMirror(f"its activation {getattr(act, '__name__', act)!r} has no deconvnet mirror (relu only)")


def _mirror_conv(layer: keras.layers.Conv2D, inp: tf.Tensor, out: tf.Tensor) -> Mirror:
    _channels_last(layer)
    if layer.groups != 1:
        raise _CannotMirror("grouped convolutions are not mirrored")
    kernel, shape = layer.kernel, tf.shape(inp)
    strides, dilations, padding = list(layer.strides), list(layer.dilation_rate), layer.padding.upper()
    return _with_activation(layer, lambda s: tf.nn.conv2d_transpose(s, kernel, shape, strides, padding,
                                                                    dilations=dilations))


def _mirror_dense(layer: keras.layers.Dense, inp: tf.Tensor, out: tf.Tensor) -> Mirror:
    if inp.shape.rank != 2:
        raise _CannotMirror("only Dense layers on [N, features] inputs are mirrored")
    kernel = layer.kernel
    return _with_activation(layer, lambda s: tf.matmul(s, kernel, transpose_b=True))


def _mirror_relu(layer: keras.layers.Layer, inp: tf.Tensor, out: tf.Tensor) -> Mirror:
    if isinstance(layer, keras.layers.ReLU):
        if layer.max_value is not None or layer.negative_slope or layer.threshold:
            raise _CannotMirror("only a plain ReLU (no max_value, negative_slope or threshold) is mirrored")
        return tf.nn.relu
    return _with_activation(layer, lambda s: s)


def _mirror_max_pool(layer: keras.layers.Layer, inp: tf.Tensor, out: tf.Tensor) -> Mirror:
    _channels_last(layer)
    if isinstance(layer, keras.layers.GlobalMaxPooling2D):  # one window covering the whole map
        window, strides, padding = (inp.shape[1], inp.shape[2]), (1, 1), "VALID"
    else:
        window, strides, padding = layer.pool_size, layer.strides, layer.padding.upper()
    pooled, argmax = max_pool_with_switches(inp, window, strides, padding)
    if not bool(tf.reduce_all(tf.equal(tf.reshape(pooled, tf.shape(out)), out))):
        raise _CannotMirror("its output is not the max-pool of its input")
    shape = tf.shape(inp)
    return lambda s: unpool(tf.reshape(s, tf.shape(pooled)), argmax, shape)


def _mirror_avg_pool(layer: keras.layers.Layer, inp: tf.Tensor, out: tf.Tensor) -> Mirror:
    _channels_last(layer)
    if isinstance(layer, keras.layers.GlobalAveragePooling2D):
        window, strides, padding = [inp.shape[1], inp.shape[2]], [1, 1], "VALID"
    else:
        window, strides, padding = list(layer.pool_size), list(layer.strides), layer.padding.upper()
    shape = tf.shape(inp, out_type=tf.int32)
    grid = tf.stack([shape[0], (shape[1] - window[0]) // strides[0] + 1, (shape[2] - window[1]) // strides[1] + 1,
                     shape[3]]) if padding == "VALID" else None

    def back(s: tf.Tensor) -> tf.Tensor:
        s = tf.reshape(s, grid) if grid is not None else s
        return tf.raw_ops.AvgPoolGrad(orig_input_shape=shape, grad=s, ksize=[1, *window, 1],
                                      strides=[1, *strides, 1], padding=padding)

    return back


def _mirror_batchnorm(layer: keras.layers.BatchNormalization, inp: tf.Tensor, out: tf.Tensor) -> Mirror:
    axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    if [a % inp.shape.rank for a in axes] != [inp.shape.rank - 1]:
        raise _CannotMirror("only batch-norm over the last (channel) axis is mirrored")
    scale = tf.math.rsqrt(tf.convert_to_tensor(layer.moving_variance) + layer.epsilon)
    if layer.scale:
        scale = scale * layer.gamma
    return lambda s: s * scale


def _mirror_zero_padding(layer: keras.layers.ZeroPadding2D, inp: tf.Tensor, out: tf.Tensor) -> Mirror:
    _channels_last(layer)
    (top, bottom), (left, right) = layer.padding
    height, width = out.shape[1], out.shape[2]
    return lambda s: s[:, top:height - bottom, left:width - right, :]


def _reshape_back(layer: keras.layers.Layer, inp: tf.Tensor, out: tf.Tensor) -> Mirror:
    shape = tf.shape(inp)
    return lambda s: tf.reshape(s, shape)


_MIRRORS: list[tuple[type | tuple[type, ...], Callable[[Any, tf.Tensor, tf.Tensor], Mirror]]] = [
    (keras.layers.Conv2D, _mirror_conv),
    (keras.layers.Dense, _mirror_dense),
    ((keras.layers.ReLU, keras.layers.Activation), _mirror_relu),
    ((keras.layers.MaxPooling2D, keras.layers.GlobalMaxPooling2D), _mirror_max_pool),
    ((keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D), _mirror_avg_pool),
    (keras.layers.BatchNormalization, _mirror_batchnorm),
    (keras.layers.ZeroPadding2D, _mirror_zero_padding),
    ((keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout, keras.layers.SpatialDropout2D,
      keras.layers.Identity), _reshape_back),
]


def _mirror(layer: keras.layers.Layer, inp: tf.Tensor, out: tf.Tensor) -> Mirror:
    for kind, build in _MIRRORS:
        if isinstance(layer, kind):
            return build(layer, inp, out)
    raise _CannotMirror(f"{type(layer).__name__} has no deconvnet mirror (supported: Conv2D, Dense, ReLU, "
                        "max/average pooling, BatchNormalization, ZeroPadding2D, Flatten, Reshape, Dropout)")


def _chain(model: keras.Model, prefix: str = "") -> list[tuple[str, keras.layers.Layer]]:
    """The model's layers as a chain of (path name, layer), nested models flattened."""
    if isinstance(model, keras.Sequential):
        if not model.built:
            raise ConvscopeError(f"Sequential model {model.name!r} is not built, so it has no weights yet",
                                 "Call it once on a batch or call model.build(input_shape) first.")
    else:
        _check_chain(model)
    found: list[tuple[str, keras.layers.Layer]] = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        name = f"{prefix}{layer.name}"
        found += _chain(layer, f"{name}/") if isinstance(layer, keras.Model) else [(name, layer)]
    return found


def _check_chain(model: keras.Model) -> None:
    """A functional model is a chain when each layer's one call reads the previous call's output."""
    if not getattr(model, "inputs", None) or len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConvscopeError(f"the deconvnet mirror needs a Sequential or single-input, single-output functional "
                             f"model; {model.name!r} is not", _HINT)
    expected = model.inputs[0]
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        calls = [n for n in layer._inbound_nodes if any(t is expected for t in n.input_tensors)]  # noqa: SLF001
        if len(calls) != 1 or len(calls[0].input_tensors) != 1:
            raise ConvscopeError(f"the deconvnet mirror cannot pass layer {layer.name!r}: it does not read exactly "
                                 "the previous layer's output (a branch, residual add or concatenation)", _HINT)
        expected = calls[0].output_tensors[0]
    if expected is not model.outputs[0]:
        raise ConvscopeError(f"model {model.name!r} is not a chain of layers ending in its output", _HINT)


def _trace(model: keras.Model, x: tf.Tensor) -> list[Step]:
    """Run the chain eagerly in inference mode, recording each step and building its mirror."""
    steps = []
    signal = x
    for name, layer in _chain(model):
        out = layer(signal, training=False)
        mirror, why = None, ""
        try:
            mirror = _mirror(layer, signal, out)
        except _CannotMirror as reason:
            why = str(reason)
        steps.append(Step(name, layer, signal, out, mirror, why))
        signal = out
    return steps


def _to_torch(t: tf.Tensor) -> torch.Tensor:
    """NHWC (channels last) -> NCHW (channels at axis 1), as the targets read them."""
    a = np.array(t, copy=True)
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1)) if a.ndim > 2 else a)


def _to_tf(t: torch.Tensor) -> tf.Tensor:
    a = t.detach().numpy()
    return tf.constant(np.moveaxis(a, 1, -1) if a.ndim > 2 else a)


def _seeds(model: keras.Model, steps: list[Step], target: Target) -> dict[int, tf.Tensor]:
    """Step index -> ``d score / d (that step's output)``: the target scored on the recorded outputs."""
    index = {step.name: i for i, step in enumerate(steps)}
    keys: dict[Any, int] = {}
    for key in dict.fromkeys(target.layers()):
        path = resolve_path(model, key)
        model_route(model, path, "the deconvnet mirror", _HINT)  # a custom layer's sublayer: say so
        if path not in index:
            raise ConvscopeError(f"layer {path!r} is not on the model's chain of layers", _HINT)
        keys[key] = index[path]
    acts = {key: _to_torch(steps[i].out).requires_grad_() for key, i in keys.items()}
    out = _to_torch(steps[-1].out).requires_grad_()
    with torch.enable_grad():
        score = target.score(Record(output=out, acts=acts, rows=slice(0, out.shape[0])))
        wanted = [out, *acts.values()]
        grads = (torch.autograd.grad(score.sum(), wanted, allow_unused=True) if score.requires_grad
                 else [None] * len(wanted))
    seeds: dict[int, tf.Tensor] = {}
    for i, grad in zip([len(steps) - 1, *keys.values()], grads):
        if grad is not None:
            seeds[i] = seeds[i] + _to_tf(grad) if i in seeds else _to_tf(grad)
    return seeds


def reconstruct(model: keras.Model, x: Any, target: TargetLike) -> tf.Tensor:
    """The pixel-space projection of ``target``'s seed through the explicit top-down mirror of ``model``.

    ``x`` is an NHWC batch (array or tensor, never modified); the result has its shape. Equals the
    torch :func:`convscope.deconv.reconstruct` on the model's PyTorch twin (after the layout transpose).

    Example::

        reconstruct(model, x, MaxNeuron("conv3", 7))  # [N, H, W, C]
    """
    if not isinstance(model, keras.Model):
        raise ConvscopeError(f"reconstruct needs a Keras model, got {type(model).__name__}",
                             "Pass a keras.Model, or use convscope.deconv.reconstruct for PyTorch.")
    x = _as_inputs(x)
    if not isinstance(x, tf.Tensor) or x.shape.rank != 4:
        raise ConvscopeError(f"x must be one NHWC batch [N, H, W, C], got {getattr(x, 'shape', type(x).__name__)}",
                             "Add a batch axis with x[None] for one image.")
    target = as_target(target)
    target.check_batch(int(x.shape[0]))
    steps = _trace(model, x)
    if not steps:
        raise ConvscopeError(f"model {model.name!r} has no layers to mirror", "Pass a model with layers.")
    return _walk_down(steps, _seeds(model, steps, target), x)


def _walk_down(steps: list[Step], seeds: dict[int, tf.Tensor], x: tf.Tensor) -> tf.Tensor:
    """Plant each seed at its step and mirror every step from the highest seed down to the input."""
    if not seeds:
        return tf.zeros_like(x)
    top = max(seeds)
    signal = tf.zeros_like(steps[top].out)
    for i in range(top, -1, -1):
        step = steps[i]
        if i in seeds:
            signal = signal + seeds[i]
        if step.mirror is None:
            raise ConvscopeError(f"the deconvnet mirror cannot pass layer {step.name!r} "
                                 f"({type(step.layer).__name__}): {step.why}", _HINT)
        signal = step.mirror(signal)
    return signal
