"""Receptive fields: the input box each unit of a layer sees.

**From the layer graph.** Along a chain of convolutions and poolings (element-wise layers such
as ReLU, batch-norm and dropout pass through), output index ``i`` of a layer with kernel ``k``,
stride ``s``, padding ``p`` and dilation ``d`` reads inputs ``s*i - p .. s*i - p + d*(k-1)``.
Composed from the layer down to the input, each axis is an affine range

    lo(i) = scale * i + start,  hi(i) = scale * i + stop      (inclusive)

clipped to the image. The chain is read from one probe forward pass with hooks on the leaf
modules: each module's input must be exactly (same tensor, same version) the output of the one
before, back to the model input. Anything else - a functional op between modules, a residual
``out += identity``, an unknown layer type - makes the graph unreadable.

**Empirical fallback.** Then the box is the bounding box of the input-gradient support of
the unit, with every ReLU passing the signal unchanged and every max-pool spreading it over
its whole window (so no path is cut by the input at hand).

Example::

    field = receptive_field(model, "features.3", (3, 64, 64))
    field.box(5, 7)        # (y0, y1, x0, x1), half-open, clipped to the image
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from convscope.backends.torch.forward import model_device
from convscope.backends.torch.rule_mode import relu_call
from convscope.backends.torch.session import eval_mode
from convscope.errors import ConvscopeError
from convscope.layers import resolve_layer

_POINTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Identity, nn.Dropout,
              nn.Dropout2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.ReLU6, nn.Hardswish)
_WINDOWED = (nn.Conv1d, nn.Conv2d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)


@dataclass(frozen=True)
class Axis:
    """One axis of a receptive field: unit ``i`` covers inputs ``scale*i+start .. scale*i+stop``."""

    scale: int = 1
    start: int = 0
    stop: int = 0

    def through(self, k: int, s: int, p: int, d: int) -> Axis:
        """The range one layer further down (towards the input)."""
        return Axis(self.scale * s, self.start * s - p, self.stop * s - p + d * (k - 1))


@dataclass(frozen=True)
class Field:
    """Receptive fields of one layer: per spatial axis an :class:`Axis`, and the input ``size``.

    ``empirical`` holds boxes measured by gradient support (unit -> box) when the graph could
    not be read; then ``axes`` is empty.
    """

    axes: tuple[Axis, ...]
    size: tuple[int, ...]
    empirical: Callable[[Sequence[tuple[int, ...]]], list[tuple[int, ...]]] | None = None

    def box(self, *unit: int) -> tuple[int, ...]:
        """``(y0, y1, x0, x1)`` (half-open, clipped to the input) of the unit at ``unit``."""
        return self.boxes([tuple(unit)])[0]

    def boxes(self, units: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """:meth:`box` of many units."""
        if self.empirical is not None:
            return self.empirical(units)
        out = []
        for unit in units:
            box: list[int] = []
            for a, i, n in zip(self.axes, unit, self.size):
                box += [max(0, a.scale * i + a.start), min(n, a.scale * i + a.stop + 1)]
            out.append(tuple(box))
        return out


def _pair(value: Any, dims: int) -> tuple[int, ...]:  # noqa: ANN401
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims


def _geometry(module: nn.Module, dims: int) -> list[tuple[int, int, int, int]] | None:
    """Per axis ``(k, s, p, d)`` of a windowed layer, or None if it cannot be read."""
    k = _pair(module.kernel_size, dims)
    s = _pair(module.stride if module.stride is not None else module.kernel_size, dims)
    d = _pair(getattr(module, "dilation", 1), dims)
    pad = module.padding
    if isinstance(pad, str):
        pad = tuple(0 if pad == "valid" else (di * (ki - 1)) // 2 for ki, di in zip(k, d))
    p = _pair(pad, dims)
    if getattr(module, "ceil_mode", False) or getattr(module, "padding_mode", "zeros") != "zeros":
        return None
    return list(zip(k, s, p, d))


def _chain(model: nn.Module, layer: nn.Module, x: Tensor) -> list[nn.Module] | None:
    """The leaf modules from the input up to ``layer``'s output, if the graph is a plain chain."""
    events: list[tuple[nn.Module, tuple[int, int], tuple[int, int]]] = []
    starts: dict[int, tuple[int, int]] = {}
    alive: list[Tensor] = []  # keeps every tensor seen alive, so no id is reused during the pass

    def sign(t: Tensor) -> tuple[int, int]:
        alive.append(t)
        return id(t), t._version

    origin = sign(x)

    def pre(module: nn.Module, inputs: tuple) -> None:
        if len(inputs) == 1 and isinstance(inputs[0], Tensor):
            starts[id(module)] = sign(inputs[0])

    def post(module: nn.Module, _inputs: tuple, output: object) -> None:
        if isinstance(output, Tensor) and id(module) in starts:
            events.append((module, starts.pop(id(module)), sign(output)))

    leaves = [m for m in model.modules() if not list(m.children())] + [layer]
    handles = [h for m in dict.fromkeys(leaves) for h in (m.register_forward_pre_hook(pre),
                                                          m.register_forward_hook(post))]
    try:
        with torch.no_grad(), eval_mode(model):
            model(x)
    finally:
        for h in handles:
            h.remove()
    ends = [i for i, (m, _, _) in enumerate(events) if m is layer]
    if len(ends) != 1:
        return None
    _, start, end = events[ends[0]]
    # a container: walk back from its output through its leaves; a leaf: start at its input
    target, chain = (end, []) if list(layer.children()) else (start, [layer])
    for module, start, end in reversed(events[: ends[0]]):
        if end == target and module is not layer:
            chain.append(module)
            target = start
    return chain[::-1] if target == origin else None


