"""What canonizing a Keras model means for LRP, read from its functional graph before any work.

:func:`keras_canon` walks the model's graph (a ``keras.Model(inputs, outputs)`` or a
``Sequential``, nested models included, never changing them) and sorts every layer the way
:mod:`~convscope.methods.lrp.keras.mode` treats it:

=========================================================  ===========================================
Keras layer                                                LRP
=========================================================  ===========================================
``Conv1D/2D/3D``, ``DepthwiseConv1D/2D``, ``Dense``        the composite's rule (``conv`` / ``linear``;
                                                           a fused activation passes relevance)
``BatchNormalization`` right after one of them             *folded* into it (``fold``)
``ZeroPadding`` right before a convolution                 *merged* into it: the padding's zeros are
                                                           no inputs (``Flat``, ``ZBox`` count them not)
``AveragePooling``, ``GlobalAveragePooling``               linear layers (``pool``)
``Add``                                                    split by contribution (``sum``)
other normalisations, ``Rescaling``                        the composite's ``norm`` rule
``ReLU``, ``Activation``, ...                              passed through
``Concatenate``, ``Flatten``, max pooling, dropout, ...    the gradient (relevance moves with values)
=========================================================  ===========================================

Anything else (a custom layer, a ``keras.ops`` call in the graph, a softmax, a transposed
convolution) is listed in ``report.unhandled``, and :class:`~convscope.methods.lrp.LRP` refuses
the model before any work. A subclassed model has no graph to read and is refused.

Example::

    canon = keras_canon(keras_model)
    canon.report.folds          # [('conv1', 'bn1'), ...]
    canon.report.unhandled      # []
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import keras

from convscope.errors import ConvscopeError
from convscope.methods.lrp.graph import CanonicalReport
from convscope.tf.paths import layer_paths

__all__ = ["KerasCanon", "keras_canon", "layer_kind"]

L = keras.layers
_KINDS: tuple[tuple[tuple[type, ...], str], ...] = (
    ((L.InputLayer,), "input"),
    ((L.Conv1D, L.Conv2D, L.Conv3D, L.DepthwiseConv1D, L.DepthwiseConv2D), "conv"),
    ((L.Dense,), "linear"),
    ((L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D, L.GlobalAveragePooling1D,
      L.GlobalAveragePooling2D, L.GlobalAveragePooling3D), "pool"),
    ((L.BatchNormalization, L.LayerNormalization, L.GroupNormalization, L.Normalization, L.Rescaling), "norm"),
    ((L.Add,), "sum"),
    ((L.ReLU, L.LeakyReLU, L.ELU, L.PReLU, L.Activation), "pass"),
    ((L.Flatten, L.Reshape, L.Permute, L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D, L.Cropping1D,
      L.Cropping2D, L.Cropping3D, L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.GlobalMaxPooling1D,
      L.GlobalMaxPooling2D, L.GlobalMaxPooling3D, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D,
      L.SpatialDropout3D, L.GaussianDropout, L.GaussianNoise, L.AlphaDropout, L.Identity, L.Concatenate,
      L.UpSampling1D, L.UpSampling2D, L.UpSampling3D, L.RepeatVector), "route"),
)
#: activations that pass relevance through (as the PyTorch mode's element-wise functions)
PASSING = {"linear", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "swish", "hard_silu",
           "hard_swish", "mish", "softplus", "sigmoid", "hard_sigmoid", "tanh", "hard_tanh"}
_PADS = (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D)
_CONVS = (L.Conv1D, L.Conv2D, L.Conv3D, L.DepthwiseConv1D, L.DepthwiseConv2D)


def _activation(layer: keras.Layer) -> str:
    fn = getattr(layer, "activation", None)
    return "linear" if fn is None else str(getattr(fn, "__name__", fn))


def layer_kind(layer: keras.Layer) -> tuple[str | None, str]:
    """``(kind, why)``: how LRP treats ``layer`` (None: no rule, ``why`` says what is missing)."""
    if isinstance(layer, keras.Model):
        return ("model", "") if _graph(layer) is not None else (None, "a subclassed model: no graph to read")
    kind = next((k for types, k in _KINDS if isinstance(layer, types)), None)
    if kind is None:
        return None, type(layer).__name__
    if kind in ("conv", "linear", "pass") and _activation(layer) not in PASSING:
        hint = ": LRP explains logits, build the model without it" if "softmax" in _activation(layer) else ""
        return None, f"{_activation(layer)} activation{hint}"
    if kind in ("conv", "linear") and getattr(layer, "quantization_mode", None):
        return None, f"{layer.quantization_mode}-quantized"
    if getattr(layer, "padding", None) == "causal":
        return None, "causal padding"
    if isinstance(layer, (L.UpSampling2D,)) and layer.interpolation != "nearest":
        return None, f"{layer.interpolation} up-sampling"
    return kind, ""


def _graph(model: keras.Model) -> Any:  # noqa: ANN401 - Keras' functional graph
    """The functional model whose graph ``model`` runs (a Sequential's inner one), or None."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    return model if hasattr(model, "_nodes_by_depth") else None


def _nodes(model: keras.Model) -> Iterator[Any]:
    graph = _graph(model)
    by_depth = graph._nodes_by_depth  # noqa: SLF001 - the model's own calls, in the order it runs them
    for depth in sorted(by_depth, reverse=True):
        yield from by_depth[depth]


@dataclass
class KerasCanon:
    """The plan of one model: ``kinds`` by layer id, ``fold_into`` (batch norm id -> the id of the
    layer it folds into), ``pad_of`` (convolution id -> the id of the padding merged into it), and
    the :class:`~convscope.methods.lrp.graph.CanonicalReport` with paths (``merges``: the paddings)."""

    report: CanonicalReport
    kinds: dict[int, str] = field(default_factory=dict)
    fold_into: dict[int, int] = field(default_factory=dict)
    pad_of: dict[int, int] = field(default_factory=dict)
    merges: list[tuple[str, str]] = field(default_factory=list)


def _channel_axis(tensor: Any, layer: keras.Layer) -> int:  # noqa: ANN401
    rank = len(tensor.shape)
    return 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else rank - 1


def _folds(bn: keras.Layer, source: keras.Layer, tensor: Any) -> bool:  # noqa: ANN401
    """Whether batch norm ``bn`` reading ``tensor`` (the output of ``source``) folds into ``source``."""
    if not isinstance(bn, L.BatchNormalization) or not isinstance(source, (*_CONVS, L.Dense)):
        return False
    rank = len(tensor.shape)
    axis = bn.axis if bn.axis >= 0 else rank + bn.axis
    return _activation(source) == "linear" and axis == _channel_axis(tensor, source)


def _build(model: keras.Model) -> KerasCanon:
    if _graph(model) is None:
        raise ConvscopeError(f"LRP reads a Keras model's functional graph, and {model.name!r} is a subclassed "
                             "model without one",
                             "Build the model with keras.Model(inputs, outputs) or keras.Sequential, or explain it "
                             "with another method (such as Saliency or GradCAM).")
    paths = {id(layer): path for path, layer in layer_paths(model).items()}
    canon = KerasCanon(CanonicalReport(True))
    report = canon.report
    calls: dict[int, int] = {}
    edges: list[tuple[keras.Layer, Any, keras.Layer]] = []  # (layer, its input tensor, the layer making it)

    def walk(holder: keras.Model) -> None:
        for node in _nodes(holder):
            op = node.operation
            if node.is_input and isinstance(op, L.InputLayer):
                continue
            calls[id(op)] = calls.get(id(op), 0) + 1
            label = paths.get(id(op), op.name)
            kind, why = layer_kind(op) if isinstance(op, keras.Layer) else (None, f"the operation {type(op).__name__}")
            if kind is None:
                report.unhandled.append(f"{label} ({why})")
                continue
            canon.kinds[id(op)] = kind
            if kind == "model":
                walk(op)
                continue
            if kind == "sum" and len(node.input_tensors) > 1:
                report.sums.append(label)
            elif isinstance(op, L.Concatenate):
                report.concatenations.append(label)
            elif kind == "pool":
                report.pools.append(label)
            if len(node.input_tensors) == 1:
                tensor = node.input_tensors[0]
                edges.append((op, tensor, tensor._keras_history.operation))  # noqa: SLF001

    walk(model)
    for layer, tensor, source in edges:
        once = calls.get(id(layer)) == 1 and calls.get(id(source)) == 1
        if once and _folds(layer, source, tensor):
            canon.fold_into[id(layer)] = id(source)
            report.folds.append((paths[id(source)], paths[id(layer)]))
        elif once and isinstance(layer, _CONVS) and isinstance(source, _PADS):
            canon.pad_of[id(layer)] = id(source)
            canon.merges.append((paths[id(source)], paths[id(layer)]))
    return canon


_CANONS: weakref.WeakKeyDictionary[keras.Model, tuple[tuple[int, ...], KerasCanon]] = weakref.WeakKeyDictionary()


def keras_canon(model: keras.Model) -> KerasCanon:
    """The plan of ``model`` (see the module docstring), kept per model and layer set."""
    key = tuple(id(layer) for layer in layer_paths(model).values())
    known = _CANONS.get(model)
    if known is None or known[0] != key:
        known = _CANONS[model] = (key, _build(model))
    return known[1]
