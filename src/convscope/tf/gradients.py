"""The gradient of a Keras layer's output with respect to the model input.

The seed's recipe was ``tf.gradients(layer_output, input_x)``, which TF2 refuses eagerly. Here a
sub-model from the model's inputs to the layer runs under ``tf.GradientTape`` inside a cached
``tf.function``:

    layer_gradient(model, name, x)             = d sum(layer(x)) / dx
    layer_gradient(model, name, x, channel=k)  = d sum(layer(x)[..., k]) / dx   (axis 1 for channels_first)

Samples do not interact (the model runs with ``training=False``), so row ``b`` of the result is
the gradient of sample ``b``'s own sum. Layers are named as everywhere on the Keras side
(:mod:`convscope.tf.paths`): ``"outer_layer/inner_layer"`` inside a nested model, a name used once
anywhere bare, or the layer object. The layer must be reachable through nested functional or
Sequential models; a sublayer of a custom layer is a clear error (its output is not in the graph).

Example::

    grads = layer_gradient(model, "conv2", images)              # same shape as images
    grads_ch3 = layer_gradient(model, "conv2", images, channel=3)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from convscope.errors import ConvscopeError
from convscope.tf.paths import LayerKey, model_route, resolve_path

_Fn = Callable[[Any], Any]
_CUSTOM_FIX = ("Take the gradient of the custom layer itself, or use a Keras backend method, which records any "
               "layer: Saliency(model).attribute(x, Channel(name, k)) is the gradient of channel k's sum.")

# model -> {(layer path, channel): compiled gradient}. Weak keys: a model that is no longer used is
# freed with its entries; the compiled functions hold the model's layers, never the model itself.
_COMPILED: weakref.WeakKeyDictionary[keras.Model, dict[tuple[str, int | None], _Fn]] = weakref.WeakKeyDictionary()


def layer_gradient(model: keras.Model, layer_name: LayerKey, x: Any, channel: int | None = None) -> Any:
    """d(sum of ``layer_name``'s output, or of one channel of it) / d(model input), per sample.

    ``x`` is one batch (tensor or array) for a single-input model, or a list for several inputs;
    the result has the same structure and shapes. The model is never built, changed or called in
    training mode. Raises ConvscopeError for an unknown layer (listing close names), a bad
    channel, or an unbuilt Sequential model.
    """
    if not isinstance(model, keras.Model):
        raise ConvscopeError(f"layer_gradient needs a Keras model, got {type(model).__name__}",
                             "Pass a keras.Model (functional or Sequential).")
    if channel is not None and (isinstance(channel, bool) or not isinstance(channel, int) or channel < 0):
        raise ConvscopeError(f"channel must be a non-negative int or None, got {channel!r}",
                             "Pass the index of one output channel, or None for the whole layer.")
    path = resolve_path(model, layer_name)
    per_model = _COMPILED.setdefault(model, {})
    key = (path, channel)
    if key not in per_model:
        route = model_route(model, path, "layer_gradient", _CUSTOM_FIX)
        per_model[key] = _compile(_output_fn(model, route), path, channel, _channel_axis(route[-1]))
    return per_model[key](_as_inputs(x))


def _compile(forward: _Fn, name: str, channel: int | None, axis: int) -> _Fn:
    """A tf.function computing the gradient of the (channel-)summed output of ``forward``."""

    def gradient(inputs: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = forward(inputs)
            if channel is not None:  # checked while tracing, where the output's shape is known
                out = tf.gather(out, _checked_channel(out, name, channel, axis), axis=axis)
            total = tf.reduce_sum(out)
        return tape.gradient(total, inputs, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    return tf.function(gradient, reduce_retracing=True, autograph=False)


def _checked_channel(out: Any, name: str, channel: int, axis: int) -> int:
    shape = getattr(out, "shape", None)
    if not isinstance(out, tf.Tensor) or shape is None or shape.rank is None or shape.rank < 2:
        raise ConvscopeError(f"layer {name!r} gives {shape if shape is not None else type(out).__name__}, "
                             "which has no channel axis", "Use channel=None to take the gradient of its whole output.")
    count = shape[axis]
    if count is not None and channel >= count:
        raise ConvscopeError(f"channel {channel} is out of range: layer {name!r} has {count} channels",
                             f"Pick a channel in 0..{count - 1}.")
    return channel


def _channel_axis(layer: keras.Layer) -> int:
    """1 for a channels_first image layer, else -1 (Keras' default channels_last)."""
    return 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else -1


def _output_fn(model: keras.Model, route: list[keras.Layer]) -> _Fn:
    """A function from the model's inputs to the output of ``route[-1]``, reached through the
    nested models ``route[:-1]`` (see :func:`convscope.tf.paths.model_route`)."""
    layer = route[0]
    if len(route) == 1:
        return _run_until(model, layer, include=True)
    head = _run_until(model, layer, include=False)
    tail = _output_fn(layer, route[1:])
    return lambda inputs: tail(head(inputs))


def _run_until(model: keras.Model, layer: keras.Layer, *, include: bool) -> _Fn:
    """Inputs -> the output of ``layer`` (``include``) or the input it receives, in inference mode."""
    if isinstance(model, keras.Sequential):
        if not model.built:
            raise ConvscopeError(f"Sequential model {model.name!r} is not built, so it has no weights yet",
                                 "Call it once on a batch or call model.build(input_shape) first.")
        index = next((i for i, item in enumerate(model.layers) if item is layer), -1)  # -1: its InputLayer
        chain = model.layers[: index + include] if index >= 0 else []
        return lambda inputs: _apply_chain(chain, inputs)
    if not getattr(model, "inputs", None):
        raise ConvscopeError(f"model {model.name!r} is neither functional nor Sequential",
                             "layer_gradient reads the layer graph; build the model with the functional API.")
    nodes = layer._inbound_nodes  # noqa: SLF001 - Keras keeps a layer's calls (and their tensors) only here
    if len(nodes) != 1:
        raise ConvscopeError(f"layer {layer.name!r} is called {len(nodes)} times in model {model.name!r}",
                             "Its output is ambiguous; give a layer that is called once.")
    ends = nodes[0].output_tensors if include else nodes[0].input_tensors
    sub = keras.Model(_single(model.inputs), _single(ends))
    return lambda inputs: sub(inputs, training=False)


def _apply_chain(chain: list[keras.Layer], inputs: Any) -> Any:
    out = inputs
    for item in chain:
        out = item(out, training=False)
    return out


def _single(items: Any) -> Any:
    return items[0] if isinstance(items, (list, tuple)) and len(items) == 1 else items


def _as_inputs(x: Any) -> Any:
    """x as float tensors (the structure kept); the caller's arrays are never modified."""

    def convert(item: Any) -> tf.Tensor:
        tensor = tf.convert_to_tensor(item)
        return tensor if tensor.dtype.is_floating else tf.cast(tensor, keras.backend.floatx())

    try:
        return tf.nest.map_structure(convert, list(x) if isinstance(x, tuple) else x)
    except (TypeError, ValueError) as err:
        raise ConvscopeError(f"x cannot be converted to a tensor: {err}",
                             "Pass a tf.Tensor or numpy array batch.") from None
