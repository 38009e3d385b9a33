"""Targets: what to explain. A target turns one forward pass into one score per sample.

Gradient methods back-propagate ``d score_n / d input``; the *seed* a target plants in a layer is
``d score / d activation``. All targets share one sign convention: bigger means "more of it".

- ``Class(k)``: the logit ``out[n, k]`` (``k`` may be one index per sample).
- ``Predicted()``: the logit of each sample's top class ``out[n, argmax_k out[n, k]]``, picked in
  the pass that scores it (no separate prediction pass; methods whose passes see changed inputs
  refuse it).
- ``Channel(layer, c, reduce)``: ``sum``/``mean``/``max`` of feature map ``c`` of ``layer``.
- ``Neuron(layer, c, y, x)``: the unit ``act[n, c, y, x]`` (``Neuron(layer, c)`` for a linear layer).
- ``MaxNeuron(layer, c, rank=0)``: ``1/2 * a**2`` of the strongest unit ``a`` of feature map
  ``c`` (or the ``rank``-th strongest), so the seed is the layer's activations with every other
  unit zeroed: the Zeiler-Fergus seed. Ties go to the first position in row-major order.
- ``Direction(layer, v)``: ``sum_c v[c] * sum_pos act[n, c, pos]``.
- ``Output()``: the model's one output per sample (``target=None``); ``Element((2, 3))``:
  ``out[n, 2, 3]`` of a multi-dimensional output (a tuple target).
- any callable ``f(output) -> Tensor[N]``.

Targets combine with ``+ - *`` (with numbers and other targets) and unary ``-``. An int or a
list of ints becomes a ``Class`` only at the API edge (:func:`as_target`); inside arithmetic a
number is a number.

Each score is written once with the backend's tensor ops (``record.ops``, the
:class:`~convscope.backends.protocol.Ops` of the record's framework: PyTorch channels-first by
default, Keras channels-last), so ``Channel(layer, c)`` reads ``act[:, c]`` on PyTorch and
``act[..., c]`` on Keras. Values that change between calls (class indices, direction vectors) are
the targets' *feeds* (:meth:`Target.feeds`): a score reads them through :meth:`Record.fed`, which
gives a compiled Keras function's input in their place, so a new class does not retrace;
:meth:`Target.key` describes the rest of what a compiled graph depends on.

Example::

    t = Class(3) - 0.5 * Channel("features.28", 12, reduce="mean")
    Saliency(model).attribute(x, t)
"""

from __future__ import annotations

import numbers
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from convscope.errors import ConvscopeError
from convscope.ops import tensors
from convscope.ops.structured import batch_size, describe, like_rows

_VISION_HINT = (" (a detector's or segmenter's output: convscope.targets_vision's Detection(label, box) or "
                "Region(label, box); on the command line --target with --box or --region)")

LayerKey = str | nn.Module


@dataclass(frozen=True)
class Record:
    """One forward pass as targets see it: the model ``output``, the recorded layer outputs
    ``acts`` (keyed as the targets name them), the ``rows`` of the full batch it covers and,
    where known, the ``input`` the model saw (regularizers such as total variation read it).

    ``ops`` are the tensor operations of the record's framework (PyTorch by default); ``feed``,
    where given, maps a target and one of its :meth:`Target.feeds` to the tensor that stands for it
    (a compiled Keras function's input)."""

    output: Tensor  # or a structured output (convscope.ops.structured): a dict, a list of per-sample dicts
    acts: Mapping[LayerKey, Tensor]
    rows: slice | Tensor
    input: Tensor | None = None
    ops: Any = tensors
    feed: Callable[[Target, Any], Any] | None = None

    def fed(self, target: Target, value: Any) -> Any:
        """``value``, a feed of ``target``, as its score reads it: itself, or the tensor fed in its place."""
        return value if self.feed is None else self.feed(target, value)


