"""The Keras side of the method template, and the registry that dispatch reads.

``attribute`` = check the input -> convert the target(s) once (:func:`convscope.targets.as_targets`,
then :func:`~convscope.backends.tf.targets.scorer`) -> resolve ``wrt`` -> split the batch into
chunks of at most ``max_batch`` samples -> ``_compute`` each chunk -> concatenate. The heavy work
of ``_compute`` runs in ``tf.function``s cached on the model's
:class:`~convscope.backends.tf.model.KerasNet` under a key describing everything the graph
depends on; the values that change between calls (inputs, row indices, class indices) are fed.

:func:`implements` registers a Keras class as the implementation of a torch method class (and
as an ABC virtual subclass of it, so ``isinstance(GradCAM(keras_model), GradCAM)`` holds);
``Method.__new__`` dispatches through :func:`implementation_of`.

Example::

    @implements(Saliency)
    class KerasSaliency(KerasGradientMethod): ...
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import keras
import numpy as np
import tensorflow as tf

from convscope.backends.tf.batching import Batches
from convscope.backends.tf.model import KerasNet, LayerKey, Record, keras_net
from convscope.backends.tf.targets import Scorer, all_feeds, score_all, scorer
from convscope.errors import ConvscopeError
from convscope.methods.base import check_max_batch
from convscope.methods.batching import MaxBatch
from convscope.targets import TargetLike, as_targets

C = TypeVar("C", bound=type)
Wrt = LayerKey | None

_IMPLEMENTATIONS: dict[type, type] = {}


def implements(torch_cls: type) -> Callable[[C], C]:
    """Class decorator: the decorated class runs ``torch_cls`` on Keras models."""

    def add(cls: C) -> C:
        _IMPLEMENTATIONS[torch_cls] = cls
        cls.name = torch_cls.name  # type: ignore[attr-defined]
        torch_cls.register(cls)  # type: ignore[attr-defined]  # ABC virtual subclass
        return cls

    return add


def implementation_of(cls: type) -> type:
    """The Keras class registered for ``cls`` (exactly that class), else a clear error."""
    found = _IMPLEMENTATIONS.get(cls)
    if found is None:
        raise ConvscopeError(f"{cls.__name__} has no Keras implementation yet",
                             f"Methods that run on Keras models: {', '.join(supported_names())}.")
    return found


def supported_names() -> list[str]:
    """Registry names of the methods with a Keras implementation (wrappers such as AugSmooth have none)."""
    return [cls.name for cls in _IMPLEMENTATIONS if cls.name]


def as_input(x: object) -> tf.Tensor:
    """``x`` (numpy array or tf tensor, NHWC) as a float tensor with a batch dimension, else a clear error."""
    if type(x).__module__.startswith("torch"):
        raise ConvscopeError("the input is a torch tensor but the model is a Keras model",
                             "Pass a numpy array or tf tensor in the Keras layout [N, H, W, C], e.g. "
                             "x.permute(0, 2, 3, 1).numpy().")
    try:
        t = tf.convert_to_tensor(x)
    except (TypeError, ValueError) as error:
        raise ConvscopeError(f"the input (a {type(x).__name__}) cannot be converted to a tensor: {error}",
                             "Pass a numpy array or tf tensor [N, H, W, C].") from None
    if not t.dtype.is_floating:
        raise ConvscopeError(f"the input has dtype {t.dtype.name}; attribution needs a floating-point input",
                             "Convert it, e.g. x.astype('float32') / 255.")
    if t.shape.rank is None or t.shape.rank < 1 or t.shape[0] == 0:
        raise ConvscopeError(f"the input of shape {t.shape.as_list()} holds no samples",
                             "Pass a batch with at least one sample, e.g. x[None] for one image.")
    return t


def _plain(target: Any) -> Any:
    """An integer tf tensor as a numpy array (the API edge, :func:`~convscope.targets.as_target`,
    makes a Class of numpy and Python integers)."""
    if tf.is_tensor(target) and np.asarray(target).dtype.kind in "iu":
        return np.asarray(target)
    return target


def rows_of(r: slice) -> tf.Tensor:
    """The user-batch rows of a chunk as an int32 tensor."""
    return tf.range(r.start, r.stop, dtype=tf.int32)


def concat(parts: list[list[tf.Tensor]], count: int) -> list[tf.Tensor]:
    """Per output ``i``: the chunks' ``parts[k][i]`` concatenated on the batch axis."""
    return [parts[0][i] if len(parts) == 1 else tf.concat([p[i] for p in parts], 0) for i in range(count)]


