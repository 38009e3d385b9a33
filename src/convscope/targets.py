"""Targets: what to explain. A target turns one forward pass into one score per sample.

Gradient methods back-propagate ``d score_n / d input``; the *seed* a target plants in a layer is
``d score / d activation``. All targets share one sign convention: bigger means "more of it".

- ``Class(k)``: the logit ``out[n, k]`` (``k`` may be one index per sample).
- ``Channel(layer, c, reduce)``: ``sum``/``mean``/``max`` of feature map ``c`` of ``layer``.
- ``Neuron(layer, c, y, x)``: the unit ``act[n, c, y, x]`` (``Neuron(layer, c)`` for a linear layer).
- ``MaxNeuron(layer, c, rank=0)``: ``1/2 * a**2`` of the strongest unit ``a`` of feature map
  ``c`` (or the ``rank``-th strongest), so the seed is the layer's activations with every other
  unit zeroed: the Zeiler-Fergus seed. Ties go to the first position in row-major order.
- ``Direction(layer, v)``: ``sum_c v[c] * sum_pos act[n, c, pos]``.
- any callable ``f(output) -> Tensor[N]``.

Targets combine with ``+ - *`` (with numbers and other targets) and unary ``-``. An int or a
list of ints becomes a ``Class`` only at the API edge (:func:`as_target`); inside arithmetic a
number is a number.

Example::

    t = Class(3) - 0.5 * Channel("features.28", 12, reduce="mean")
    Saliency(model).attribute(x, t)
"""

from __future__ import annotations

import numbers
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from convscope.errors import ConvscopeError

LayerKey = str | nn.Module


@dataclass(frozen=True)
class Record:
    """One forward pass as targets see it: the model ``output``, the recorded layer outputs
    ``acts`` (keyed as the targets name them), the ``rows`` of the full batch it covers and,
    where known, the ``input`` the model saw (regularizers such as total variation read it)."""

    output: Tensor
    acts: Mapping[LayerKey, Tensor]
    rows: slice | Tensor
    input: Tensor | None = None


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


def _on_device(index: Tensor, device: torch.device) -> Tensor:
    """``index`` on ``device``; a host tensor goes to CUDA by a pinned, asynchronous copy (a copy
    from ordinary host memory waits for all the work queued on the device first)."""
    if device.type == "cuda" and index.device.type == "cpu":
        return index.pin_memory().to(device, non_blocking=True)
    return index.to(device)


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

    def score(self, record: Record) -> Tensor:
        out = record.output
        if out.dim() != 2:
            raise ConvscopeError(f"a Class target needs a model output of shape [N, classes], got {list(out.shape)}",
                                 "Use a Channel/Neuron target or a callable target for other outputs.")
        idx = self.index if self.index.dim() == 0 else self.index[record.rows]  # this chunk's samples
        bad = (idx < 0) | (idx >= out.shape[1])
        if bool(bad.any()):
            raise ConvscopeError(f"class index {idx[bad][0].item()} is out of range for {out.shape[1]} classes",
                                 f"Use an index in 0..{out.shape[1] - 1}.")
        if idx.dim() == 0:  # a Python int: indexing with a host tensor would wait for the device
            return out[:, int(idx)]
        if len(idx) and bool((idx == idx[0]).all()):  # one class for the whole chunk (SmoothGrad, IG)
            return out[:, int(idx[0])]
        return out.gather(1, _on_device(idx, out.device)[:, None])[:, 0]

    def __repr__(self) -> str:
        return f"Class({self.index.tolist()!r})"


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
        """``act[:, channel]`` flattened to ``[n, positions]`` (one position for a linear layer)."""
        act = record.acts[self.layer]
        if act.dim() < 2 or not 0 <= self.channel < act.shape[1]:
            size = act.shape[1] if act.dim() >= 2 else 0
            raise ConvscopeError(f"channel {self.channel} is out of range: layer {_layer_label(self.layer)!r} "
                                 f"has {size} channels (output shape {list(act.shape)})",
                                 f"Use a channel in 0..{size - 1}.")
        return act[:, self.channel].reshape(act.shape[0], -1)


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

    def score(self, record: Record) -> Tensor:
        fmap = self.feature_map(record)
        if self.reduce == "sum":
            return fmap.sum(1)
        if self.reduce == "mean":
            return fmap.mean(1)
        return fmap.gather(1, fmap.argmax(1, keepdim=True))[:, 0]  # argmax: first maximum wins

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

    def score(self, record: Record) -> Tensor:
        act = record.acts[self.layer]
        self.feature_map(record)  # validates the channel
        space = tuple(act.shape[2:])
        if len(space) != len(self.position) or any(not 0 <= p < s for p, s in zip(self.position, space)):
            raise ConvscopeError(f"Neuron position {self.position} does not fit layer "
                                 f"{_layer_label(self.layer)!r} with spatial shape {list(space)}",
                                 f"Give {len(space)} coordinates, each within {list(space)}.")
        return act[(slice(None), self.channel, *self.position)]

    def __repr__(self) -> str:
        return f"Neuron({self.layer!r}, {', '.join(map(str, (self.channel, *self.position)))})"


