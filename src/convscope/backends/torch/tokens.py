"""Vision-transformer outputs as feature maps: the patch grid and the extra tokens, read from the model.

A ViT block outputs tokens ``[N, T, D]``: ``prefix`` extra tokens first (class, distillation and
register tokens, in that order in torchvision and timm), then the ``h x w`` patch tokens row by
row. A Swin block outputs a channels-last map ``[N, h, w, D]``. :class:`Tokens` turns either
into the ``[N, D, h, w]`` map the CAM family weights (and back, for methods that set a layer's
output). What it needs is found from the model, never guessed from a token count:

- ``prefix``: timm's ``num_prefix_tokens``, else the token parameters of the nearest module
  above the layer that has them (torchvision's ``class_token``; ``cls_token``, ``dist_token``,
  ``reg_token``, ``register_tokens``: ``[1, k, D]`` each counts ``k``);
- the patch grid ``(gh, gw)``: the output size of the patch embedding, the last ``nn.Conv2d`` to
  run before the first attention module (or before the layer), seen in one forward pass of the
  actual input size. A stage of a hierarchical model (Swin) has the grid ``(gh/s, gw/s)``.

Where the model has no token parameters, ``prefix = T - gh*gw``. Where the grid cannot be
found (a patch embedding without a convolution), the error names ``tokens=Tokens(...)``.

:func:`transformer_layer` is the default CAM layer of a transformer: in the last block (the
parent of the last attention module that keeps its input's shape), the first module to finish
with that shape: ``norm1`` / ``ln_1``, the input of the last attention, as pytorch-grad-cam's
documentation recommends (a class-token model's patch tokens after the last block no longer
reach the head, so their gradient is 0 there).

Example::

    Tokens(prefix=1, grid=(14, 14)).to_map(tokens)      # [N, 197, D] -> [N, D, 14, 14]
    transformer_layer(torchvision.models.vit_b_16(), x)  # 'encoder.layers.encoder_layer_11.ln_1'
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from convscope.backends.torch.session import call_model, eval_mode
from convscope.errors import ConvscopeError

#: parameters holding extra tokens ``[1, k, D]`` placed before the patch tokens
TOKEN_PARAMETERS = ("class_token", "cls_token", "dist_token", "reg_token", "register_tokens")
HOW = ("Pass the layout, e.g. GradCAM(model, layer, tokens=Tokens(prefix=1, grid=(14, 14))) for a class token and "
       "14 x 14 patches (Tokens(channels_last=True) for [N, h, w, D] maps; from convscope.methods.cam import Tokens)")


@dataclass(frozen=True)
class Tokens:
    """How a layer's output is a feature map: ``[N, prefix + h*w, D]`` tokens (``grid=(h, w)``),
    ``[N, h, w, D]`` (``channels_last=True``) or already ``[N, D, h, w]`` (neither).

    ``to_map`` drops the prefix tokens and returns ``[N, D, h, w]``; ``to_layer(map, like)`` is its
    inverse, the prefix tokens taken from ``like`` (the layer's own output).
    Example: ``Tokens(prefix=1, grid=(2, 2)).to_map(t)`` for ``t`` of shape ``[N, 5, D]``.
    """

    prefix: int = 0
    grid: tuple[int, int] | None = None
    channels_last: bool = False

    def __post_init__(self) -> None:
        grid = self.grid
        ok_grid = grid is None or (isinstance(grid, (tuple, list)) and len(grid) == 2
                                   and all(isinstance(g, int) and g > 0 for g in grid))
        if not (isinstance(self.prefix, int) and self.prefix >= 0 and ok_grid):
            raise ConvscopeError(f"Tokens(prefix={self.prefix!r}, grid={grid!r}) is not a token layout",
                                 "Give prefix as a count >= 0 and grid as (rows, columns) of patches.")
        if grid is not None:
            object.__setattr__(self, "grid", (int(grid[0]), int(grid[1])))

    @property
    def is_tokens(self) -> bool:
        return self.grid is not None

    def to_map(self, t: Tensor) -> Tensor:
        """``[N, T, D]`` -> ``[N, D, h, w]`` (patch tokens only), ``[N, h, w, D]`` -> ``[N, D, h, w]``."""
        if self.grid is not None:
            h, w = self.grid
            return t[:, self.prefix:].reshape(t.shape[0], h, w, t.shape[-1]).permute(0, 3, 1, 2)
        return t.permute(0, 3, 1, 2) if self.channels_last else t

    def to_layer(self, m: Tensor, like: Tensor) -> Tensor:
        """The layer output whose map is ``m`` ``[n, D, h, w]``, prefix tokens from ``like``."""
        if self.grid is not None:
            patches = m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1])
            return torch.cat([like[:, :self.prefix].to(patches.dtype), patches], dim=1)
        return m.permute(0, 2, 3, 1) if self.channels_last else m


#: the query projections of token attention modules (timm, torchvision, Hugging Face, vit-pytorch)
QUERY_LAYERS = frozenset({"qkv", "q", "q_proj", "query", "to_qkv", "to_q"})


def is_attention(module: nn.Module) -> bool:
    """torch's ``nn.MultiheadAttention``, and a module whose class name ends in ``Attention`` with a
    linear query projection (timm's ``Attention`` and ``WindowAttention``, torchvision's
    ``ShiftedWindowAttention``; not a CNN's squeeze-and-excitation ``ChannelAttention``)."""
    if isinstance(module, nn.MultiheadAttention):
        return True
    return type(module).__name__.endswith("Attention") and any(
        isinstance(child, nn.Linear) for name, child in module.named_children() if name in QUERY_LAYERS)


def has_attention(model: nn.Module) -> bool:
    """Whether ``model`` has an attention module (:func:`is_attention`)."""
    return any(is_attention(m) for m in model.modules())


@dataclass
class Call:
    """One module's (first) call in a traced forward pass: when it started and finished, how
    often it ran, the shapes of its first input and of its output."""

    start: int
    end: int = -1
    calls: int = 0
    shape_in: tuple[int, ...] | None = None
    shape_out: tuple[int, ...] | None = None


@dataclass
class Trace:
    """Every named module's :class:`Call` in one forward pass of one sample (``x[:1]``)."""

    calls: dict[str, Call] = field(default_factory=dict)

    def finished(self) -> list[str]:
        """Module names in the order their forward passes returned."""
        return sorted((n for n, c in self.calls.items() if c.end >= 0), key=lambda n: self.calls[n].end)


def _shape(value: object) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, Tensor) else None


def trace(model: nn.Module, x: Tensor) -> Trace:
    """One forward pass of ``x[:1]`` in eval mode without gradients, every module's call recorded;
    every hook is removed after (also when the model raises)."""
    found = Trace()
    clock = iter(range(1 << 62))

    def before(name: str) -> Callable[[nn.Module, tuple[object, ...]], None]:
        def hook(_module: nn.Module, inputs: tuple[object, ...]) -> None:
            call = found.calls.setdefault(name, Call(next(clock), shape_in=_shape(inputs[0]) if inputs else None))
            call.calls += 1
        return hook

    def after(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            call = found.calls[name]
            if call.end < 0:
                call.end, call.shape_out = next(clock), _shape(output)
        return hook

    handles = []
    try:
        for name, module in model.named_modules():
            if name:
                handles += [module.register_forward_pre_hook(before(name)), module.register_forward_hook(after(name))]
        with eval_mode(model), torch.no_grad():
            call_model(model, x[:1].detach())
    finally:
        for handle in handles:
            handle.remove()
    return found


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _inside(name: str, block: str) -> bool:
    return name.startswith(block + ".")


def transformer_layer(model: nn.Module, x: Tensor) -> str | None:
    """The default CAM layer of a transformer (module docstring), or None for a model without
    attention modules (no forward pass then)."""
    if not has_attention(model):
        return None
    modules = dict(model.named_modules())
    calls = traced(model, x).calls
    blocks = []
    for name, module in modules.items():
        block = _parent(name)
        call = calls.get(block)
        if (name and block and is_attention(module) and call is not None and call.calls == 1
                and call.shape_in is not None and len(call.shape_in) in (3, 4) and call.shape_in == call.shape_out):
            blocks.append(block)
    if not blocks:
        return None
    last = max(blocks, key=lambda b: calls[b].end)
    shape = calls[last].shape_in
    for name in Trace(calls).finished():
        call = calls[name]
        if _inside(name, last) and call.calls == 1 and call.shape_out == shape:
            return name
    return last


def _patch_grid(model: nn.Module, calls: dict[str, Call], layer: str | None) -> tuple[int, int] | None:
    """The output size of the last ``nn.Conv2d`` to run before the first attention module (before
    ``layer`` finishes, in a model without attention)."""
    modules = dict(model.named_modules())
    starts = [c.start for n, c in calls.items() if is_attention(modules[n])]
    limit = min(starts) if starts else calls[layer].end if layer in calls else math.inf
    convs = [(c.end, c.shape_out) for n, c in calls.items()
             if isinstance(modules[n], nn.Conv2d) and 0 <= c.end < limit and c.shape_out is not None]
    if not convs:
        return None
    shape = max(convs)[1]
    return (shape[2], shape[3]) if len(shape) == 4 else None


def prefix_tokens(model: nn.Module, layer: str) -> int | None:
    """The extra tokens before the patch tokens, from the nearest module above ``layer`` (the
    model itself last) that declares them (module docstring), or None if none does."""
    name = layer
    while True:
        module = model.get_submodule(name)
        count = getattr(module, "num_prefix_tokens", None)
        if isinstance(count, int) and not isinstance(count, bool):
            return count
        params = [getattr(module, p, None) for p in TOKEN_PARAMETERS]
        found = [p for p in params if isinstance(p, Tensor) and p.dim() == 3]
        if found:
            return sum(int(p.shape[1]) for p in found)
        if not name:
            return None
        name = _parent(name)


def has_class_token(model: nn.Module) -> bool:
    """Whether the model reads a class token: timm's ``has_class_token``, else a ``cls_token`` or
    ``class_token`` parameter (torchvision) in some module."""
    for module in model.modules():
        flag = getattr(module, "has_class_token", None)
        if isinstance(flag, bool):
            return flag
        if any(isinstance(getattr(module, p, None), Tensor) for p in ("class_token", "cls_token")):
            return True
    return False


def _scale(grid: tuple[int, int], size: tuple[int, int]) -> bool:
    """Whether ``size`` is ``grid`` divided by one integer factor."""
    return (size[0] > 0 and size[1] > 0 and grid[0] % size[0] == 0 and grid[1] % size[1] == 0
            and grid[0] // size[0] == grid[1] // size[1])


def layout(model: nn.Module, layer: str, shape: tuple[int, ...], grid: tuple[int, int] | None,
           given: Tokens | None = None, module: nn.Module | None = None) -> Tokens:
    """The :class:`Tokens` of ``layer``'s output of ``shape`` (a clear error where it is not a map).

    ``[N, C, h, w]`` stays as is unless it is Swin's ``[N, h, w, D]`` (its first two sizes, not its
    last two, are the patch grid scaled down; or a LayerNorm over the last axis where both fit).
    ``[N, T, D]``: prefix tokens from the model, the rest the (scaled) patch grid.
    """
    if given is not None:
        if given.is_tokens and len(shape) == 3 and shape[1] != given.prefix + given.grid[0] * given.grid[1]:
            raise ConvscopeError(f"layer {layer!r} outputs {list(shape)}: {shape[1]} tokens, not the {given.prefix} + "
                                 f"{given.grid[0]} x {given.grid[1]} of {given}", "Give the layout of this layer.")
        return given
    if len(shape) == 4:
        if grid is None:
            return Tokens()
        last, first = _scale(grid, (shape[1], shape[2])), _scale(grid, (shape[2], shape[3]))
        norm = isinstance(module, nn.LayerNorm) and tuple(module.normalized_shape) == (shape[3],)
        return Tokens(channels_last=last and (not first or norm))
    if len(shape) != 3:
        return Tokens()  # not a map: the CAM's own check names the layer and its shape
    if grid is None:
        raise ConvscopeError(f"layer {layer!r} outputs tokens {list(shape)} but the patch grid is unknown (no "
                             "convolutional patch embedding runs before the attention)", HOW)
    prefix = prefix_tokens(model, layer)
    count = shape[1] - (grid[0] * grid[1] if prefix is None else prefix)
    if prefix is None:
        prefix, count = count, grid[0] * grid[1]
    patches = grid[0] * grid[1]
    scale = math.isqrt(patches // count) if count > 0 else 0  # a later stage of a hierarchical model: grid / scale
    if not (prefix >= 0 and scale >= 1 and scale * scale * count == patches and grid[0] % scale == grid[1] % scale == 0):
        raise ConvscopeError(f"layer {layer!r} outputs {list(shape)}: {shape[1]} tokens do not fit the model's "
                             f"{'unknown' if prefix < 0 else prefix} extra tokens and its {grid[0]} x {grid[1]} patch "
                             "grid", HOW)
    return Tokens(prefix=prefix, grid=(grid[0] // scale, grid[1] // scale))


_KNOWN: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], object]] = weakref.WeakKeyDictionary()


def cached(model: nn.Module, x: Tensor, what: str, make: Callable[[], object]) -> object:
    """``make()`` once per model, module tree, sample shape and ``what``."""
    key = (what, tuple(x.shape[1:]), tuple(map(id, model.modules())))
    known = _KNOWN.setdefault(model, {})
    if key not in known:
        known[key] = make()
    return known[key]


def traced(model: nn.Module, x: Tensor) -> Trace:
    """:func:`trace`, once per model, module tree and sample shape."""
    return cached(model, x, "trace", lambda: trace(model, x))  # type: ignore[return-value]


def layer_tokens(model: nn.Module, x: Tensor, layer: str, given: Tokens | None = None) -> Tokens:
    """The :class:`Tokens` of ``layer`` (a qualified name) for inputs shaped like ``x``: no forward
    pass for a model without attention modules (its maps are ``[N, C, h, w]``), else one traced
    pass per model and input size."""
    if given is None and not has_attention(model):
        return Tokens()
    calls = traced(model, x).calls
    call = calls.get(layer)
    if call is None or call.shape_out is None:
        return given or Tokens()  # did not run or not a tensor: the probes say so
    return layout(model, layer, call.shape_out, _patch_grid(model, calls, layer), given, model.get_submodule(layer))


def sequence_tokens(model: nn.Module, x: Tensor, count: int, given: Tokens | None = None) -> Tokens:
    """The :class:`Tokens` of the model's attention sequence of ``count`` tokens (attention rollout)."""
    calls = traced(model, x).calls
    first = min(((c.start, n) for n, c in calls.items() if is_attention(model.get_submodule(n))), default=(0, ""))[1]
    return layout(model, first, (1, count, 0), _patch_grid(model, calls, None), given)
