"""How each kind of graph node is recomputed on the region a local change can reach.

- :class:`Pointwise`: the output at a position reads the inputs at that position only (ReLU and
  the other activations, batch norm in eval mode, dropout in eval mode, ``+ - * /``, residual
  additions, channel concatenation, identities): the output box is the union of the inputs'
  boxes, and the op runs on that region of each input.
- :class:`Sliding`: convolutions, max and average pooling (and adaptive pooling that is one of
  them): the box grows by the op's projective field (:class:`~.geometry.Axis`); the op runs,
  without padding, on the input region its outputs read, padded with the op's padding value.
- :class:`GlobalMean`: an adaptive average pool to 1x1 updates the clean mean by the change in
  the box, ``mean' = mean + sum(patch - clean) / (H W)``, and its output is a plain batch.

:func:`rule_for` picks one for a node, or says why none applies (the node then runs on whole
maps). Modules are called through ``forward`` (their hooks were checked before: see
:mod:`~convscope.backends.torch.incremental.graph`).

Example::

    rule = rule_for(node, modules, shapes)   # Sliding(conv2d 3x3 /1) for a Conv2d node
    box = rule.out_box([input_box], (56, 56))
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from convscope.backends.torch.incremental.geometry import Axis, Box, box_of, union
from convscope.backends.torch.incremental.regions import Local, Regions

Value = Callable[[fx.Node], Any]  # a node's value in this chunk (Local, tensor, or anything static)

_POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                      nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus,
                      nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.BatchNorm2d)
_POINTWISE_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.neg,
                        torch.add, torch.sub, torch.mul, torch.div, torch.relu, torch.sigmoid, torch.tanh,
                        torch.clamp, torch.maximum, torch.minimum, F.relu, F.relu6, F.gelu, F.silu,
                        F.hardswish, F.hardsigmoid, F.leaky_relu, F.hardtanh, F.elu, F.sigmoid, F.tanh,
                        F.threshold, F.relu_, torch.relu_, operator.iadd, operator.imul, operator.isub,
                        operator.itruediv}
_POINTWISE_METHODS = {"relu", "sigmoid", "tanh", "add", "sub", "mul", "div", "clamp", "neg", "contiguous",
                      "clone", "relu_", "add_", "mul_", "sigmoid_", "clamp_"}


def call(node: fx.Node, modules: Mapping[str, nn.Module], args: tuple, kwargs: dict) -> Any:
    """Run ``node`` on ``args``/``kwargs`` as the traced module would, without module hooks."""
    if node.op == "call_module":
        return modules[str(node.target)].forward(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)  # type: ignore[operator]
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    raise ValueError(f"cannot call a {node.op} node")


class Rule(ABC):
    """How a node runs on changed regions (see the module docstring)."""

    label: str
    local = True  # False: the output is a plain batch (GlobalMean)
    cappable = True  # whether a projective-field cap (geometry.Cap) may shrink its box

    def __init__(self, node: fx.Node, inputs: list[fx.Node]) -> None:
        self.node = node
        self.inputs = inputs  # the argument nodes whose values may be Local

    @abstractmethod
    def out_box(self, boxes: list[Box], size: tuple[int, int]) -> Box:
        """The box of the output (of ``size``) that the inputs' ``boxes`` can change."""

    @abstractmethod
    def compute(self, regions: Regions, value: Value, clean: Value, out: Box) -> Tensor:
        """The output's patch on ``out`` (or, for a non-local rule, the whole output)."""

    def macs(self, out: Box, n: int) -> tuple[int, int]:
        """Multiply-adds done for ``n`` elements on ``out``, and on the whole output."""
        return 0, 0


