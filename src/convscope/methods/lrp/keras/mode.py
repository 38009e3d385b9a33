"""LRP rules on a Keras model's layers: each layer's ``call`` wrapped for the block, as the ReLU
rules of :mod:`convscope.backends.tf.rules` are.

Within :func:`keras_lrp_rules` every layer the plan (:func:`~convscope.methods.lrp.keras.graph.keras_canon`)
gives a rule computes exactly what it computed before, and its output carries a
``tf.custom_gradient`` whose backward pass is *relevance* (the gradient slots hold relevance, as
in the PyTorch mode :mod:`~convscope.methods.lrp.mode`):

- convolutions and dense layers: ``R_x = rule.relevance(layer, x, R)`` with the composite's rule
  (the first one of the pass: ``first``), a fused activation passing relevance through; a
  padding merged into the convolution sends the relevance past itself to its own input;
- a batch norm folded into the convolution before it (``fold``): from the norm's output straight
  to the convolution's input by the convolution's rule on ``w' = w * g / sqrt(var + eps)``,
  ``b' = (b - mean) * g / sqrt(var + eps) + beta``; other normalisations: the ``norm`` rule;
- average pooling: the ``pool`` rule; ``Add``: ``R_i = x_i R / s(sum_j x_j)`` (the ``sum`` rule);
- activations: ``R`` unchanged; routing layers (concatenation, flatten, max pooling, dropout):
  not wrapped, their gradient moves relevance with the values.

The wrappers exist only inside the block (also when it raises); inside a ``tf.function`` only
while it is traced. The weights are read, never written.

Example::

    with keras_lrp_rules(net, composite("epsilon_plus"), keras_canon(model)) as mode:
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = net.call(x)
    r = tape.gradient(out, x, output_gradients=out * one_hot)     # relevance of x
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from convscope.backends.tf.model import KerasNet
from convscope.errors import ConvscopeError
from convscope.methods.lrp.composites import Composite
from convscope.methods.lrp.keras.graph import KerasCanon
from convscope.methods.lrp.keras.ops import TF
from convscope.methods.lrp.rules import Epsilon, Layer, LRPRule, Pass
from convscope.tf.scoped import patched

__all__ = ["KerasLRPMode", "keras_lrp_rules"]

Call = Callable[..., Any]


def _attach(y: tf.Tensor, inputs: Sequence[tf.Tensor], backward: Callable[[tf.Tensor], list[tf.Tensor]]) -> tf.Tensor:
    """``y`` (computed from ``inputs``), whose backward pass is ``backward(R)``: one relevance per input."""

    @tf.custom_gradient
    def op(*xs: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], list[tf.Tensor]]]:
        return tf.identity(y), backward

    return op(*inputs)


def _sum_to(t: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """``t`` summed over the axes that broadcasting added to ``like``'s shape."""
    while t.shape.rank > like.shape.rank:
        t = tf.reduce_sum(t, 0)
    axes = [i for i, (a, b) in enumerate(zip(t.shape, like.shape)) if b == 1 and a != 1]
    return tf.reduce_sum(t, axes, keepdims=True) if axes else t


def _linear_fn(layer: keras.Layer) -> Callable[..., tf.Tensor]:
    """``fn(x, w, b)``: the linear part of a convolution or dense layer, with any kernel and bias."""
    first = getattr(layer, "data_format", "channels_last") == "channels_first"

    def fn(v: tf.Tensor, w: tf.Tensor, b: tf.Tensor | None) -> tf.Tensor:
        if isinstance(layer, keras.layers.Dense):
            out = keras.ops.matmul(v, w)
        elif isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
            out = keras.ops.depthwise_conv(v, w, strides=layer.strides, padding=layer.padding,
                                           dilation_rate=layer.dilation_rate, data_format=layer.data_format)
        else:
            out = keras.ops.conv(v, w, strides=list(layer.strides), padding=layer.padding,
                                 dilation_rate=layer.dilation_rate, data_format=layer.data_format)
        if b is None:
            return out
        rank = out.shape.rank
        return out + tf.reshape(b, [1, -1] + [1] * (rank - 2) if first else [1] * (rank - 1) + [-1])

    return fn


