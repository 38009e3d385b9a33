"""Address a Keras model's layers by name, and list them with their output shapes.

Names are Keras layer names; a layer inside a nested model is ``"outer/inner"`` (its bare name
works too when no other nested model uses it). An unknown name raises a
:class:`~convscope.errors.ConvscopeError` listing the closest names.

:func:`layer_table` gives the same :class:`~convscope.layers.LayerRow` rows as the PyTorch
:func:`convscope.layers.layer_table` (name, depth, type, output shape for a probe batch, own
parameter count, calls), so ``convscope layers model.keras`` prints both alike.

Example::

    layer = resolve_layer(model, "block2_conv1")
    for row in layer_table(model, probe_for(model, 224)):
        print(row.name, row.kind, row.output_shape)
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from convscope.errors import ConvscopeError
from convscope.layers import LayerRow
from convscope.tf.gradients import _layer_at, _layer_paths, _resolve


def layer_names(model: keras.Model) -> list[str]:
    """Every layer's name, nested ones as ``"outer/inner"``, in model order (inputs excluded)."""
    return ["/".join(path) for path in _layer_paths(model)
            if not isinstance(_layer_at(model, path), keras.layers.InputLayer)]


def resolve_layer(model: keras.Model, name: str) -> keras.layers.Layer:
    """The layer called ``name`` (``"outer/inner"`` or a unique bare name); close names if unknown."""
    if not isinstance(name, str):
        raise ConvscopeError(f"a Keras layer is named by a string, got {type(name).__name__}",
                             "Pass the layer's name as in model.summary() (see `convscope layers MODEL`).")
    return _layer_at(model, _resolve(model, name))


def probe_for(model: keras.Model, size: int) -> np.ndarray:
    """A zero batch [1, size, size, C] for ``model`` (C from its input shape, 3 when unknown)."""
    inputs = getattr(model, "inputs", None) or []
    channels = inputs[0].shape[-1] if len(inputs) == 1 and len(inputs[0].shape) == 4 else None
    return np.zeros((1, size, size, channels or 3), np.float32)


def layer_table(model: keras.Model, probe: Any | None = None) -> list[LayerRow]:
    """Every layer (nested models expanded, depth = nesting + 1) with the output shape it gives ``probe``.

    A layer called several times reports its last call's shape and its call count, like the PyTorch
    table; ``params`` counts a layer's own weights (0 for a nested model: its layers carry them).
    """
    rows: list[LayerRow] = []
    _add_rows(model, None if probe is None else np.asarray(probe, np.float32), "", 1, rows)
    return rows


def _add_rows(model: keras.Model, x: np.ndarray | None, prefix: str, depth: int, rows: list[LayerRow]) -> None:
    calls, seen = _calls_and_values(model, x)
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        inp, out = seen.get(id(layer), (None, None))
        nested = isinstance(layer, keras.Model)
        rows.append(LayerRow(name=prefix + layer.name, depth=depth, kind=type(layer).__name__,
                             output_shape=_shape(out), params=0 if nested else _own_params(layer),
                             calls=calls.get(id(layer), 0)))
        if nested:
            _add_rows(layer, inp, f"{prefix}{layer.name}/", depth + 1, rows)


def _calls_and_values(model: keras.Model, x: np.ndarray | None) -> tuple[dict[int, int], dict[int, tuple[Any, Any]]]:
    """Per layer id: how often the model calls it, and (input, output) of its last call on ``x``."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if isinstance(model, keras.Sequential) or not hasattr(model, "_nodes_by_depth"):
        if x is None or not isinstance(model, keras.Sequential) or not model.built:  # no graph or no weights
            return {id(layer): int(isinstance(model, keras.Sequential)) for layer in layers}, {}
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
    return int(sum(np.prod(w.shape) for w in layer.weights))