class Pointwise(Rule):
    """``op`` position by position: inputs read on the union of their boxes."""

    def __init__(self, node: fx.Node, inputs: list[fx.Node], modules: Mapping[str, nn.Module]) -> None:
        super().__init__(node, inputs)
        self.modules = modules
        self.label = f"pointwise {_name(node, modules)}"
        self.spread = False  # True: it also reads a changed batch that is the same at every position

    @property
    def cappable(self) -> bool:  # type: ignore[override]
        return not self.spread  # a change spread over every position is no projective field

    def out_box(self, boxes: list[Box], size: tuple[int, int]) -> Box:
        if self.spread:  # a changed per-channel factor (squeeze-and-excitation) changes every position
            return Box.whole(len(boxes[0].top), size)
        return boxes[0] if len(boxes) == 1 else union(boxes, size)

    def compute(self, regions: Regions, value: Value, clean: Value, out: Box) -> Tensor:
        def region(n: fx.Node) -> Any:
            v = value(n)
            if not isinstance(v, Local):
                return v
            return v.patch if v.box.same(out) else regions.read(v, out.top, out.left, out.h, out.w, key=n)

        args, kwargs = fx.node.map_arg((self.node.args, self.node.kwargs), region)
        return call(self.node, self.modules, args, kwargs)


class Identity(Pointwise):
    """An op that returns its input as it is (adaptive pooling to the input's own size): the
    op itself would resize a region to the whole map's size."""

    cappable = False  # its input was capped already; its box is the input's

    def compute(self, regions: Regions, value: Value, clean: Value, out: Box) -> Tensor:
        return value(self.inputs[0]).patch.clone()  # a copy: later in-place ops must not reach the input


class Sliding(Rule):
    """A convolution or pooling ``op(region)`` run without padding on the region its outputs read."""

    def __init__(self, node: fx.Node, inputs: list[fx.Node], label: str, rows: Axis, cols: Axis, pad_value: float,
                 op: Callable[[Tensor], Tensor], whole: Callable[[Tensor], Tensor], macs_per_output: int = 0) -> None:
        super().__init__(node, inputs)
        self.label, self.rows, self.cols, self.pad_value = label, rows, cols, pad_value
        self.op, self.whole, self.per_output = op, whole, macs_per_output

    def out_box(self, boxes: list[Box], size: tuple[int, int]) -> Box:
        (b,) = boxes
        top, bottom = self.rows.changed(b.top, b.top + b.h)
        left, right = self.cols.changed(b.left, b.left + b.w)
        return box_of(top, bottom, left, right, size)

    def compute(self, regions: Regions, value: Value, clean: Value, out: Box) -> Tensor:
        x = value(self.inputs[0])
        if x.whole and out.covers((self.rows.out, self.cols.out)):
            return self.whole(x.patch)  # the op itself, with its own padding
        top, rh = self.rows.reads(out.top, out.h)
        left, rw = self.cols.reads(out.left, out.w)
        pad = (self.rows.pad, self.rows.pad_after, self.cols.pad, self.cols.pad_after)
        return self.op(regions.read(x, top, left, rh, rw, key=self.inputs[0], pad=pad, value=self.pad_value))

    def macs(self, out: Box, n: int) -> tuple[int, int]:
        return n * out.h * out.w * self.per_output, n * self.rows.out * self.cols.out * self.per_output


class GlobalMean(Rule):
    """Adaptive average pooling to 1x1: the clean mean plus the change in the box over ``H W``."""

    local = False
    label = "global mean"

    def out_box(self, boxes: list[Box], size: tuple[int, int]) -> Box:
        return Box.whole(len(boxes[0].top), size)

    def compute(self, regions: Regions, value: Value, clean: Value, out: Box) -> Tensor:
        x = value(self.inputs[0])
        if x.whole:
            return x.patch.mean((2, 3), keepdim=True)
        before = regions.read(x, x.box.top, x.box.left, x.box.h, x.box.w, key=self.inputs[0], overlay=False)
        h, w = x.size
        base = clean(self.node)[torch.from_numpy(regions.sample).to(x.patch.device)]
        return base + (x.patch - before).sum((2, 3), keepdim=True) / (h * w)


