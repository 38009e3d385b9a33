"""The explicit Zeiler-Fergus deconvnet for Keras conv-relu-pool chains (channels last).

The Keras counterpart of :mod:`convscope.deconv`, with the same rules and conventions. The model
(Sequential or functional, nested models flattened into their layers) must be a chain: each
layer reads the previous layer's output. One eager forward pass records the max-pool switches
and the target's layer outputs; the target plants its seed ``d score / d activation`` (for
``MaxNeuron``: the strongest activation, all others zero) and the signal walks back down, each
layer mirrored by hand:

==================================  ========================================================
forward layer                       mirror (signal ``s`` -> signal below)
==================================  ========================================================
``MaxPooling1D/2D/3D``, global max  ``unpool(s, argmax)`` at the recorded switches
                                    (:func:`convscope.tf.ops.max_pool_with_switches`; 1-D
                                    on a height-1 image, 3-D by :func:`volume_switches`)
``ReLU``, ``Activation("relu")``,   ``relu(s)``: rectify (a fused ``activation="relu"`` is
fused ``activation="relu"``         mirrored before its layer's linear part)
``Conv1D/2D/3D``                    ``conv_transpose(s, kernel)``: its own kernel, no bias
``Dense``                           ``s @ kernel.T``: the transpose, no bias
``BatchNormalization`` (inference)  ``s * gamma / sqrt(moving_variance + eps)``: no shift
``AveragePooling1D/2D/3D``, global  the transpose of the averaging (``AvgPoolGrad``,
average                             ``AvgPool3DGrad``)
``ZeroPadding1D/2D/3D``             crop the padding off
``Flatten``, ``Reshape``,           reshape back to the layer's input shape
``Dropout``, ``Identity``
==================================  ========================================================

Signals ``[N, L, C]``, images ``[N, H, W, C]`` and volumes ``[N, D, H, W, C]`` alike.

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


def _mirror_conv(layer: keras.layers.Layer, inp: tf.Tensor, out: tf.Tensor) -> Mirror:
    _channels_last(layer)
    if layer.groups != 1:
        raise _CannotMirror("grouped convolutions are not mirrored")
    if layer.padding not in ("same", "valid"):
        raise _CannotMirror(f"its padding={layer.padding!r} has no transpose here (same or valid only)")
    kernel, shape = layer.kernel, tf.shape(inp)
    strides, dilations, padding = list(layer.strides), list(layer.dilation_rate), layer.padding.upper()
    return _with_activation(layer, lambda s: tf.nn.conv_transpose(s, kernel, shape, strides, padding,
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


_GLOBAL_MAX = (keras.layers.GlobalMaxPooling1D, keras.layers.GlobalMaxPooling2D, keras.layers.GlobalMaxPooling3D)
_GLOBAL_AVG = (keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D,
               keras.layers.GlobalAveragePooling3D)


def _pooling(layer: keras.layers.Layer, inp: tf.Tensor) -> tuple[list[int], list[int], str]:
    """``(window, strides, padding)`` of a pooling layer; a global one is one window over the whole map."""
    if isinstance(layer, (*_GLOBAL_MAX, *_GLOBAL_AVG)):
        return list(inp.shape[1:-1]), [1] * (inp.shape.rank - 2), "VALID"
    return list(layer.pool_size), list(layer.strides), layer.padding.upper()


def _as_image(t: tf.Tensor) -> tf.Tensor:
    """A signal ``[N, L, C]`` as a height-1 image ``[N, 1, L, C]``; an image as it is."""
    return t[:, None] if t.shape.rank == 3 else t


def _mirror_max_pool(layer: keras.layers.Layer, inp: tf.Tensor, out: tf.Tensor) -> Mirror:
    _channels_last(layer)
    window, strides, padding = _pooling(layer, inp)
    if inp.shape.rank == 5:
        pooled, argmax = volume_switches(inp, window, strides, padding)
    else:
        flat = inp.shape.rank == 3  # a signal pools as a height-1 image with 1 x k windows
        pooled, argmax = max_pool_with_switches(_as_image(inp), [1, *window] if flat else window,
                                                [1, *strides] if flat else strides, padding)
    if not bool(tf.reduce_all(tf.equal(tf.reshape(pooled, tf.shape(out)), out))):
        raise _CannotMirror("its output is not the max-pool of its input")
    # the switches index each sample's (*space, C) block row-major, so any 4-D view with the same
    # per-sample size unpools them: volumes as [N, D * H, W, C], signals as [N, 1, L, C]
    shape, view = tf.shape(inp), _image_view(inp.shape)
    pooled_view = _image_view(argmax.shape)
    argmax = tf.reshape(argmax, pooled_view)
    return lambda s: tf.reshape(unpool(tf.reshape(s, pooled_view), argmax, view), shape)


def _image_view(shape: tf.TensorShape) -> list[int]:
    """``[N, *space, C]`` as ``[N, prod(space[:-1]), space[-1], C]`` (1 for a signal's missing axis)."""
    return [int(shape[0]), int(np.prod(shape[1:-2])), int(shape[-2]), int(shape[-1])]  # eager: all known


def volume_switches(x: tf.Tensor, window: list[int], strides: list[int], padding: str) -> tuple[tf.Tensor, tf.Tensor]:
    """3-D max-pooling of ``x [N, D, H, W, C]`` with its switches: ``(pooled, argmax)``, ``argmax``
    the flat index ``((d * H + h) * W + w) * C + c`` of each window's first maximum (in ``(d, h, w)``
    order, as ``tf.nn.max_pool_with_argmax`` and PyTorch break ties) within its sample.

    SAME pads ``max((o - 1) * s + k - n, 0)`` per axis, half (rounded down) before, with ``-inf``.
    Example: ``pooled, argmax = volume_switches(x, [2, 2, 2], [2, 2, 2], "VALID")``.
    """
    spatial = [int(n) for n in x.shape[1:4]]
    channels = int(x.shape[4])
    before = [0, 0, 0]
    if padding == "SAME":
        total = [max((-(-n // s) - 1) * s + k - n, 0) for n, k, s in zip(spatial, window, strides)]
        before = [t // 2 for t in total]
        x = tf.pad(x, [[0, 0], *([b, t - b] for b, t in zip(before, total)), [0, 0]], constant_values=-np.inf)
    patches = tf.extract_volume_patches(x, [1, *window, 1], [1, *strides, 1], "VALID")
    taps = int(np.prod(window))
    patches = tf.reshape(patches, [-1, *patches.shape[1:4], taps, channels])  # taps in (d, h, w) order
    pooled = tf.reduce_max(patches, axis=4)
    order = tf.reshape(tf.range(taps, dtype=tf.int64), [1, 1, 1, 1, taps, 1])
    first = tf.reduce_min(tf.where(tf.equal(patches, pooled[:, :, :, :, None]), order, taps), axis=4)
    where = []
    for axis, (k, s, b) in enumerate(zip(window, strides, before)):
        tap = first // int(np.prod(window[axis + 1:])) % k
        start = tf.reshape(tf.range(patches.shape[1 + axis], dtype=tf.int64) * s - b,
                           [1, *(-1 if a == axis else 1 for a in range(3)), 1])
        where.append(start + tap)
    d, h, w = where
    c = tf.reshape(tf.range(channels, dtype=tf.int64), [1, 1, 1, 1, channels])
    return pooled, ((d * spatial[1] + h) * spatial[2] + w) * channels + c


def _mirror_avg_pool(layer: keras.layers.Layer, inp: tf.Tensor, out: tf.Tensor) -> Mirror:
    _channels_last(layer)
    window, strides, padding = _pooling(layer, inp)
    grad = tf.raw_ops.AvgPool3DGrad if inp.shape.rank == 5 else tf.raw_ops.AvgPoolGrad
    if inp.shape.rank == 3:  # a signal averages as a height-1 image with 1 x k windows
        window, strides = [1, *window], [1, *strides]
    shape = tf.shape(_as_image(inp), out_type=tf.int32)
    pooled = tf.shape(_as_image(out), out_type=tf.int32)  # the windows' grid (a global pool drops it)
    grid = tf.concat([shape[:1], [(n - k) // s + 1 for n, k, s in zip(tf.unstack(shape[1:-1]), window, strides)],
                      shape[-1:]], 0) if padding == "VALID" else pooled

    def back(s: tf.Tensor) -> tf.Tensor:
        below = grad(orig_input_shape=shape, grad=tf.reshape(s, grid), ksize=[1, *window, 1],
                     strides=[1, *strides, 1], padding=padding)
        return tf.reshape(below, tf.shape(inp))

    return back


def _mirror_batchnorm(layer: keras.layers.BatchNormalization, inp: tf.Tensor, out: tf.Tensor) -> Mirror:
    axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    if [a % inp.shape.rank for a in axes] != [inp.shape.rank - 1]:
        raise _CannotMirror("only batch-norm over the last (channel) axis is mirrored")
    scale = tf.math.rsqrt(tf.convert_to_tensor(layer.moving_variance) + layer.epsilon)
    if layer.scale:
        scale = scale * layer.gamma
    return lambda s: s * scale


def _mirror_zero_padding(layer: keras.layers.Layer, inp: tf.Tensor, out: tf.Tensor) -> Mirror:
    _channels_last(layer)
    pads = [layer.padding] if isinstance(layer, keras.layers.ZeroPadding1D) else list(layer.padding)
    crop = tuple(slice(lo, size - hi) for (lo, hi), size in zip(pads, out.shape[1:-1]))
    return lambda s: s[(slice(None), *crop, slice(None))]


def _reshape_back(layer: keras.layers.Layer, inp: tf.Tensor, out: tf.Tensor) -> Mirror:
    shape = tf.shape(inp)
    return lambda s: tf.reshape(s, shape)


_MIRRORS: list[tuple[type | tuple[type, ...], Callable[[Any, tf.Tensor, tf.Tensor], Mirror]]] = [
    ((keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D), _mirror_conv),
    (keras.layers.Dense, _mirror_dense),
    ((keras.layers.ReLU, keras.layers.Activation), _mirror_relu),
    ((keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D, *_GLOBAL_MAX),
     _mirror_max_pool),
    ((keras.layers.AveragePooling1D, keras.layers.AveragePooling2D, keras.layers.AveragePooling3D, *_GLOBAL_AVG),
     _mirror_avg_pool),
    (keras.layers.BatchNormalization, _mirror_batchnorm),
    ((keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D), _mirror_zero_padding),
    ((keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout, keras.layers.SpatialDropout1D,
      keras.layers.SpatialDropout2D, keras.layers.SpatialDropout3D, keras.layers.Identity), _reshape_back),
]


def _mirror(layer: keras.layers.Layer, inp: tf.Tensor, out: tf.Tensor) -> Mirror:
    for kind, build in _MIRRORS:
        if isinstance(layer, kind):
            return build(layer, inp, out)
    raise _CannotMirror(f"{type(layer).__name__} has no deconvnet mirror (supported: Conv1D/2D/3D, Dense, ReLU, "
                        "max/average pooling, BatchNormalization, ZeroPadding, Flatten, Reshape, Dropout)")


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
    """Channels last -> channels at axis 1 (NHWC -> NCHW, and so on), as the targets read them."""
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

    ``x`` is a channels-last batch (array or tensor, never modified): signals ``[N, L, C]``, images
    ``[N, H, W, C]`` or volumes ``[N, D, H, W, C]``; the result has its shape. Equals the
    torch :func:`convscope.deconv.reconstruct` on the model's PyTorch twin (after the layout transpose).

    Example::

        reconstruct(model, x, MaxNeuron("conv3", 7))  # [N, H, W, C]
    """
    if not isinstance(model, keras.Model):
        raise ConvscopeError(f"reconstruct needs a Keras model, got {type(model).__name__}",
                             "Pass a keras.Model, or use convscope.deconv.reconstruct for PyTorch.")
    x = _as_inputs(x)
    if not isinstance(x, tf.Tensor) or x.shape.rank not in (3, 4, 5):
        raise ConvscopeError(f"x must be one channels-last batch of signals [N, L, C], images [N, H, W, C] or "
                             f"volumes [N, D, H, W, C], got {getattr(x, 'shape', type(x).__name__)}",
                             "Add a batch axis with x[None] for one sample.")
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