def strongest(fmap: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The ``count`` largest values of each row of ``fmap`` [n, positions] and their flat indices.

    Descending; ties keep row-major order (a stable sort), so the result never depends on chance.
    """
    if not 1 <= count <= fmap.shape[1]:
        raise ConvscopeError(f"asked for the {count} strongest positions of a feature map with {fmap.shape[1]}",
                             f"Ask for 1..{fmap.shape[1]}.")
    if count == 1:
        idx = fmap.argmax(1, keepdim=True)
    else:
        idx = torch.sort(fmap, dim=1, descending=True, stable=True).indices[:, :count]
    return fmap.gather(1, idx), idx


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

    def score(self, record: Record) -> Tensor:
        fmap = self.feature_map(record)
        _, idx = strongest(fmap.detach(), self.rank + 1)
        a = fmap.gather(1, idx[:, self.rank:])[:, 0]
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

    def score(self, record: Record) -> Tensor:
        act = record.acts[self.layer]
        if act.dim() < 2 or act.shape[1] != len(self.vector):
            raise ConvscopeError(f"Direction vector has {len(self.vector)} entries but layer "
                                 f"{_layer_label(self.layer)!r} has output shape {list(act.shape)}",
                                 "Give one weight per channel (dimension 1 of the layer's output).")
        v = self.vector.to(act.device, act.dtype).reshape(1, -1, *([1] * (act.dim() - 2)))
        return (act * v).reshape(act.shape[0], -1).sum(1)

    def __repr__(self) -> str:
        return f"Direction({self.layer!r}, <{len(self.vector)} weights>)"


class FunctionTarget(Target):
    """Any callable ``f(output) -> Tensor[N]`` of the model output, e.g. ``lambda out: out[:, 3] - out[:, 5]``."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.fn = fn

    def score(self, record: Record) -> Tensor:
        value = self.fn(record.output)
        n = record.output.shape[0]
        if not isinstance(value, Tensor) or value.reshape(-1).shape[0] != n or value.dim() > 2:
            shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ConvscopeError(f"the target function returned {shape}, not one score per sample ([{n}])",
                                 "Return a tensor of shape [N], e.g. lambda out: out[:, 3].")
        return value.reshape(n)

    def __repr__(self) -> str:
        return f"FunctionTarget({getattr(self.fn, '__name__', self.fn)!r})"


class _Constant(Target):
    def __init__(self, value: float) -> None:
        self.value = float(value)

    def reads_output(self) -> bool:
        return False  # only its batch size, dtype and device: a truncated pass's placeholder has them

    def score(self, record: Record) -> Tensor:
        out = record.output
        return torch.full((out.shape[0],), self.value, dtype=out.dtype, device=out.device)

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
    integers too) becomes :class:`Class`, a callable becomes :class:`FunctionTarget`.

    Example: ``as_target(3)`` -> ``Class(3)``; ``as_target([3, 0])`` -> ``Class([3, 0])``.
    """
    if isinstance(value, Target):
        return value
    if isinstance(value, (bool, np.bool_)):
        raise ConvscopeError(f"target={value!r} is not a target", "Pass a class index, a Target or a callable.")
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu":
        return Class(torch.from_numpy(value.astype(np.int64)))
    if isinstance(value, Tensor) or _is_index(value):
        return Class(value)  # type: ignore[arg-type]
    if isinstance(value, (list, tuple)) and value and all(_is_index(v) for v in value):
        return Class([int(v) for v in value])
    if callable(value):
        return FunctionTarget(value)
    raise ConvscopeError(f"target={value!r} is not something convscope can explain",
                         "Pass a class index (3), one per sample ([3, 0]), a Target such as "
                         "Channel('features.3', 5), or a callable f(output) -> Tensor[N].")


def as_targets(target: TargetLike | None, targets: Sequence[TargetLike] | None, n: int) -> tuple[list[Target], bool]:
    """The targets of one call (checked against a batch of ``n``) and whether several were asked for."""
    if (target is None) == (targets is None):
        raise ConvscopeError("give exactly one of target=... or targets=[...]",
                             "target=3 explains class 3; targets=[3, 5] returns one map per target.")
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


__all__ = ["Channel", "Class", "Direction", "FunctionTarget", "MaxNeuron", "Neuron", "Record", "Target",
           "as_target", "as_targets", "strongest"]
