"""convscope's targets scored on a Keras forward pass (channels-last).

:func:`scorer` turns a :class:`~convscope.targets.Target` (read through its fields) into a
:class:`Scorer` for a recorded Keras pass, with the same formulas as the torch targets:

- ``Class(k)``: ``out[n, k_n]``; ``Channel(l, c, reduce)``: ``reduce_pos act[n, ..., c]``;
- ``Neuron(l, c, y, x)``: ``act[n, y, x, c]``; ``MaxNeuron(l, c, rank)``: ``a**2 / 2`` of the
  ``rank``-th strongest unit of ``act[n, ..., c]`` (ties: first in row-major order, ``tf.math.top_k``
  is stable); ``Direction(l, v)``: ``sum_c v_c sum_pos act[n, pos, c]``;
- a callable gets the Keras output; numbers and ``+ - *`` combine as in torch.

Values that change between calls (class indices, direction vectors) are fed to the compiled
function as tensors (:meth:`Scorer.feeds`), so a new class does not retrace; :meth:`Scorer.key`
describes the rest (a callable target is part of the key: pass the same function object again
to reuse its compiled graph). ``rows`` gives each sample's row in the user's batch (per-sample classes).

Example::

    s = scorer(Class([3, 0]) - 0.5 * Channel("block5_conv3", 12))
    score = s.score(record, rows, iter(feeds))          # [n], inside a tf.function
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from convscope import targets as T
from convscope.errors import ConvscopeError
from convscope.targets import is_keras_layer

if TYPE_CHECKING:
    from convscope.backends.tf.model import KerasNet, Record

Feeds = Iterator[tf.Tensor]


class Scorer(ABC):
    """One score per sample from a Keras :class:`~convscope.backends.tf.model.Record`."""

    layers: tuple[str, ...] = ()

    def key(self) -> Hashable:
        """What the compiled graph depends on (not the fed values)."""
        return (type(self).__name__,)

    def feeds(self) -> list[np.ndarray]:
        """Values passed to the compiled function, consumed in order by :meth:`score`."""
        return []

    def check(self, classes: int | None) -> None:
        """A clear error if a fed value does not fit a model with ``classes`` outputs."""

    @abstractmethod
    def score(self, record: Record, rows: tf.Tensor, feeds: Feeds) -> tf.Tensor:
        """The per-sample scores ``[n]``."""


class _Class(Scorer):
    def __init__(self, target: T.Class) -> None:
        self.index = target.index.numpy().astype(np.int32)

    def key(self) -> Hashable:
        return ("class", self.index.ndim)

    def feeds(self) -> list[np.ndarray]:
        return [self.index]

    def check(self, classes: int | None) -> None:
        bad = self.index[(self.index < 0) | (self.index >= (classes or np.iinfo(np.int32).max))]
        if bad.size:
            raise ConvscopeError(f"class index {int(bad.flat[0])} is out of range for {classes} classes",
                                 f"Use an index in 0..{(classes or 1) - 1}.")

    def score(self, record: Record, rows: tf.Tensor, feeds: Feeds) -> tf.Tensor:
        out, index = record.output, next(feeds)
        if out.shape.rank != 2:
            raise ConvscopeError(f"a Class target needs a model output of shape [N, classes], got "
                                 f"{out.shape.as_list()}",
                                 "Use a Channel/Neuron target or a callable target for other outputs.")
        index = tf.clip_by_value(index, 0, tf.shape(out)[1] - 1)  # out of range: reported by check()
        if self.index.ndim == 0:
            return tf.gather(out, index, axis=1)
        return tf.gather(out, tf.gather(index, rows), axis=1, batch_dims=1)


class _LayerScorer(Scorer):
    def __init__(self, target: T.Channel | T.Neuron | T.MaxNeuron | T.Direction, net: KerasNet) -> None:
        if not isinstance(target.layer, str) and not is_keras_layer(target.layer):
            raise ConvscopeError(f"the target names layer {target.layer!r}, which is not a Keras layer or its name",
                                 "Name Keras layers by their name, e.g. Channel('block5_conv3', 7).")
        self.layer = net.channels_last(target.layer)  # its path: records are keyed by paths
        self.layers = (self.layer,)

    def act(self, record: Record) -> tf.Tensor:
        return record.acts[self.layer]

    def feature_map(self, record: Record, channel: int) -> tf.Tensor:
        """``act[..., channel]`` flattened to ``[n, positions]`` in row-major order."""
        act = self.act(record)
        size = act.shape[-1] if act.shape.rank and act.shape.rank >= 2 else 0
        if not 0 <= channel < (size or 0):
            raise ConvscopeError(f"channel {channel} is out of range: layer {self.layer!r} has {size} channels "
                                 f"(output shape {act.shape.as_list()})", f"Use a channel in 0..{(size or 1) - 1}.")
        positions = int(np.prod(act.shape[1:-1])) if act.shape[1:-1].is_fully_defined() else -1
        return tf.reshape(act[..., channel], [-1, positions])


class _Channel(_LayerScorer):
    def __init__(self, target: T.Channel, net: KerasNet) -> None:
        super().__init__(target, net)
        self.channel, self.reduce = target.channel, target.reduce

    def key(self) -> Hashable:
        return ("channel", self.layer, self.channel, self.reduce)

    def score(self, record: Record, rows: tf.Tensor, feeds: Feeds) -> tf.Tensor:
        fmap = self.feature_map(record, self.channel)
        if self.reduce == "sum":
            return tf.reduce_sum(fmap, 1)
        if self.reduce == "mean":
            return tf.reduce_mean(fmap, 1)
        return strongest(fmap, 0)  # one unit gets the gradient, the first maximum, as in torch


def strongest(fmap: tf.Tensor, rank: int) -> tf.Tensor:
    """The ``rank``-th largest value of each row of ``fmap`` ``[n, positions]`` (ties: lower index first)."""
    if fmap.shape[1] is not None and not rank < fmap.shape[1]:
        raise ConvscopeError(f"asked for the {rank + 1} strongest positions of a feature map with {fmap.shape[1]}",
                             f"Ask for 1..{fmap.shape[1]}.")
    index = tf.math.top_k(tf.stop_gradient(fmap), k=rank + 1, sorted=True).indices[:, rank]
    return tf.gather(fmap, index[:, None], batch_dims=1)[:, 0]


class _Neuron(_LayerScorer):
    def __init__(self, target: T.Neuron, net: KerasNet) -> None:
        super().__init__(target, net)
        self.channel, self.position = target.channel, target.position

    def key(self) -> Hashable:
        return ("neuron", self.layer, self.channel, self.position)

    def score(self, record: Record, rows: tf.Tensor, feeds: Feeds) -> tf.Tensor:
        act = self.act(record)
        self.feature_map(record, self.channel)  # validates the channel
        space = act.shape.as_list()[1:-1]
        if len(space) != len(self.position) or any(not 0 <= p < (s or p + 1) for p, s in zip(self.position, space)):
            raise ConvscopeError(f"Neuron position {self.position} does not fit layer {self.layer!r} with spatial "
                                 f"shape {space}", f"Give {len(space)} coordinates, each within {space}.")
        return act[(slice(None), *self.position, self.channel)]


class _MaxNeuron(_LayerScorer):
    def __init__(self, target: T.MaxNeuron, net: KerasNet) -> None:
        super().__init__(target, net)
        self.channel, self.rank = target.channel, target.rank

    def key(self) -> Hashable:
        return ("max_neuron", self.layer, self.channel, self.rank)

    def score(self, record: Record, rows: tf.Tensor, feeds: Feeds) -> tf.Tensor:
        a = strongest(self.feature_map(record, self.channel), self.rank)
        return 0.5 * a * a


class _Direction(_LayerScorer):
    def __init__(self, target: T.Direction, net: KerasNet) -> None:
        super().__init__(target, net)
        self.vector = target.vector.numpy().astype(np.float32)

    def key(self) -> Hashable:
        return ("direction", self.layer, len(self.vector))

    def feeds(self) -> list[np.ndarray]:
        return [self.vector]

    def score(self, record: Record, rows: tf.Tensor, feeds: Feeds) -> tf.Tensor:
        act, vector = self.act(record), next(feeds)
        if act.shape.rank is None or act.shape.rank < 2 or act.shape[-1] != len(self.vector):
            raise ConvscopeError(f"Direction vector has {len(self.vector)} entries but layer {self.layer!r} has "
                                 f"output shape {act.shape.as_list()}",
                                 "Give one weight per channel (the last dimension of the layer's output).")
        flat = tf.reshape(act, [-1, int(np.prod(act.shape[1:-1])), act.shape[-1]])
        return tf.reduce_sum(tf.reduce_sum(flat, 1) * tf.cast(vector, act.dtype), 1)


class _Function(Scorer):
    def __init__(self, target: T.FunctionTarget) -> None:
        self.fn = target.fn

    def key(self) -> Hashable:
        return ("function", self.fn)

    def score(self, record: Record, rows: tf.Tensor, feeds: Feeds) -> tf.Tensor:
        value = self.fn(record.output)
        if not tf.is_tensor(value) or value.shape.rank is None or value.shape.rank > 2 or \
                (value.shape.num_elements() is not None and record.output.shape[0] is not None
                 and value.shape.num_elements() != record.output.shape[0]):
            shape = value.shape.as_list() if tf.is_tensor(value) else type(value).__name__
            raise ConvscopeError(f"the target function returned {shape}, not one score per sample",
                                 "Return a tensor of shape [N], e.g. lambda out: out[:, 3].")
        return tf.reshape(value, [-1])


class _Constant(Scorer):
    def __init__(self, value: float) -> None:
        self.value = value

    def key(self) -> Hashable:
        return ("constant", self.value)

    def score(self, record: Record, rows: tf.Tensor, feeds: Feeds) -> tf.Tensor:
        return tf.fill([tf.shape(record.output)[0]], tf.constant(self.value, record.output.dtype))


_OPS: dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = {"+": operator.add, "-": operator.sub,
                                                                 "*": operator.mul}


class _Combined(Scorer):
    def __init__(self, symbol: str, left: Scorer, right: Scorer) -> None:
        self.symbol, self.left, self.right = symbol, left, right
        self.layers = tuple(dict.fromkeys(left.layers + right.layers))

    def key(self) -> Hashable:
        return ("combined", self.symbol, self.left.key(), self.right.key())

    def feeds(self) -> list[np.ndarray]:
        return self.left.feeds() + self.right.feeds()

    def check(self, classes: int | None) -> None:
        self.left.check(classes)
        self.right.check(classes)

    def score(self, record: Record, rows: tf.Tensor, feeds: Feeds) -> tf.Tensor:
        left = self.left.score(record, rows, feeds)
        return _OPS[self.symbol](left, self.right.score(record, rows, feeds))


def scorer(target: T.Target, net: KerasNet) -> Scorer:
    """The Keras scorer of a convscope target (layer names resolved on ``net``)."""
    kinds: dict[type, Callable[[], Scorer]] = {
        T.Class: lambda: _Class(target),  # type: ignore[arg-type]
        T.Channel: lambda: _Channel(target, net),  # type: ignore[arg-type]
        T.Neuron: lambda: _Neuron(target, net),  # type: ignore[arg-type]
        T.MaxNeuron: lambda: _MaxNeuron(target, net),  # type: ignore[arg-type]
        T.Direction: lambda: _Direction(target, net),  # type: ignore[arg-type]
        T.FunctionTarget: lambda: _Function(target),  # type: ignore[arg-type]
    }
    if type(target) in kinds:
        return kinds[type(target)]()
    constant = T._Constant
    combined = T._Combined
    if isinstance(target, constant):
        return _Constant(target.value)
    if isinstance(target, combined):
        return _Combined(target.symbol, scorer(target.left, net), scorer(target.right, net))
    raise ConvscopeError(f"the target {target!r} has no Keras form",
                         "On Keras models use Class, Channel, Neuron, MaxNeuron, Direction, their + - * "
                         "combinations, or a callable f(output) -> [N] written with TensorFlow ops.")


def score_all(scorers: list[Scorer], record: Record, rows: tf.Tensor, feeds: tuple[tf.Tensor, ...]) -> list[tf.Tensor]:
    """Every scorer's scores from one record (the feeds of all scorers, in order)."""
    it = iter(feeds)
    return [s.score(record, rows, it) for s in scorers]


def all_feeds(scorers: list[Scorer]) -> tuple[np.ndarray, ...]:
    """The feeds of ``scorers``, concatenated in order."""
    return tuple(f for s in scorers for f in s.feeds())
