"""convscope's targets on a Keras model: what is TensorFlow's alone (the scores themselves are the
ones of :mod:`convscope.targets`, written once with the backend's tensor ops, read channels-last).

A :class:`KerasTargets` is made once per call: it resolves the layers the targets name (Keras
layer names, paths or layer objects) to the paths a recorded pass is keyed by, and collects the
targets' *feeds* (class indices, direction vectors), which a compiled function takes as tensors
so that a new class does not retrace; :meth:`KerasTargets.key` describes the rest (a callable
target is part of it: pass the same function object again to reuse its compiled graph).

Example::

    found = KerasTargets([Class([3, 0]) - 0.5 * Channel("block5_conv3", 12)], net)
    scores = found.score(found.targets, record, rows, feeds)   # inside a tf.function
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

import tensorflow as tf

from convscope import targets as T
from convscope.backends.tf import tensors
from convscope.errors import ConvscopeError
from convscope.targets import Target, is_keras_layer

if TYPE_CHECKING:
    from convscope.backends.tf.model import KerasNet, Record


class KerasTargets:
    """The targets of one call on ``net``: their layers' paths, their key and their feeds."""

    def __init__(self, targets: list[Target], net: KerasNet) -> None:
        self.targets = targets
        self.paths: dict[Any, str] = {}
        for t in targets:
            if t.key(lambda layer: layer) is None:  # written for PyTorch only
                raise ConvscopeError(f"the target {t!r} has no Keras form",
                                     "On Keras models use Class, Channel, Neuron, MaxNeuron, Direction, their + - * "
                                     "combinations, or a callable f(output) -> [N] written with TensorFlow ops.")
            for layer in t.layers():
                if not isinstance(layer, str) and not is_keras_layer(layer):
                    raise ConvscopeError(f"the target names layer {layer!r}, which is not a Keras layer or its name",
                                         "Name Keras layers by their name, e.g. Channel('block5_conv3', 7).")
                self.paths[layer] = net.channels_last(layer)  # records are keyed by paths
        fed = {id(t): (t, value) for target in targets for t, value in target.feeds()}  # a target used twice: once
        self.slots = {key: i for i, key in enumerate(fed)}
        self.values = tuple(value for _, value in fed.values())
        self.feeds: tuple[tf.Tensor, ...] | None = None  # symbolic while a compiled function traces

    def key(self) -> Hashable:
        """What a compiled graph of these targets depends on (not the fed values)."""
        return tuple(t.key(self.paths.__getitem__) for t in self.targets)

    def check(self, classes: int | None) -> None:
        """A clear error if a fed value does not fit a model with ``classes`` outputs."""
        for t in self.targets:
            t.check(classes)

    def _feed(self, target: Target, value: Any) -> tf.Tensor:
        slot = self.slots[id(target)]
        return self.feeds[slot] if self.feeds is not None else tf.constant(self.values[slot])

    def score(self, targets: Sequence[Target], record: Record, rows: tf.Tensor) -> list[tf.Tensor]:
        """Each of ``targets``' scores from one recorded pass (``rows``: each sample's row in the user's batch)."""
        acts = {**record.acts, **{key: record.acts[path] for key, path in self.paths.items()}}
        seen = T.Record(record.output, acts, rows, ops=tensors, feed=self._feed)
        return [t.score(seen) for t in targets]