def is_keras_layer(obj: object) -> bool:
    """Whether ``obj`` is a Keras layer (checked by its class's module: Keras is never imported here)."""
    return any(c.__module__.split(".")[0] in ("keras", "tf_keras") and c.__name__ == "Layer" for c in type(obj).__mro__)


def _layer_label(layer: LayerKey) -> str:
    return layer if isinstance(layer, str) else type(layer).__name__


class Target(ABC):
    """Maps a :class:`Record` to one score per sample (shape ``[n]``)."""

    @abstractmethod
    def score(self, record: Record) -> Tensor:
        """The per-sample scores, shape ``[rows]``."""

    def layers(self) -> tuple[LayerKey, ...]:
        """The layers whose outputs :meth:`score` reads (the model output is always available)."""
        return ()

    def reads_output(self) -> bool:
        """Whether :meth:`score` reads the model's output; a target reading only :meth:`layers`
        (and the input) says False, and a forward pass may then end at its last layer."""
        return True

    def check_batch(self, n: int) -> None:  # noqa: B027 - most targets fit any batch
        """Raise a clear error if this target cannot apply to a batch of ``n`` samples."""

    def check(self, classes: int | None) -> None:  # noqa: B027 - most targets feed no class index
        """Raise a clear error if a fed value does not fit a model with ``classes`` outputs."""

    def feeds(self) -> list[tuple[Target, np.ndarray]]:
        """The values that change between calls, each with the target that reads it (:meth:`Record.fed`)."""
        return []

    def follows_pass(self) -> bool:
        """Whether the score picks what it scores from the pass itself (:class:`Predicted`): it
        means "the prediction" only where every scored pass sees the user's input unchanged."""
        return False

    def key(self, path: Callable[[LayerKey], Hashable]) -> Hashable | None:
        """What a compiled graph of this target depends on, its layers named by ``path``, its
        feeds left out; None: a target written for PyTorch only."""
        return None

    def __add__(self, other: object) -> Target:
        return _combine(operator.add, "+", self, other)

    def __radd__(self, other: object) -> Target:
        return _combine(operator.add, "+", other, self)

    def __sub__(self, other: object) -> Target:
        return _combine(operator.sub, "-", self, other)

    def __rsub__(self, other: object) -> Target:
        return _combine(operator.sub, "-", other, self)

    def __mul__(self, other: object) -> Target:
        return _combine(operator.mul, "*", self, other)

    def __rmul__(self, other: object) -> Target:
        return _combine(operator.mul, "*", other, self)

    def __neg__(self) -> Target:
        return _combine(operator.mul, "*", -1.0, self)


class Class(Target):
    """The logit of class ``index``: ``score_n = output[n, index_n]``.

    ``index`` is one int for every sample or one per sample. Example: ``Class([3, 0, 5])``.
    """

    def __init__(self, index: int | Sequence[int] | Tensor) -> None:
        idx = torch.as_tensor(index)
        if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.dim() > 1:
            raise ConvscopeError(f"Class index {index!r} is not an int or a list of ints",
                                 "Pass a class index like Class(3), or one per sample like Class([3, 0]).")
        self.index = idx.to(torch.long)

    def check_batch(self, n: int) -> None:
        if self.index.dim() == 1 and len(self.index) != n:
            raise ConvscopeError(f"Class got {len(self.index)} per-sample indices for a batch of {n} samples",
                                 "Give one class index per sample, or a single int for all of them.")

    def check(self, classes: int | None) -> None:
        bad = self.index[(self.index < 0) | (self.index >= (classes or torch.iinfo(torch.long).max))]
        if len(bad.reshape(-1)):
            raise ConvscopeError(f"class index {bad.reshape(-1)[0].item()} is out of range for {classes} classes",
                                 f"Use an index in 0..{(classes or 1) - 1}.")

    def feeds(self) -> list[tuple[Target, np.ndarray]]:
        return [(self, self.index.numpy().astype(np.int32))]

    def key(self, path: Callable[[LayerKey], Hashable]) -> Hashable:
        return ("class", self.index.dim())

    def score(self, record: Record) -> Tensor:
        out, ops = record.output, record.ops
        if not ops.is_tensor(out) or ops.rank(out) != 2:
            raise ConvscopeError(f"a Class target needs a model output of shape [N, classes], got {describe(out)}",
                                 "Use a Channel/Neuron target or a callable target for other outputs"
                                 f"{_VISION_HINT if not ops.is_tensor(out) else ''}.")
        self.check(out.shape[1])  # on Keras also after every call: the values fed then
        index = record.fed(self, self.index)
        return ops.pick(out, index if self.index.dim() == 0 else ops.take(index, record.rows))  # this chunk's rows

    def __repr__(self) -> str:
        return f"Class({self.index.tolist()!r})"


