"""The Keras engine of the backend protocol (:mod:`convscope.backends.protocol`).

A :class:`KerasEngine` lives for one ``attribute`` call. Its forward passes call the model
(``training=False``) through :meth:`~convscope.backends.tf.model.KerasNet.run`, recording the
probed layers (or replacing one), inside a ``tf.GradientTape`` when gradients are wanted; the
targets score themselves on it with the Keras tensor ops (:class:`~convscope.backends.tf.targets.KerasTargets`
resolves their layers and feeds them).

:meth:`KerasEngine.compiled` turns a method's per-chunk function into a ``tf.function``, cached
on the model's :class:`~convscope.backends.tf.model.KerasNet` (so every method object of the
same configuration shares it) and traced once for every batch size. The values that change
between calls (class indices, direction vectors: the targets' *feeds*) are fed as tensors, so a
new class does not retrace; the key holds everything else the graph depends on. The traced
function keeps a model-less copy of the method (the model is held weakly by ``KerasNet``).

Random draws and masks are the torch backend's CPU draws, moved to channels-last
(:meth:`KerasEngine.plan`), so a Keras model and its PyTorch twin see the same numbers.

Example::

    with BACKEND.engine(method, x, targets, wrt=None, layers=[], rules=None) as engine:
        maps = engine.compiled(("saliency",), method._maps)(x, engine.rows(slice(0, len(x))))
"""

from __future__ import annotations

import copy
import types
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np
import tensorflow as tf
import torch

from convscope.backends.protocol import Chunk
from convscope.backends.tf import tensors
from convscope.backends.tf.batching import Batches
from convscope.backends.tf.layout import channels_first_shape, channels_last
from convscope.backends.tf.model import KerasNet, Record
from convscope.backends.tf.targets import KerasTargets
from convscope.backends.torch.batching import MaxBatch
from convscope.backends.torch.draws import gaussian_draws
from convscope.rules import RuleMap
from convscope.targets import Target

T = TypeVar("T")
_DEFAULT: Any = object()