def _padded(fn: Callable[..., tf.Tensor], padding: Call) -> Callable[..., tf.Tensor]:
    """``fn`` reading its input through ``padding`` (a padding merged into its convolution)."""
    return lambda v, w, b: fn(padding(v), w, b)


def _fold(layer: Layer, source: keras.Layer, bn: keras.layers.BatchNormalization) -> Layer:
    """``layer`` (the linear part of ``source``) followed by the inference-mode batch norm ``bn``, as one."""
    scale = tf.math.rsqrt(tf.convert_to_tensor(bn.moving_variance) + bn.epsilon)
    if bn.scale:
        scale = scale * tf.convert_to_tensor(bn.gamma)
    w = layer.weight
    weight = w * (tf.reshape(scale, w.shape[-2:]) if isinstance(source, (keras.layers.DepthwiseConv1D,
                                                                         keras.layers.DepthwiseConv2D)) else scale)
    bias = ((0.0 if layer.bias is None else layer.bias) - tf.convert_to_tensor(bn.moving_mean)) * scale
    if bn.center:
        bias = bias + tf.convert_to_tensor(bn.beta)
    return Layer(layer.fn, weight, bias, ops=TF)


@dataclass
class _Source:
    """A linear layer's call without activation: what a batch norm after it folds into."""

    out: tf.Tensor
    x: tf.Tensor
    layer: Layer
    rule: LRPRule
    path: str
    source: keras.Layer


