"""Ablations of any shape: set a group of input elements to a fill, watch the score drop.

One ablation ``w`` is a boolean mask ``M_w`` over a sample of the attributed input (any rank,
several inputs packed side by side: :mod:`convscope.backends.torch.inputs`). With ``s`` the
target's score and ``x_w = where(M_w, fill, x)``::

    map[p] = sum_w (s(x) - s(x_w)) * M_w[p] / sum_w M_w[p]     (0 where no ablation covers p)

- :class:`~convscope.methods.Occlusion` on tabular rows, signals, volumes and tuples of inputs:
  the masks are its sliding windows (:func:`~convscope.methods.perturb.occlusion_masks`), placed per input (Captum's ``sliding_window_shapes`` per input: a window
  changes one input, the others stay), so ``map`` is the mean drop of the windows covering ``p``;
- :class:`FeatureAblation`: the masks are the groups of a feature mask (an integer id per
  element; a group spans every input holding its id, as in Captum 0.9), so ``map`` is the
  group's drop on each of its elements.

The masks ``[W, *sample]`` are planned channels-first on the host (``W`` times the sample's
elements in bytes) and moved a chunk at a time.

Example::

    maps = Occlusion(model, window=((2,), (2, 3))).attribute((table, signal), 1)   # a tuple of maps
    maps = FeatureAblation(model, feature_mask=groups, fill=0.0).attribute(x, 3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor as TorchTensor

from convscope.backends.protocol import Chunk, Engine, Ops, Tensor
from convscope.backends.torch.batching import MaxBatch
from convscope.errors import ConvscopeError
from convscope.methods.base import Method, Rows, numel
from convscope.ops import tensors
from convscope.targets import Target

Fill = Any  # a number, an array broadcastable to one sample, or "blur"



def check_sizes(value: Any, name: str) -> Any:
    """``value`` if it is None, a positive int, a tuple of them, or a tuple holding one such
    tuple (or None) per input; else a clear error."""
    def ints(v: Any) -> bool:
        return isinstance(v, (tuple, list)) and len(v) > 0 and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in v)

    if value is None or isinstance(value, int) and not isinstance(value, bool) and value >= 1 or ints(value):
        return tuple(value) if isinstance(value, list) else value
    if isinstance(value, (tuple, list)) and value and all(v is None or ints(v) for v in value):
        return tuple(None if v is None else tuple(v) for v in value)
    raise ConvscopeError(f"{name}={value!r} must be a positive int, a tuple of them (such as (height, width) or "
                         "(channels, height, width)), or one such tuple per input",
                         f"For example {name}=8, {name}=(8, 8) or, for two inputs, {name}=((2,), (1, 3)).")


def per_input(value: Any, count: int) -> list[Any]:
    """``value`` for each of ``count`` inputs: a tuple holding a tuple (or None) per input, else
    the same value for all."""
    if isinstance(value, (tuple, list)) and len(value) == count and count > 1 and all(
            v is None or isinstance(v, (tuple, list)) for v in value):
        return list(value)
    return [value] * count


def axis_sizes(size: Any, shape: Sequence[int], name: str, default: Sequence[int]) -> tuple[int, ...]:
    """A window or stride for a sample of ``shape``: an int (every axis but the channels, which it
    spans whole; a 1-D sample's one axis), a tuple with one size per axis, or one per axis after
    the channels (which it spans whole); None: ``default``."""
    rank = len(shape)
    if size is None:
        return tuple(default)
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size,) * max(rank - 1, 1)
    if (not isinstance(size, (tuple, list)) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size)
            or len(size) not in {rank, rank - 1} - {0}):
        axes = f"{rank} sizes, or {rank - 1} after the channels" if rank > 1 else "1 size"
        raise ConvscopeError(f"{name}={size!r} does not fit a sample of shape {list(shape)}",
                             f"Give a positive int or {axes}, e.g. {name}={(2,) * max(rank - 1, 1)}.")
    return tuple(size) if len(size) == rank else (int(shape[0]), *size)


def group_masks(ids: TorchTensor) -> TorchTensor:
    """``[G, *ids.shape]`` bool: one mask per distinct id of ``ids`` (ascending)."""
    return ids[None] == torch.unique(ids).reshape(-1, *[1] * ids.dim())


def placed(masks: list[TorchTensor], sizes: Sequence[int]) -> TorchTensor:
    """Per-input masks ``[W_i, *shape_i]`` as masks over the packed sample ``[sum W_i, F]``: each
    input's masks on its own part, the other parts untouched."""
    total, offset = sum(int(m.shape[0]) for m in masks), 0
    out, row = torch.zeros(total, sum(sizes), dtype=torch.bool), 0
    for m, size in zip(masks, sizes):
        out[row:row + len(m), offset:offset + size] = m.reshape(len(m), -1)
        row, offset = row + len(m), offset + size
    return out


def channels_first(engine: Engine, value: Tensor) -> tuple[int, ...]:
    """One sample's shape of ``value`` channels-first (the layout masks are planned in)."""
    shape = [int(d) for d in value.shape[1:]]
    return tuple(shape) if engine.ops.channel_axis == 1 or len(shape) < 2 else (shape[-1], *shape[:-1])


def fill_values(fill: Fill, value: Tensor, sigma: float, ops: Ops = tensors) -> Tensor:
    """What replaces the occluded parts, shaped like ``value`` (a batch of images)."""
    if isinstance(fill, str):
        if fill != "blur":
            raise ConvscopeError(f"fill={fill!r} is not supported", "Use a number, a tensor or 'blur'.")
        return ops.gaussian_blur(value, sigma)
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        return ops.full(list(value.shape), float(fill), like=value)
    f = ops.convert(fill, value)
    try:
        if f is None:
            raise ValueError
        per_sample = ops.rank(f) == ops.rank(value) and int(f.shape[0]) in (1, int(value.shape[0]))
        return (f if per_sample else f[None]) + ops.zeros_like(value)
    except Exception:  # noqa: BLE001 - any broadcasting failure of either framework
        shape = list(np.shape(fill)) if hasattr(fill, "shape") else type(fill).__name__
        raise ConvscopeError(f"the fill {shape} fits neither one sample {list(value.shape[1:])} nor the batch "
                             f"{list(value.shape)}",
                             "Give a number, a tensor shaped like one sample, or one fill per sample "
                             "(broadcastable).") from None


def fills(fill: Any, engine: Engine, value: Tensor) -> Tensor:
    """What ablated elements become, shaped like ``value``: a number, a tensor broadcastable to one
    sample or the batch, or (several inputs) one such value per input in a tuple."""
    ops, inputs = engine.ops, engine.inputs
    if isinstance(fill, str):
        raise ConvscopeError(f"fill={fill!r} needs a batch of images", "Use a number or a tensor as the fill.")
    if inputs is not None and engine.wrt is None and len(inputs.shapes) > 1:
        return inputs.pack(fill, like=value, what="fill") + ops.zeros_like(value)
    return fill_values(fill, value, 0.0, ops)


def ablation_maps(method: Method, engine: Engine, x: Tensor, rows: Rows, value: Tensor, masks: TorchTensor,
                  fill: Tensor) -> list[Tensor]:
    """The maps of the module docstring for ablation masks ``masks [W, *sample]`` (channels-first,
    host): ``value`` is the attributed tensor at ``x``, ``fill`` what ablated elements become."""
    ops, n, count = engine.ops, int(x.shape[0]), int(masks.shape[0])
    engine.evaluations(n * count * numel(x))
    clean = engine.scores(x, rows, value)
    drops = engine.compiled(("ablation",), method._ablation_drops)  # type: ignore[attr-defined]

    def evaluate(c: Chunk) -> list[Tensor]:
        covered = engine.plan(masks[torch.from_numpy(c.host_k)], like=value) > 0
        return drops(ops.take(x, c.sample), ops.take(value, c.sample), ops.take(fill, c.sample), covered,
                     engine.take_rows(rows, c), [ops.take(s, c.sample) for s in clean])

    sums = engine.accumulate(n, count, evaluate, like=value)
    coverage = engine.plan(masks.sum(0, dtype=torch.float64)[None], like=value)
    return [ops.divide(s, coverage + ops.zeros_like(s)) for s in sums]


class Ablating(Method):
    """A method scoring ablations of its input (:func:`ablation_maps`)."""

    expands = True
    display = "positive"  # a score drop: removing the evidence for the class

    def _ablation_drops(self, engine: Engine, x: Tensor, value: Tensor, fill: Tensor, covered: Tensor, rows: Rows,
                        clean: list[Tensor]) -> list[Tensor]:
        """Per target ``(s(x) - s(x_w)) * M_w`` for one chunk of ablated copies."""
        ops = engine.ops
        scores = engine.forward(x, rows, replace=(engine.wrt, ops.where(covered, fill, value)), fast=True).scores
        return [ops.where(covered, ops.per_row(base - ops.detach(s), value), 0.0) for base, s in zip(clean, scores)]


class FeatureAblation(Ablating):
    """``map[p] = s(x) - s(x with p's group set to the fill)`` (Captum's FeatureAblation).

    ``feature_mask``: an integer tensor of group ids shaped like one sample (or ``[1, ...]``;
    with several inputs one per input in a tuple, ids shared across inputs ablated together);
    default: every element its own group. ``fill``: a number, a tensor broadcastable to one
    sample or the batch, or one per input. Any rank, several inputs, forward arguments; with
    ``wrt=layer`` the groups are over the layer's output.
    Example: ``FeatureAblation(model, feature_mask=torch.arange(6) // 2).attribute(table, 1)``.
    """

    def __init__(self, model: Any, *, feature_mask: Any = None, fill: Any = 0.0, max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        self.feature_mask, self.fill = feature_mask, fill

    def masks(self, engine: Engine, value: Tensor) -> TorchTensor:
        """One mask per group over the (packed, channels-first) sample."""
        inputs = engine.inputs
        several = inputs is not None and engine.wrt is None and len(inputs.shapes) > 1
        shapes = list(inputs.shapes) if several else [channels_first(engine, value)]
        given = self.feature_mask
        if given is None:
            size = sum(math.prod(s) for s in shapes)
            return torch.eye(size, dtype=torch.bool).reshape(size, *([size] if several else shapes[0]))
        parts = list(given) if several and isinstance(given, (tuple, list)) else [given]
        if len(parts) != len(shapes):
            raise ConvscopeError(f"feature_mask gives {len(parts)} masks for {len(shapes)} inputs",
                                 "Give one integer mask per input, in a tuple.")
        ids = []
        for i, (part, shape) in enumerate(zip(parts, shapes)):
            t = torch.from_numpy(np.asarray(part)) if not isinstance(part, torch.Tensor) else part.detach().cpu()
            if t.dtype.is_floating_point or t.dtype == torch.bool:
                raise ConvscopeError(f"feature_mask {i} has dtype {t.dtype}", "Give integer group ids, e.g. torch.arange(6) // 2.")
            t = t[0] if t.dim() == len(shape) + 1 and t.shape[0] == 1 else t
            try:
                ids.append(torch.broadcast_to(t, shape).reshape(-1))
            except RuntimeError:
                raise ConvscopeError(f"feature_mask {i} of shape {list(t.shape)} does not fit one sample {list(shape)}",
                                     "Give ids shaped like one sample (broadcastable); one mask per sample is not "
                                     "supported.") from None
        masks = group_masks(torch.cat(ids))
        return masks if several else masks.reshape(-1, *shapes[0])

    def _compute(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any) -> list[Tensor]:
        value = engine.values(x, rows)
        return ablation_maps(self, engine, x, rows, value, self.masks(engine, value), fills(self.fill, engine, value))