class Predicted(Target):
    """The logit of each sample's top class, picked in the pass that scores it:
    ``score_n = output[n, k_n]`` with ``k_n = argmax_k output[n, k]`` (ties: the first class).

    ``k_n`` is piecewise constant, so the gradient is ``Class(k_n)``'s: a method whose passes
    score the clean input (``Method.scores_input``, the gradient and gradient-CAM families)
    explains the predicted class from its own forward pass, as pytorch-grad-cam's
    ``targets=None`` does. Methods that score changed copies (noise, paths, masks) refuse it:
    each copy's top class could differ. Where the score runs eagerly (PyTorch), :meth:`classes`
    gives the classes picked, by row of the user's batch.

    Example: ``t = Predicted(); maps = GradCAM(model).attribute(x, t); t.classes()``.
    """

    def __init__(self) -> None:
        self._picked: dict[int, int] = {}

    def follows_pass(self) -> bool:
        return True

    def check_batch(self, n: int) -> None:
        self._picked.clear()  # a call begins: its picks replace the last call's

    def key(self, path: Callable[[LayerKey], Hashable]) -> Hashable:
        return ("predicted",)

    def score(self, record: Record) -> Tensor:
        out, ops = record.output, record.ops
        if not ops.is_tensor(out) or ops.rank(out) != 2:
            raise ConvscopeError(f"a Predicted target needs a model output of shape [N, classes], got "
                                 f"{describe(out)}", "Use a Channel/Neuron target or a callable target for other "
                                 f"outputs{_VISION_HINT if not ops.is_tensor(out) else ''}.")
        top = ops.top_k(ops.detach(out), 1)
        if isinstance(top, Tensor) and isinstance(record.rows, Tensor):  # eager PyTorch: remember the picks
            self._picked.update(zip(record.rows.tolist(), top[:, 0].tolist()))
        return ops.pick(out, top)[:, 0]

    def classes(self) -> list[int]:
        """The class picked for each row of the latest batch scored, in row order."""
        if not self._picked:
            raise ConvscopeError("Predicted().classes() has nothing to report: no eager pass scored it",
                                 "Read the classes after attribute(...) on a PyTorch model; on Keras the passes "
                                 "run compiled, so predict them with model(x).")
        return [self._picked[r] for r in sorted(self._picked)]

    def __repr__(self) -> str:
        return "Predicted()"


class Output(Target):
    """The model's one output per sample, ``score_n = output[n]`` (an output ``[N]`` or ``[N, 1]``):
    what ``target=None`` means. Example: ``IntegratedGradients(regressor).attribute(x)``."""

    def key(self, path: Callable[[LayerKey], Hashable]) -> Hashable:
        return ("output",)

    def score(self, record: Record) -> Tensor:
        out, ops = record.output, record.ops
        if ops.rank(out) > 2 or ops.rank(out) == 2 and out.shape[1] != 1:
            raise ConvscopeError(f"target=None needs a model with one output per sample ([N] or [N, 1]), got "
                                 f"{list(out.shape)}",
                                 "Name what to explain: a class index (target=3), an index into the output "
                                 "(target=(2, 3)), or a callable f(output) -> Tensor[N].")
        return ops.vector(out)

    def __repr__(self) -> str:
        return "Output()"