@dataclass(frozen=True)
class Chunk:
    """Pairs ``(sample[i], k[i])`` of an expanded evaluation; ``segment`` numbers the samples from
    ``first`` (for per-sample sums inside a compiled function), ``segments`` counts them."""

    sample: np.ndarray
    k: np.ndarray

    @property
    def first(self) -> int:
        return int(self.sample[0])

    @property
    def segment(self) -> tf.Tensor:
        return tf.constant(self.sample - self.first, tf.int32)

    @property
    def segments(self) -> tf.Tensor:
        return tf.constant(int(self.sample[-1]) - self.first + 1, tf.int32)


def keras_wrapped(method: Any, use: type, example: str, wrapping: str) -> KerasMethod:
    """What a Keras wrapper wraps (:func:`convscope.methods.base.wrapped_method`), which must be a
    method on a Keras model (``wrapping`` shows how to build one)."""
    from convscope.methods.base import wrapped_method

    method = wrapped_method(method, use, (KerasMethod,), example)
    if not isinstance(method, KerasMethod):
        raise ConvscopeError(f"{type(method).__name__} is not a method on a Keras model",
                             f"Wrap a method built on the same Keras model, e.g. {wrapping}.")
    return method


class KerasMethod(ABC):
    """An attribution method on a Keras model: ``Method(model, max_batch=...).attribute(x, target, wrt)``."""

    backend: ClassVar[str] = "tf"
    name: ClassVar[str] = ""
    expands: ClassVar[bool] = False  # True: _compute gets all rows and chunks its own evaluations

    def __init__(self, model: keras.Model, *, max_batch: MaxBatch = None) -> None:
        if not isinstance(model, keras.Model):
            raise ConvscopeError(f"the model is a {type(model).__name__}, not a Keras model",
                                 "Pass a keras.Model (functional, Sequential or subclassed).")
        self.model = model
        self.max_batch = check_max_batch(max_batch)

    @property
    def net(self) -> KerasNet:
        return keras_net(self.model)

    def attribute(self, x: Any, target: TargetLike | None = None, wrt: Wrt = None, *,
                  targets: Sequence[TargetLike] | None = None) -> tf.Tensor | list[tf.Tensor]:
        """The attribution of ``target`` per sample, shaped like ``x`` (or like layer ``wrt``'s
        output), NHWC. With ``targets=[...]``: one map per target, from one forward pass per chunk."""
        return self._run(x, target, wrt, targets, self._attribute)

    def _run(self, x: Any, target: TargetLike | None, wrt: Wrt, targets: Sequence[TargetLike] | None,
             body: Callable[[tf.Tensor, list[Scorer], str | None], list[Any]]) -> Any:
        x = as_input(x)
        found, many = as_targets(_plain(target), None if targets is None else [_plain(t) for t in targets],
                                 int(x.shape[0]))
        scorers = [scorer(t, self.net) for t in found]
        layer = None if wrt is None or (isinstance(wrt, str) and wrt == "input") else self.net.path(wrt)
        results = body(x, scorers, layer)
        return results if many else results[0]

    def _attribute(self, x: tf.Tensor, scorers: list[Scorer], wrt: str | None) -> list[tf.Tensor]:
        if self.expands:
            return self._compute(x, rows_of(slice(0, int(x.shape[0]))), scorers, wrt)
        parts = [p for _, p in Batches(self.max_batch).map(
            int(x.shape[0]), lambda r: self._compute(x[r.start:r.stop], rows_of(r), scorers, wrt))]
        return concat(parts, len(scorers))

    @abstractmethod
    def _compute(self, x: tf.Tensor, rows: tf.Tensor, scorers: list[Scorer], wrt: str | None) -> list[tf.Tensor]:
        """One map per target for the samples ``x`` (``rows``: their rows in the user's batch)."""

    def compiled(self, key: Hashable, build: Callable[[], Callable[..., Any]], scorers: list[Scorer],
                 *args: Any) -> Any:
        """Call the compiled ``build()`` (cached under ``key``) with ``args`` and the scorers' feeds,
        then check the fed class indices against the model's output."""
        feeds = tuple(tf.constant(f) for f in all_feeds(scorers))
        out = self.net.function((type(self).__name__, key, tuple(s.key() for s in scorers)), build)(*args, feeds)
        classes = self.net.output_shape[-1] if self.net.output_shape else None
        for s in scorers:
            s.check(classes)
        return out

    def accumulate(self, n: int, per: int, run: Callable[[Chunk], list[tf.Tensor]],
                   max_batch: MaxBatch = None) -> list[tf.Tensor]:
        """Per output, the sum over the ``per`` evaluations of each of ``n`` samples.

        The ``n * per`` pairs (sample-major) are split into chunks of at most ``max_batch`` (default:
        the method's);
        ``run(chunk)`` returns, per output, the chunk's sums per sample ``[chunk.segments, ...]``
        (``tf.math.unsorted_segment_sum`` over ``chunk.segment``).
        """
        sums: list[tf.Tensor] = []
        batches = Batches(self.max_batch if max_batch is None else max_batch)
        for _, (chunk, parts) in batches.map(n * per, lambda r: self._chunk(r, per, run)):
            if not sums:
                sums = [tf.zeros([n, *p.shape[1:]], p.dtype) for p in parts]
            index = tf.range(chunk.first, chunk.first + int(parts[0].shape[0]))[:, None]
            sums = [tf.tensor_scatter_nd_add(total, index, p) for total, p in zip(sums, parts)]
        return sums

    @staticmethod
    def _chunk(items: slice, per: int, run: Callable[[Chunk], list[tf.Tensor]]) -> tuple[Chunk, list[tf.Tensor]]:
        idx = np.arange(items.start, items.stop)
        chunk = Chunk(idx // per, idx % per)
        return chunk, run(chunk)

    # --- the attributed tensor: the input (wrt=None) or the output of layer wrt ---------------------

    def values(self, x: tf.Tensor, wrt: str | None) -> tf.Tensor:
        """The attributed tensor at inputs ``x`` (chunked by ``max_batch``)."""
        if wrt is None:
            return x
        net = self.net

        def build() -> Callable[..., Any]:
            return lambda x, feeds: net.run(x, [wrt]).acts[wrt]

        parts = [[v] for _, v in Batches(self.max_batch).map(
            int(x.shape[0]), lambda r: self.compiled(("value", wrt), build, [], x[r.start:r.stop]))]
        return concat(parts, 1)[0]

    def scores(self, x: tf.Tensor, rows: tf.Tensor, value: tf.Tensor, scorers: list[Scorer],
               wrt: str | None, *, spread: bool = False) -> list[tf.Tensor]:
        """Each target's score (no gradients) with the attributed tensor set to ``value``, chunked.
        ``spread``: ``value`` is one sample ``[1, ...]`` shared by every row of ``rows``."""
        net = self.net
        layers = tuple(dict.fromkeys(layer for s in scorers for layer in s.layers))

        def build() -> Callable[..., Any]:
            def fn(x: tf.Tensor, rows: tf.Tensor, value: tf.Tensor, feeds: tuple[tf.Tensor, ...]) -> list[tf.Tensor]:
                record = net.run(value if wrt is None else x, layers, replace=None if wrt is None else {wrt: value})
                if spread:
                    record = spread_record(record, tf.shape(rows)[0])
                return score_all(scorers, record, rows, feeds)

            return fn

        if spread:
            return self.compiled(("score", wrt, True), build, scorers, x[:1], rows, value)
        parts = [p for _, p in Batches(self.max_batch).map(int(value.shape[0]), lambda r: self.compiled(
            ("score", wrt, False), build, scorers, x[r.start:r.stop], rows[r.start:r.stop], value[r.start:r.stop]))]
        return concat(parts, len(scorers))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model.name!r}, max_batch={self.max_batch!r})"


def spread_record(record: Record, n: tf.Tensor) -> Record:
    """A one-sample record repeated ``n`` times (one model evaluation shared by ``n`` rows)."""

    def spread(t: tf.Tensor) -> tf.Tensor:
        return tf.repeat(t, n, axis=0)

    return Record(spread(record.output), {k: spread(v) for k, v in record.acts.items()})