@dataclass
class KerasRun:
    """One forward pass (:class:`convscope.backends.protocol.Run`)."""

    record: Record
    value: tf.Tensor
    scores: list[tf.Tensor]
    tape: tf.GradientTape | None
    totals: list[tf.Tensor]  # each score summed over the batch, recorded by the tape

    def act(self, key: Hashable) -> tf.Tensor:
        return self.record.acts[key]  # type: ignore[index]

    def gradients(self, i: int, wrt: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        assert self.tape is not None, "gradients need forward(..., grad=True)"
        return self.tape.gradient(self.totals[i], list(wrt), unconnected_gradients=tf.UnconnectedGradients.ZERO)


def detached(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` bound to a copy of its method without the model (for closures cached with the model's
    compiled functions, which must not keep it alive)."""
    if isinstance(fn, partial):
        return partial(detached(fn.func), *fn.args, **fn.keywords)
    owner = getattr(fn, "__self__", None)
    if owner is None or not hasattr(owner, "model"):
        return fn
    twin = copy.copy(owner)
    twin.model = None
    return types.MethodType(fn.__func__, twin)  # type: ignore[attr-defined]


class KerasEngine:
    """The engine of one call on a Keras model (see the module docstring)."""

    ops = tensors
    plan_device = torch.device("cpu")
    inputs = None  # one input tensor, no forward arguments (see KerasBackend.inputs)

    def __init__(self, net: KerasNet, targets: list[Target], wrt: str | None, layers: Sequence[str],
                 max_batch: MaxBatch) -> None:
        self.net = net
        self.targets = targets
        self.found = KerasTargets(targets, net)
        self.wrt = wrt
        self.layers = tuple(dict.fromkeys([*self.found.paths.values(), *layers, *([wrt] if wrt is not None else [])]))
        self.max_batch = max_batch

    def rows(self, r: slice) -> tf.Tensor:
        return tf.range(r.start, r.stop, dtype=tf.int32)

    def evaluations(self, work: int) -> None:
        """Nothing to decide: every evaluation runs on the model's compiled functions."""

    def local(self, value: tf.Tensor, window: tuple[int, int], mode: bool | str, tau: float | None = None
              ) -> tuple[None, None]:
        """No incremental evaluation on Keras: every evaluation is a plain forward pass."""
        return None, None

    def forward(self, x: tf.Tensor, rows: tf.Tensor, *, grad: bool = False,
                replace: tuple[str | None, tf.Tensor] | None = None, fast: bool = False,
                targets: Sequence[Target] | None = None, rules: RuleMap | None = None) -> KerasRun:
        found = self.targets if targets is None else targets
        inputs = replace[1] if replace is not None and replace[0] is None else x
        layered = {replace[0]: replace[1]} if replace is not None and replace[0] is not None else None
        tape, totals = None, []
        if grad:
            with tf.GradientTape(persistent=len(found) > 1) as tape:
                tape.watch(inputs if layered is None else [inputs, replace[1]])  # type: ignore[index]
                record = self.net.run(inputs, self.layers, rules=rules, replace=layered)
                scores = self.found.score(found, record, rows)
                totals = [tf.reduce_sum(s) for s in scores]
        else:
            record = self.net.run(inputs, self.layers, replace=layered)
            scores = self.found.score(found, record, rows)
        if replace is not None:
            value = replace[1]
        else:
            value = inputs if self.wrt is None else record.acts[self.wrt]
        return KerasRun(record, value, scores, tape, totals)

    def compiled(self, key: Hashable, fn: Callable[..., T]) -> Callable[..., T]:
        owner = getattr(fn.func if isinstance(fn, partial) else fn, "__self__", None)
        full = (type(owner).__qualname__, key, self.found.key(), self.wrt, self.layers)

        def build() -> Callable[..., Any]:
            inner = detached(fn)

            def traced(feeds: tuple[tf.Tensor, ...], *args: Any) -> Any:
                self.found.feeds = feeds
                try:
                    return inner(self, *args)
                finally:
                    self.found.feeds = None

            return traced

        function = self.net.function(full, build)

        def call(*args: Any) -> Any:
            out = function(tuple(tf.constant(value) for value in self.found.values), *args)
            self.found.check(self.net.output_shape[-1] if self.net.output_shape else None)
            return out

        return call

    def evaluate(self, x: tf.Tensor, rows: tf.Tensor, *, replace: tuple[str | None, tf.Tensor] | None = None,
                 targets: Sequence[Target] | None = None, spread: bool = False) -> list[tf.Tensor]:
        found = list(self.targets if targets is None else targets)
        picks = tuple(next(i for i, known in enumerate(self.targets) if known is t) for t in found)
        layer = None if replace is None else replace[0]
        value = x if replace is None else replace[1]
        fn = self.compiled(("evaluate", layer, picks, spread), partial(_evaluate, layer, picks, spread))
        return fn(x[:1] if spread else x, rows, value[:1] if spread else value)

    def values(self, x: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        if self.wrt is None:
            return x
        fn = self.compiled(("value",), _value)
        return tensors.cat([v for _, v in self.batches().map(int(x.shape[0]), lambda r: fn(x[r.start:r.stop]))])

    def scores(self, x: tf.Tensor, rows: tf.Tensor, value: tf.Tensor,
               targets: Sequence[Target] | None = None) -> list[tf.Tensor]:
        count = len(self.targets if targets is None else targets)
        parts = [p for _, p in self.batches().map(int(value.shape[0]), lambda r: self.evaluate(
            x[r.start:r.stop], rows[r.start:r.stop], replace=(self.wrt, value[r.start:r.stop]), targets=targets))]
        return [tensors.cat([p[i] for p in parts]) for i in range(count)]

    def batches(self, max_batch: MaxBatch = _DEFAULT) -> Batches:
        return Batches(self.max_batch if max_batch is _DEFAULT else max_batch)

    def expansion(self, r: slice, per: int, like: tf.Tensor) -> Chunk:
        idx = np.arange(r.start, r.stop)
        host, k = idx // per, idx % per
        return Chunk(tf.constant(host, tf.int32), tf.constant(k, tf.int32), host, k)

    def accumulate(self, n: int, per: int, run: Callable[[Chunk], list[tf.Tensor]], like: tf.Tensor,
                   max_batch: MaxBatch = _DEFAULT) -> list[tf.Tensor]:
        sums: list[tf.Tensor] = []
        for _, (chunk, parts) in self.batches(max_batch).map(n * per, lambda r: self._chunk(r, per, run, like)):
            if not sums:
                sums = [tf.zeros([n, *p.shape[1:]], p.dtype) for p in parts]
            sums = [tensors.index_add(total, chunk.sample, p) for total, p in zip(sums, parts)]
        return sums

    def _chunk(self, r: slice, per: int, run: Callable[[Chunk], list[tf.Tensor]], like: tf.Tensor
               ) -> tuple[Chunk, list[tf.Tensor]]:
        chunk = self.expansion(r, per, like)
        return chunk, run(chunk)

    def take_rows(self, rows: tf.Tensor, chunk: Chunk) -> tf.Tensor:
        return tf.gather(rows, chunk.sample)

    def gaussian(self, count: int, like: tf.Tensor, seed: int) -> tf.Tensor:
        draws = gaussian_draws(count, channels_first_shape(tuple(int(d) for d in like.shape[1:])), seed,
                               like=torch.empty(0))
        return self.plan(draws, like)

    def plan(self, t: torch.Tensor, like: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.constant(channels_last(t)), like.dtype)


def _value(engine: KerasEngine, x: tf.Tensor) -> tf.Tensor:
    """The attributed layer's output at ``x``."""
    return engine.net.run(x, [engine.wrt]).acts[engine.wrt]  # type: ignore[list-item]


def _evaluate(layer: str | None, picks: tuple[int, ...], spread: bool, engine: KerasEngine, x: tf.Tensor,
              rows: tf.Tensor, value: tf.Tensor) -> list[tf.Tensor]:
    """Targets ``picks``' scores with ``layer`` (None: the input) set to ``value`` (no gradients);
    ``spread``: one sample's evaluation shared by every row of ``rows``."""
    record = engine.net.run(value if layer is None else x, engine.layers,
                            replace=None if layer is None else {layer: value})
    if spread:
        n = tf.shape(rows)[0]
        record = Record(tf.repeat(record.output, n, axis=0), {k: tf.repeat(v, n, axis=0)
                                                              for k, v in record.acts.items()})
    return engine.found.score([engine.targets[i] for i in picks], record, rows)