class Element(Target):
    """One element of a multi-dimensional output: ``score_n = output[n, *index]`` (what a tuple
    target means, as in Captum). Example: ``Element((2, 3))`` of an output ``[N, 4, 5]``."""

    def __init__(self, index: Sequence[int]) -> None:
        if not index or not all(_is_index(i) for i in index):
            raise ConvscopeError(f"target {tuple(index)!r} is not a tuple of ints",
                                 "Index the output per sample with a tuple of ints, e.g. target=(2, 3).")
        self.index = tuple(int(i) for i in index)

    def key(self, path: Callable[[LayerKey], Hashable]) -> Hashable:
        return ("element", self.index)

    def score(self, record: Record) -> Tensor:
        out = record.output
        shape = list(out.shape[1:])
        if len(shape) != len(self.index) or any(not -s <= i < s for i, s in zip(self.index, shape)):
            raise ConvscopeError(f"target {self.index} does not index an output of shape {list(out.shape)}",
                                 f"Give {len(shape)} indices within {shape} (a list [3, 0] is one class per sample).")
        return out[(slice(None), *self.index)]

    def __repr__(self) -> str:
        return f"Element({self.index})"


class _LayerTarget(Target):
    """A target reading feature map ``channel`` of one layer."""

    def __init__(self, layer: LayerKey, channel: int) -> None:
        if not isinstance(layer, (str, nn.Module)) and not is_keras_layer(layer):
            raise ConvscopeError(f"layer {layer!r} is not a layer name or module",
                                 "Name the layer by its qualified name, e.g. 'features.28'.")
        if isinstance(channel, bool) or not isinstance(channel, int):
            raise ConvscopeError(f"channel {channel!r} is not an int", "Pass a channel index such as 5.")
        self.layer = layer
        self.channel = channel

    def reads_output(self) -> bool:
        return False

    def layers(self) -> tuple[LayerKey, ...]:
        return (self.layer,)

    def feature_map(self, record: Record) -> Tensor:
        """``act[:, channel]`` (Keras: ``act[..., channel]``) flattened to ``[n, positions]`` in
        row-major order (one position for a linear layer)."""
        act, ops = record.acts[self.layer], record.ops
        size = act.shape[ops.channel_axis] if ops.rank(act) >= 2 else 0
        if not 0 <= self.channel < size:
            raise ConvscopeError(f"channel {self.channel} is out of range: layer {_layer_label(self.layer)!r} "
                                 f"has {size} channels (output shape {list(act.shape)})",
                                 f"Use a channel in 0..{size - 1}.")
        return ops.flat(ops.channel(act, self.channel))


Reduce = Literal["sum", "mean", "max"]


class Channel(_LayerTarget):
    """A whole feature map: ``score_n = reduce_pos act[n, c, pos]`` with ``reduce`` in sum/mean/max.

    Example: ``Channel("layer4", 17, reduce="mean")``.
    """

    def __init__(self, layer: LayerKey, channel: int, reduce: Reduce = "sum") -> None:
        super().__init__(layer, channel)
        if reduce not in ("sum", "mean", "max"):
            raise ConvscopeError(f"reduce={reduce!r} is not supported", "Use 'sum', 'mean' or 'max'.")
        self.reduce = reduce

    def key(self, path: Callable[[LayerKey], Hashable]) -> Hashable:
        return ("channel", path(self.layer), self.channel, self.reduce)

    def score(self, record: Record) -> Tensor:
        fmap, ops = self.feature_map(record), record.ops
        if self.reduce == "sum":
            return ops.sum(fmap, 1)
        if self.reduce == "mean":
            return ops.mean(fmap, 1)
        return ops.pick(fmap, ops.top_k(ops.detach(fmap), 1))[:, 0]  # one unit, the first maximum

    def __repr__(self) -> str:
        return f"Channel({self.layer!r}, {self.channel}, reduce={self.reduce!r})"