def _analytic(chain: list[nn.Module], dims: int) -> tuple[Axis, ...] | None:
    axes = [Axis()] * dims
    for module in reversed(chain):
        if isinstance(module, _POINTWISE):
            continue
        if not isinstance(module, _WINDOWED):
            return None
        geo = _geometry(module, dims)
        if geo is None:
            return None
        axes = [a.through(*g) for a, g in zip(axes, geo)]
    return tuple(axes)


class _Linearised(TorchFunctionMode):
    """ReLUs pass the gradient unchanged; 2-D max-pools spread it over their whole window."""

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (),  # noqa: ANN401
                           kwargs: dict | None = None) -> Any:  # noqa: ANN401
        kwargs = kwargs or {}
        call = relu_call(func, args, kwargs)
        if call is not None and isinstance(call[0], Tensor):
            x = call[0]
            return torch.relu(x.detach()) + (x - x.detach())
        if func in (F.max_pool2d, torch.max_pool2d, F.max_pool2d_with_indices) and isinstance(args[0], Tensor):
            return self._spread(func, args, kwargs)
        return func(*args, **kwargs)

    def _spread(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:  # noqa: ANN401
        names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
        bound = dict(zip(names, args)) | kwargs
        out = func(*args, **kwargs)
        pooled = out[0] if isinstance(out, tuple) else out
        x = bound["input"]
        k = _pair(bound["kernel_size"], 2)
        stride = bound.get("stride") or k
        ones = torch.ones(x.shape[1], 1, *k, dtype=x.dtype, device=x.device)
        window = F.conv2d(x, ones, stride=_pair(stride, 2), padding=_pair(bound.get("padding", 0), 2),
                          dilation=_pair(bound.get("dilation", 1), 2), groups=x.shape[1])
        if window.shape != pooled.shape:
            raise ConvscopeError("cannot measure receptive fields through a ceil_mode max-pool",
                                 "Pick a layer before it, or use ceil_mode=False.")
        spread = pooled.detach() + window - window.detach()
        return (spread, out[1]) if isinstance(out, tuple) else spread


def gradient_boxes(model: nn.Module, layer: nn.Module | str, shape: Sequence[int],
                   units: Sequence[tuple[int, ...]], max_batch: int = 64) -> list[tuple[int, ...]]:
    """Bounding boxes ``(y0, y1, x0, x1)`` of the input-gradient support of each spatial unit
    (summed over channels) of ``layer``, with ReLUs and max-pools linearised (see module doc)."""
    module = resolve_layer(model, layer)
    found: list[Tensor] = []
    hook = module.register_forward_hook(lambda _m, _i, out: found.append(out))
    boxes: list[tuple[int, ...]] = []
    device = model_device(model)
    generator = torch.Generator().manual_seed(0)
    try:
        with eval_mode(model), torch.enable_grad():
            for lo in range(0, len(units), max_batch):
                part = units[lo:lo + max_batch]
                x = torch.rand(len(part), *shape, generator=generator).to(device).requires_grad_()
                found.clear()
                with _Linearised():
                    model(x)
                act = found[-1]
                seed = torch.zeros_like(act)
                for row, unit in enumerate(part):
                    seed[(row, slice(None), *unit)] = 1.0
                (grad,) = torch.autograd.grad(act, x, seed)
                support = grad.detach().abs().sum(1) > 0  # [n, H, W]
                for row in support:
                    ys, xs = torch.nonzero(row.any(1)).flatten(), torch.nonzero(row.any(0)).flatten()
                    if len(ys) == 0:
                        raise ConvscopeError("a unit's gradient has no support in the input",
                                             "The layer does not depend on the input; pick another layer.")
                    boxes.append((int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1))
    finally:
        hook.remove()
    return boxes


def receptive_field(model: nn.Module, layer: nn.Module | str, input_shape: Sequence[int]) -> Field:
    """The :class:`Field` of ``layer`` for inputs of shape ``input_shape`` ``(C, H, W)``.

    Read from the graph when it is a plain conv/pool chain, else measured (see module doc).
    """
    module = resolve_layer(model, layer)
    size = tuple(int(s) for s in input_shape[1:])
    device = model_device(model)
    x = torch.zeros(1, *input_shape, device=device)
    chain = _chain(model, module, x)
    axes = _analytic(chain, len(size)) if chain is not None else None
    if axes is not None:
        return Field(axes, size)
    return Field((), size, lambda units: gradient_boxes(model, module, input_shape, units))


def crop(image: np.ndarray, box: tuple[int, ...], size: int | None = None) -> np.ndarray:
    """``image`` [H, W, C] cut to ``box`` ``(y0, y1, x0, x1)``, zero-padded to the full receptive
    field size ``size`` x ``size`` (when given) so patches at the border line up with the rest."""
    y0, y1, x0, x1 = box
    patch = image[y0:y1, x0:x1]
    if size is None:
        return patch
    out = np.zeros((size, size, *image.shape[2:]), dtype=image.dtype)
    h, w = min(size, patch.shape[0]), min(size, patch.shape[1])
    out[:h, :w] = patch[:h, :w]
    return out
