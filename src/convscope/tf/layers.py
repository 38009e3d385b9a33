"""Address a Keras model's layers by name, and list them with their output shapes.

Names are the paths of :mod:`convscope.tf.paths`, as everywhere on the Keras side: a layer inside a
nested model or a custom layer is ``"outer/inner"`` (its bare name works too when no other path ends
in it). An unknown name raises a :class:`~convscope.errors.ConvscopeError` listing the closest names.

:func:`layer_table` gives the same :class:`~convscope.layers.LayerRow` rows as the PyTorch
:func:`convscope.layers.layer_table` (name, depth, type, output shape for a probe batch, own
parameter count, calls), so ``convscope layers model.keras`` prints both alike.

Example::

    layer = resolve_layer(model, "block2_conv1")
    for row in layer_table(model, probe_for(model, 224)):
        print(row.name, row.kind, row.output_shape)
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import keras
import numpy as np

from convscope.layers import LayerRow
from convscope.tf.paths import layer_paths, resolve_layer, sublayers
from convscope.tf.scoped import patched

__all__ = ["layer_names", "layer_table", "probe_for", "resolve_layer"]
Seen = dict[int, tuple[Any, Any]]  # layer id -> (input, output) of its last call


def layer_names(model: keras.Model) -> list[str]:
    """Every layer's path (:mod:`convscope.tf.paths`), in definition order, inputs excluded."""
    return [path for path, layer in layer_paths(model).items() if not isinstance(layer, keras.layers.InputLayer)]


def probe_for(model: keras.Model, size: int) -> np.ndarray:
    """A zero batch [1, size, size, C] for ``model`` (C from its input shape, 3 when unknown)."""
    inputs = getattr(model, "inputs", None) or []
    channels = inputs[0].shape[-1] if len(inputs) == 1 and len(inputs[0].shape) == 4 else None
    return np.zeros((1, size, size, channels or 3), np.float32)


def layer_table(model: keras.Model, probe: Any | None = None) -> list[LayerRow]:
    """Every layer of :func:`layer_names` (depth = nesting + 1) with the output shape it gives ``probe``.

    A layer called several times reports its last call's shape and its call count, like the PyTorch
    table; ``params`` counts a layer's own weights, not those of its sublayers (0 for a nested model).
    Call counts inside a custom layer or a subclassed model are known only from the probe pass
    (0 without a probe): there is no graph to read them from.
    """
    x = None if probe is None else np.asarray(probe, np.float32)
    rows: list[LayerRow] = []
    _add_rows(model, x, "", 1, rows, _recorded(model, x))
    return rows


def _add_rows(holder: keras.Layer, x: np.ndarray | None, prefix: str, depth: int, rows: list[LayerRow],
              recorded: tuple[dict[int, int], Seen]) -> None:
    calls, seen = _calls_and_values(holder, x) if _has_graph(holder) else recorded
    for layer in sublayers(holder):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        inp, out = seen.get(id(layer), (None, None))
        rows.append(LayerRow(name=prefix + layer.name, depth=depth, kind=type(layer).__name__,
                             output_shape=_shape(out), params=_own_params(layer), calls=calls.get(id(layer), 0)))
        if sublayers(layer):
            _add_rows(layer, inp, f"{prefix}{layer.name}/", depth + 1, rows, recorded)


def _has_graph(holder: keras.Layer) -> bool:
    """Whether ``holder`` calls its layers through a graph that can be read (Sequential, functional)."""
    return isinstance(holder, keras.Sequential) or (isinstance(holder, keras.Model)
                                                     and hasattr(holder, "_nodes_by_depth"))


def _recorded(model: keras.Model, x: np.ndarray | None) -> tuple[dict[int, int], Seen]:
    """Calls and (first input, output) of every layer held by a graphless holder (a custom layer or a
    subclassed model), from one pass of ``model(x)`` with those layers' ``call`` wrapped."""
    holders = [model, *layer_paths(model).values()]
    inner = {id(layer): layer for holder in holders if not _has_graph(holder) for layer in sublayers(holder)}
    calls: dict[int, int] = {}
    seen: Seen = {}
    if x is None or not inner:
        return calls, seen

    def recording(layer: keras.Layer) -> Any:
        call = layer.call

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            out = call(*args, **kwargs)
            calls[id(layer)] = calls.get(id(layer), 0) + 1
            seen[id(layer)] = (args[0] if args else None, out)
            return out

        return wrapped

    with ExitStack() as scope:
        for layer in inner.values():
            scope.enter_context(patched(layer, "call", recording(layer)))
        model(x, training=False)
    return calls, seen


def _calls_and_values(model: keras.Model, x: np.ndarray | None) -> tuple[dict[int, int], Seen]:
    """Per layer id of a Sequential or functional model: how often it calls the layer, and (input,
    output) of its last call on ``x``."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if isinstance(model, keras.Sequential):
        if x is None or not model.built:  # no weights to run
            return {id(layer): 1 for layer in layers}, {}
        seen = {}
        for layer in layers:
            out = layer(x, training=False)
            seen[id(layer)] = (x, out)
            x = np.asarray(out)
        return {id(layer): 1 for layer in layers}, seen
    nodes = [node for depth in sorted(model._nodes_by_depth, reverse=True)  # noqa: SLF001 - the model's own calls
             for node in model._nodes_by_depth[depth] if not isinstance(node.operation, keras.layers.InputLayer)]  # noqa: SLF001
    calls: dict[int, int] = {}
    for node in nodes:
        calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
    if x is None or len(model.inputs) != 1:
        return calls, {}
    wanted = {f"{i}/{side}/{j}": tensor for i, node in enumerate(nodes)
              for side, tensors in (("in", node.input_tensors), ("out", node.output_tensors))
              for j, tensor in enumerate(tensors)}
    values = keras.Model(_single(model.inputs), wanted)(x, training=False)  # a dict: never unwrapped

    def side(i: int, which: str, count: int) -> Any:
        return _single([values[f"{i}/{which}/{j}"] for j in range(count)])

    seen = {id(node.operation): (side(i, "in", len(node.input_tensors)), side(i, "out", len(node.output_tensors)))
            for i, node in enumerate(nodes)}
    return calls, seen


def _single(items: Any) -> Any:
    return items[0] if isinstance(items, (list, tuple)) and len(items) == 1 else items


def _shape(value: Any) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    return None if shape is None else tuple(int(d) for d in shape)


def _own_params(layer: keras.layers.Layer) -> int:
    """The size of the weights of ``layer`` that none of its sublayers holds."""
    inner = {id(w) for sub in sublayers(layer) for w in sub.weights}
    return int(sum(np.prod(w.shape) for w in layer.weights if id(w) not in inner))