class Neuron(_LayerTarget):
    """One unit: ``score_n = act[n, c, *position]``; ``Neuron(layer, c)`` for a layer without space.

    Example: ``Neuron("features.28", 5, 3, 4)`` (row 3, column 4 of feature map 5).
    """

    def __init__(self, layer: LayerKey, channel: int, *position: int) -> None:
        super().__init__(layer, channel)
        if any(isinstance(p, bool) or not isinstance(p, int) for p in position):
            raise ConvscopeError(f"Neuron position {position!r} must be ints", "Write e.g. Neuron('conv1', 5, 3, 4).")
        self.position = tuple(position)

    def key(self, path: Callable[[LayerKey], Hashable]) -> Hashable:
        return ("neuron", path(self.layer), self.channel, self.position)

    def score(self, record: Record) -> Tensor:
        act, ops = record.acts[self.layer], record.ops
        self.feature_map(record)  # validates the channel
        space = [act.shape[axis] for axis in ops.space(act)]  # Keras: None where not known while tracing
        if len(space) != len(self.position) or any(not 0 <= p < (s or p + 1) for p, s in zip(self.position, space)):
            raise ConvscopeError(f"Neuron position {self.position} does not fit layer "
                                 f"{_layer_label(self.layer)!r} with spatial shape {space}",
                                 f"Give {len(space)} coordinates, each within {space}.")
        return ops.channel(act, self.channel)[(slice(None), *self.position)]

    def __repr__(self) -> str:
        return f"Neuron({self.layer!r}, {', '.join(map(str, (self.channel, *self.position)))})"


def strongest(fmap: Tensor, count: int, ops: Any = tensors) -> tuple[Tensor, Tensor]:
    """The ``count`` largest values of each row of ``fmap`` [n, positions] and their flat indices.

    Descending; ties keep row-major order (a stable sort), so the result never depends on chance.
    Gradients reach the values, not the choice of positions.
    """
    positions = fmap.shape[1]
    if positions is not None and not 1 <= count <= positions:
        raise ConvscopeError(f"asked for the {count} strongest positions of a feature map with {positions}",
                             f"Ask for 1..{positions}.")
    idx = ops.top_k(ops.detach(fmap), count)
    return ops.pick(fmap, idx), idx


class MaxNeuron(_LayerTarget):
    """The strongest unit ``a`` of feature map ``c`` in each image (``rank=k``: the k+1-th strongest):
    ``score_n = a**2 / 2``, whose seed ``d score / d act`` is the layer's activation ``a`` at that
    unit and 0 everywhere else - the Zeiler-Fergus seed.

    Example: ``DeconvNet(model).attribute(x, MaxNeuron("features.12", 7))``.
    """

    def __init__(self, layer: LayerKey, channel: int, rank: int = 0) -> None:
        super().__init__(layer, channel)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ConvscopeError(f"rank={rank!r} must be an int >= 0", "rank=0 is the strongest unit.")
        self.rank = rank

    def key(self, path: Callable[[LayerKey], Hashable]) -> Hashable:
        return ("max_neuron", path(self.layer), self.channel, self.rank)

    def score(self, record: Record) -> Tensor:
        values, _ = strongest(self.feature_map(record), self.rank + 1, record.ops)
        a = values[:, self.rank]
        return 0.5 * a * a

    def __repr__(self) -> str:
        return f"MaxNeuron({self.layer!r}, {self.channel}{f', rank={self.rank}' if self.rank else ''})"