def _name(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    if node.op == "call_module":
        return type(modules[str(node.target)]).__name__
    return getattr(node.target, "__name__", str(node.target))


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _axes(kernel: Any, stride: Any, pad: Any, dilation: Any, size: tuple[int, ...], out: tuple[int, ...]
          ) -> tuple[Axis, Axis]:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pair(kernel), _pair(stride), _pair(pad), _pair(dilation)
    return Axis(kh, sh, ph, dh, size[-2], out[-2]), Axis(kw, sw, pw, dw, size[-1], out[-1])


def _conv(node: fx.Node, m: nn.Conv2d, shapes: Mapping[fx.Node, tuple[int, ...]]) -> Rule | str:
    if m.padding_mode != "zeros":
        return f"padding_mode={m.padding_mode!r}"
    if isinstance(m.padding, str):
        pad = (0, 0) if m.padding == "valid" else tuple(d * (k - 1) // 2 for k, d in zip(m.kernel_size, m.dilation))
    else:
        pad = m.padding
    source = node.args[0]
    rows, cols = _axes(m.kernel_size, m.stride, pad, m.dilation, shapes[source], shapes[node])
    per_output = m.out_channels * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
    label = f"conv {m.kernel_size[0]}x{m.kernel_size[1]} /{m.stride[0]}"
    return Sliding(node, [source], label, rows, cols, 0.0,
                   lambda r: F.conv2d(r, m.weight, m.bias, m.stride, 0, m.dilation, m.groups), m.forward, per_output)


def _max_pool(node: fx.Node, kernel: Any, stride: Any, pad: Any, dilation: Any,
              shapes: Mapping[fx.Node, tuple[int, ...]], whole: Callable[[Tensor], Tensor]) -> Rule:
    source = node.args[0]
    rows, cols = _axes(kernel, stride, pad, dilation, shapes[source], shapes[node])
    k, s, d = (rows.kernel, cols.kernel), (rows.stride, cols.stride), (rows.dilation, cols.dilation)
    return Sliding(node, [source], f"max pool {k[0]}x{k[1]} /{s[0]}", rows, cols, float("-inf"),
                   lambda r: F.max_pool2d(r, k, s, 0, d), whole)


def _avg_pool(node: fx.Node, kernel: Any, stride: Any, pad: Any, shapes: Mapping[fx.Node, tuple[int, ...]],
              whole: Callable[[Tensor], Tensor], count_include_pad: bool = True, divisor: int | None = None
              ) -> Rule | str:
    source = node.args[0]
    rows, cols = _axes(kernel, stride, pad, 1, shapes[source], shapes[node])
    if rows.pad_after > rows.pad or cols.pad_after > cols.pad:
        return "average pooling whose last window hangs past the padding (ceil_mode)"
    if not count_include_pad and (rows.pad or cols.pad):
        return "average pooling with count_include_pad=False and padding"
    k, s = (rows.kernel, cols.kernel), (rows.stride, cols.stride)
    return Sliding(node, [source], f"avg pool {k[0]}x{k[1]} /{s[0]}", rows, cols, 0.0,
                   lambda r: F.avg_pool2d(r, k, s, 0, divisor_override=divisor), whole)


def _adaptive(node: fx.Node, shapes: Mapping[fx.Node, tuple[int, ...]], average: bool,
              whole: Callable[[Tensor], Tensor], modules: Mapping[str, nn.Module]) -> Rule | str:
    source = node.args[0]
    h, w = shapes[source][-2:]
    oh, ow = shapes[node][-2:]
    if (oh, ow) == (h, w):
        return Identity(node, [source], modules)
    if (oh, ow) == (1, 1) and average:
        return GlobalMean(node, [source])
    if h % oh or w % ow:
        return f"adaptive pooling from {h}x{w} to {oh}x{ow} (windows of different sizes)"
    kernel = (h // oh, w // ow)
    if average:
        return _avg_pool(node, kernel, kernel, 0, shapes, whole)
    return _max_pool(node, kernel, kernel, 0, 1, shapes, whole)


def _module_rule(node: fx.Node, m: nn.Module, shapes: Mapping[fx.Node, tuple[int, ...]],
                 modules: Mapping[str, nn.Module]) -> Rule | str:
    kind = type(m)
    source = node.args[0] if node.args else None
    if not isinstance(source, fx.Node) or len(node.args) != 1 or node.kwargs:
        return f"{kind.__name__} called with other arguments than one tensor"
    if kind in _POINTWISE_MODULES:
        if kind is nn.BatchNorm2d and (m.training or m.running_mean is None):
            return "batch norm that normalises by batch statistics"
        if m.training and kind in (nn.Dropout, nn.Dropout2d, nn.AlphaDropout):
            return "dropout in training mode"
        return Pointwise(node, [source], modules)
    if kind is nn.Conv2d:
        return _conv(node, m, shapes)
    if kind is nn.MaxPool2d:
        if m.return_indices:
            return "max pooling that returns indices"
        return _max_pool(node, m.kernel_size, m.stride, m.padding, m.dilation, shapes, m.forward)
    if kind is nn.AvgPool2d:
        return _avg_pool(node, m.kernel_size, m.stride, m.padding, shapes, m.forward, m.count_include_pad,
                         m.divisor_override)
    if kind in (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
        if getattr(m, "return_indices", False):
            return "adaptive max pooling that returns indices"
        return _adaptive(node, shapes, kind is nn.AdaptiveAvgPool2d, m.forward, modules)
    return f"{kind.__name__} is not supported"


def _cat_dim(node: fx.Node) -> Any:
    return node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)


def _rule(node: fx.Node, modules: Mapping[str, nn.Module], shapes: Mapping[fx.Node, tuple[int, ...]],
          inputs: list[fx.Node]) -> Rule | str:
    if node.op == "call_module":
        return _module_rule(node, modules[str(node.target)], shapes, modules)
    if node.op == "call_function" and node.target is torch.cat:
        if _cat_dim(node) not in (1, -3):
            return "torch.cat along another dimension than channels"
        return Pointwise(node, inputs, modules)
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d and len(node.all_input_nodes) == 1:
        return _adaptive(node, shapes, True, lambda t: call(node, modules, (t, *node.args[1:]), node.kwargs), modules)
    if ((node.op == "call_function" and node.target in _POINTWISE_FUNCTIONS)
            or (node.op == "call_method" and node.target in _POINTWISE_METHODS)):
        return Pointwise(node, inputs, modules)
    return f"{_name(node, modules)} is not supported"


def rule_for(node: fx.Node, modules: Mapping[str, nn.Module], shapes: Mapping[fx.Node, tuple[int, ...] | None],
             kind: Callable[[fx.Node], str]) -> Rule | str:
    """The rule that recomputes ``node`` on regions, or why there is none. ``shapes``: each node's
    clean output shape (None: not a tensor); ``kind(n)``: ``"local"`` (a :class:`Local` value),
    ``"static"`` (the same for every element) or ``"dense"`` (a plain batch) for an input node."""
    out = shapes.get(node)
    if out is None or len(out) != 4:
        return "its output is not a [N, C, H, W] tensor"
    inputs = [n for n in node.all_input_nodes if kind(n) == "local"]
    if not inputs:
        return "it reads no local change"
    rule = _rule(node, modules, shapes, inputs)
    if isinstance(rule, str):
        return rule
    others = [n for n in node.all_input_nodes if kind(n) != "local"]
    if not isinstance(rule, Pointwise):
        return f"it reads {others[0].name}, computed in full" if others else rule
    for n in others:
        if not _position_free(shapes.get(n)):
            return f"it mixes in {n.name}, a tensor that varies across positions"
    if any(shapes[n][-2:] != out[-2:] for n in inputs):
        return "it changes the spatial size of its inputs"
    rule.spread = any(kind(n) == "dense" for n in others)
    return rule


def _position_free(shape: tuple[int, ...] | None) -> bool:
    """Whether an operand of this shape is the same at every position (a number, a per-channel
    tensor ``[C, 1, 1]``, a pooled ``[N, C, 1, 1]``): shape None means not a tensor."""
    if shape is None:
        return True
    return int(np.prod(shape)) == 1 or (len(shape) >= 2 and shape[-1] == 1 and shape[-2] == 1)