class KerasLRPMode:
    """The wrapped calls of one block (see the module docstring). ``folded``: the ``(layer, norm)``
    pairs folded in the latest pass; ``counts``: layer calls given a rule, by kind."""

    def __init__(self, composite: Composite, canon: KerasCanon, paths: dict[str, keras.Layer], fold: bool) -> None:
        self.composite, self.canon, self.fold = composite, canon, fold
        self.first_done = False
        self.folded: list[tuple[str, str]] = []
        self.counts: Counter[str] = Counter()
        self.sources: dict[int, _Source] = {}  # by id of the output tensor
        self.pads: dict[int, tuple[tf.Tensor, tf.Tensor, Call]] = {}  # id(out) -> (out, input, padding)
        self.paths = paths
        self.by_id = {id(layer): path for path, layer in paths.items()}

    def _rule(self, kind: str, path: str) -> LRPRule:
        first = kind in ("conv", "linear") and not self.first_done
        if kind in ("conv", "linear"):
            self.first_done = True
        parts = path.split("/")
        around = [(p, self.paths[p]) for p in ("/".join(parts[:i + 1]) for i in range(len(parts))) if p in self.paths]
        return self.composite.rule(kind, around, first)

    def wrap(self, path: str, layer: keras.Layer, kind: str) -> Call | None:
        """The wrapped ``call`` of ``layer`` (None: it keeps its own)."""
        inner: Call = layer.call
        if id(layer) in self.canon.pad_of.values():
            return self._padding(layer, inner)
        made = {"conv": self._linear, "linear": self._linear, "norm": self._norm, "pool": self._pool,
                "sum": self._sum, "pass": self._pass}.get(kind)
        return None if made is None else made(path, layer, inner, kind)

    def _padding(self, layer: keras.Layer, inner: Call) -> Call:
        def call(inputs: tf.Tensor, *args: Any, **kwargs: Any) -> tf.Tensor:
            out = inner(inputs, *args, **kwargs)
            self.pads[id(out)] = (out, inputs, lambda v: inner(v, *args, **kwargs))
            return out

        return call

    def _linear(self, path: str, layer: keras.Layer, inner: Call, kind: str) -> Call:
        base = _linear_fn(layer)
        merged = id(layer) in self.canon.pad_of

        def call(inputs: tf.Tensor, *args: Any, **kwargs: Any) -> tf.Tensor:
            y = inner(inputs, *args, **kwargs)
            self.counts[kind] += 1
            x, fn = inputs, base
            if merged:
                pad = self.pads.get(id(inputs))
                if pad is None:
                    raise ConvscopeError(f"LRP expected layer {path!r} to read its padding layer's output, and it did not",
                                         "Call the model as built (its graph), or explain it with another method.")
                x, fn = pad[1], _padded(base, pad[2])
            bias = getattr(layer, "bias", None)
            lin = Layer(fn, tf.convert_to_tensor(layer.kernel), None if bias is None else tf.convert_to_tensor(bias), TF)
            rule = self._rule(kind, path)
            out = _attach(y, [inputs, x] if merged else [x],
                          lambda r: ([tf.zeros_like(inputs)] if merged else []) + [rule.relevance(lin, x, r)])
            if getattr(layer, "activation", None) is None or layer.activation.__name__ == "linear":
                self.sources[id(out)] = _Source(out, x, lin, rule, path, layer)
            return out

        return call

    def _norm(self, path: str, layer: keras.Layer, inner: Call, kind: str) -> Call:
        planned = self.canon.fold_into.get(id(layer)) if self.fold else None

        def call(inputs: tf.Tensor, *args: Any, **kwargs: Any) -> tf.Tensor:
            y = inner(inputs, *args, **kwargs)
            self.counts[kind] += 1
            if planned is not None:
                src = self.sources.get(id(inputs))
                if src is None or id(src.source) != planned:
                    raise ConvscopeError(f"LRP planned to fold batch norm {path!r} into the layer before it, which "
                                         "did not produce its input in this pass",
                                         "Call the model as built (its graph), or pass canonize=False.")
                folded = _fold(src.layer, src.source, layer)
                self.folded.append((src.path, path))
                return _attach(y, [inputs, src.x],
                               lambda r: [tf.zeros_like(inputs), src.rule.relevance(folded, src.x, r)])
            rule = self._rule("norm", path)
            if isinstance(rule, Pass):
                return _attach(y, [inputs], lambda r: [r])
            lin = Layer(lambda v, w, b: inner(v, *args, **kwargs), ops=TF)
            return _attach(y, [inputs], lambda r: [rule.relevance(lin, inputs, r)])

        return call

    def _pool(self, path: str, layer: keras.Layer, inner: Call, kind: str) -> Call:
        def call(inputs: tf.Tensor, *args: Any, **kwargs: Any) -> tf.Tensor:
            y = inner(inputs, *args, **kwargs)
            self.counts[kind] += 1
            rule = self._rule("pool", path)
            lin = Layer(lambda v, w, b: inner(v, *args, **kwargs), ops=TF)
            return _attach(y, [inputs], lambda r: [rule.relevance(lin, inputs, r)])

        return call

    def _sum(self, path: str, layer: keras.Layer, inner: Call, kind: str) -> Call:
        rule = self.composite.sum
        if not isinstance(rule, Epsilon):
            raise ConvscopeError(f"the composite's rule for sums is {rule!r}",
                                 "Sums take Norm() or Epsilon(...) (relevance by each term's share).")

        def call(inputs: Sequence[tf.Tensor], *args: Any, **kwargs: Any) -> tf.Tensor:
            y = inner(inputs, *args, **kwargs)
            self.counts[kind] += 1
            xs = list(inputs)
            z = tf.stop_gradient(y)

            def backward(r: tf.Tensor) -> list[tf.Tensor]:
                g = r / TF.stabilize(z, rule.epsilon)
                return [_sum_to(x * g, x) for x in xs]

            return _attach(y, xs, backward)

        return call

    def _pass(self, path: str, layer: keras.Layer, inner: Call, kind: str) -> Call:
        def call(inputs: tf.Tensor, *args: Any, **kwargs: Any) -> tf.Tensor:
            self.counts[kind] += 1
            return _attach(inner(inputs, *args, **kwargs), [inputs], lambda r: [r])

        return call


@contextmanager
def keras_lrp_rules(net: KerasNet, composite: Composite, canon: KerasCanon, fold: bool = True
                    ) -> Iterator[KerasLRPMode]:
    """Within the block, ``net``'s model back-propagates relevance by ``composite`` as ``canon``
    plans it (``fold``: batch norms folded into their convolutions); undone on exit."""
    for name in composite.names():
        net.layer(name)  # an unknown name fails here, naming close ones
    paths = net.paths()
    mode = KerasLRPMode(composite, canon, paths, fold)
    with ExitStack() as undo:
        for path, layer in paths.items():
            call = mode.wrap(path, layer, canon.kinds.get(id(layer), ""))
            if call is not None:
                undo.enter_context(patched(layer, "call", call))
        yield mode