class Direction(Target):
    """A direction in channel space: ``score_n = sum_c v[c] * sum_pos act[n, c, pos]``.

    Example: ``Direction("layer3", torch.randn(256))``.
    """

    def __init__(self, layer: LayerKey, vector: Sequence[float] | Tensor) -> None:
        self.layer = layer
        self.vector = torch.as_tensor(vector, dtype=torch.float32)
        if self.vector.dim() != 1:
            raise ConvscopeError(f"Direction vector has shape {list(self.vector.shape)}, not one dimension",
                                 "Pass one weight per channel, e.g. torch.randn(channels).")

    def reads_output(self) -> bool:
        return False

    def layers(self) -> tuple[LayerKey, ...]:
        return (self.layer,)

    def feeds(self) -> list[tuple[Target, np.ndarray]]:
        return [(self, self.vector.numpy())]

    def key(self, path: Callable[[LayerKey], Hashable]) -> Hashable:
        return ("direction", path(self.layer), len(self.vector))

    def score(self, record: Record) -> Tensor:
        act, ops = record.acts[self.layer], record.ops
        if ops.rank(act) < 2 or act.shape[ops.channel_axis] != len(self.vector):
            axis = "dimension 1" if ops.channel_axis == 1 else "the last dimension"
            raise ConvscopeError(f"Direction vector has {len(self.vector)} entries but layer "
                                 f"{_layer_label(self.layer)!r} has output shape {list(act.shape)}",
                                 f"Give one weight per channel ({axis} of the layer's output).")
        v = ops.per_channel(ops.convert(record.fed(self, self.vector), act)[None], act)
        return ops.sum(ops.flat(act * v), 1)

    def __repr__(self) -> str:
        return f"Direction({self.layer!r}, <{len(self.vector)} weights>)"


class FunctionTarget(Target):
    """Any callable ``f(output) -> Tensor[N]`` of the model output, e.g. ``lambda out: out[:, 3] - out[:, 5]``."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.fn = fn

    def key(self, path: Callable[[LayerKey], Hashable]) -> Hashable:
        return ("function", self.fn)  # the same function object again reuses a compiled graph

    def score(self, record: Record) -> Tensor:
        value, ops = self.fn(record.output), record.ops
        n = record.output.shape[0] if ops.is_tensor(record.output) else batch_size(record.output)  # Keras tracing: None
        size = int(np.prod(value.shape)) if ops.is_tensor(value) and None not in list(value.shape) else None
        if not ops.is_tensor(value) or ops.rank(value) > 2 or None not in (n, size) and size != n:
            shape = list(value.shape) if ops.is_tensor(value) else type(value).__name__
            raise ConvscopeError(f"the target function returned {shape}, not one score per sample "
                                 f"({[n] if n is not None else '[N]'})",
                                 "Return a tensor of shape [N], e.g. lambda out: out[:, 3].")
        return ops.vector(value)

    def __repr__(self) -> str:
        return f"FunctionTarget({getattr(self.fn, '__name__', self.fn)!r})"


class _Constant(Target):
    def __init__(self, value: float) -> None:
        self.value = float(value)

    def reads_output(self) -> bool:
        return False  # only its batch size, dtype and device: a truncated pass's placeholder has them

    def key(self, path: Callable[[LayerKey], Hashable]) -> Hashable:
        return ("constant", self.value)

    def score(self, record: Record) -> Tensor:
        if not record.ops.is_tensor(record.output):  # a structured output (a detector's, a segmenter's)
            return like_rows(record.output, self.value)
        return record.ops.fill_rows(record.output, self.value)

    def __repr__(self) -> str:
        return repr(self.value)


class _Combined(Target):
    """``op(left, right)`` of two targets, scored sample by sample."""

    def __init__(self, op: Callable[[Tensor, Tensor], Tensor], symbol: str, left: Target, right: Target) -> None:
        self.op, self.symbol, self.left, self.right = op, symbol, left, right

    def layers(self) -> tuple[LayerKey, ...]:
        return tuple(dict.fromkeys(self.left.layers() + self.right.layers()))

    def reads_output(self) -> bool:
        return self.left.reads_output() or self.right.reads_output()

    def check_batch(self, n: int) -> None:
        self.left.check_batch(n)
        self.right.check_batch(n)

    def check(self, classes: int | None) -> None:
        self.left.check(classes)
        self.right.check(classes)

    def feeds(self) -> list[tuple[Target, np.ndarray]]:
        return self.left.feeds() + self.right.feeds()

    def follows_pass(self) -> bool:
        return self.left.follows_pass() or self.right.follows_pass()

    def key(self, path: Callable[[LayerKey], Hashable]) -> Hashable | None:
        left, right = self.left.key(path), self.right.key(path)
        return None if left is None or right is None else ("combined", self.symbol, left, right)

    def score(self, record: Record) -> Tensor:
        return self.op(self.left.score(record), self.right.score(record))

    def __repr__(self) -> str:
        return f"({self.left!r} {self.symbol} {self.right!r})"


def _operand(value: object) -> Target | None:
    if isinstance(value, Target):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _Constant(value)
    return None


def _combine(op: Callable[[Tensor, Tensor], Tensor], symbol: str, left: object, right: object) -> Target:
    a, b = _operand(left), _operand(right)
    if a is None or b is None:
        bad = left if a is None else right
        raise ConvscopeError(f"cannot combine a target with {type(bad).__name__} {bad!r}",
                             "Targets combine with numbers and other targets using + - *.")
    return _Combined(op, symbol, a, b)


TargetLike = Target | int | Sequence[int] | Tensor | np.ndarray | Callable[[Tensor], Tensor]


def _is_index(value: object) -> bool:
    """A class index: a Python or numpy integer, not a bool (numpy's bool is no ``Integral``)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def as_target(value: TargetLike) -> Target:
    """The API edge: a Target stays, an int / list of ints / int tensor or numpy array (numpy
    integers too) becomes :class:`Class`, a tuple of ints an :class:`Element` (an index into a
    multi-dimensional output, as in Captum), a callable becomes :class:`FunctionTarget`.

    Example: ``as_target(3)`` -> ``Class(3)``; ``as_target([3, 0])`` -> ``Class([3, 0])``;
    ``as_target((2, 3))`` -> ``Element((2, 3))``.
    """
    if isinstance(value, Target):
        return value
    if isinstance(value, (bool, np.bool_)):
        raise ConvscopeError(f"target={value!r} is not a target", "Pass a class index, a Target or a callable.")
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu":
        return Class(torch.from_numpy(value.astype(np.int64)))
    if isinstance(value, Tensor) or _is_index(value):
        return Class(value)  # type: ignore[arg-type]
    if isinstance(value, tuple) and value and all(_is_index(v) for v in value):
        return Element(value)
    if isinstance(value, list) and value and all(_is_index(v) for v in value):
        return Class([int(v) for v in value])
    if callable(value):
        return FunctionTarget(value)
    raise ConvscopeError(f"target={value!r} is not something convscope can explain",
                         "Pass a class index (3), one per sample ([3, 0]), a Target such as "
                         "Channel('features.3', 5), or a callable f(output) -> Tensor[N].")


def as_targets(target: TargetLike | None, targets: Sequence[TargetLike] | None, n: int) -> tuple[list[Target], bool]:
    """The targets of one call (checked against a batch of ``n``) and whether several were asked for;
    neither: the model's one output per sample (:class:`Output`)."""
    if target is not None and targets is not None:
        raise ConvscopeError("give exactly one of target=... or targets=[...]",
                             "target=3 explains class 3; targets=[3, 5] returns one map per target.")
    if target is None and targets is None:
        return [Output()], False
    if targets is not None:
        if isinstance(targets, (Target, int, Tensor)) or not isinstance(targets, Sequence) or not targets:
            raise ConvscopeError("targets= must be a non-empty list of targets",
                                 "Write targets=[3, Channel('features.3', 5)], or use target= for one.")
        found = [as_target(t) for t in targets]
    else:
        found = [as_target(target)]  # type: ignore[arg-type]
    for t in found:
        t.check_batch(n)
    return found, targets is not None


__all__ = ["Channel", "Class", "Direction", "Element", "FunctionTarget", "MaxNeuron", "Neuron", "Output", "Predicted",
           "Record", "Target",
           "as_target", "as_targets", "strongest"]
