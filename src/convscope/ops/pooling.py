"""Max-pooling that keeps its switches, and unpooling that adds values back at them.

``unpool`` is the exact adjoint of max-pooling: for every pooled position ``o``,

    out[n, c, switch[n, c, o]] += values[n, c, o],   out = 0 elsewhere,

which equals ``torch.autograd.grad(F.max_pool2d(x, ...), x, values)``. With overlapping windows
(3x3 stride 2, as in AlexNet and ZF-net) one input position can be the maximum of several windows
and receives the sum of their values; ``F.max_unpool2d`` writes instead, and so keeps only one.

Switch storage: 8 bytes per pooled element (2 per input element for 2x2 pooling) — the int64 flat
index within the spatial plane that PyTorch's max-pool returns, kept as is. Storing int32 would
halve that, but every consumer (the max-pool backward kernel, ``scatter_add_``, ``gather``)
takes int64 only, so each unpool would pay an extra conversion pass (measured in
benchmarks/bench_unpool_torch.py) to save memory that is small next to the activations.

Unpool route: on CPU, for float32, float64 and bfloat16, a C kernel (``native.py``, built at first
use where a C compiler exists) zeroes each plane (channels_last: each sample's ``[plane, C]``
slab, and the result stays channels_last) and adds into it while it is in cache, in the max-pool
backward's order and, for bfloat16, with its rounding after every addition (bitwise equal to it),
into an output advised for huge pages (see
``allocation.py``: page faults on a fresh 50 MB output otherwise cost more than the unpooling);
it takes 0.65-0.85x the time of the ``scatter_add_`` route below on the benchmarked shapes.
float16 (and bfloat16 without the kernel) go to PyTorch's max-pool backward kernel itself:
``scatter_add_`` rounds their sums differently in the last bit where windows overlap, and takes
more time (benchmarks/bench_unpool_torch.py). Otherwise, ``scatter_add_`` over each flattened
plane into a zeroed, huge-page-advised output. On CPU the scatter's planes go in blocks of about
4 MiB of output per thread, each zeroed and then scattered into while it is still in cache (one trip through memory instead
of two: 5-20% faster on the shapes benchmarked; outputs under 16 MiB, which stay in the
last-level cache anyway, go in one block); channels_last values scatter over ``[N, plane, C]`` views and their
result stays channels_last. On CUDA with windows that cannot overlap every switch is unique, so
writing equals adding: the max-unpool kernel (``aten.max_unpool2d``/``3d``), which is faster
there and deterministic; with overlapping windows CUDA's atomic adds make sums at shared
switches order-dependent in the last bit. On CPU the scatter matched or beat the max-pool
backward kernel on both CPUs measured, and ``F.max_unpool2d`` on all but one shape of one CPU
(BENCHMARKS.md). Every route is exact for
every geometry and, through one autograd function, differentiable in ``values`` with the
gather at the switches as gradient. ``Switches.check_indices`` runs first (O(1) for records
this module made). Timings: benchmarks/bench_unpool_torch.py.

Example::

    pooled, switches = max_pool_with_switches(x, kernel_size=3, stride=2)
    back = unpool(pooled, switches)  # x's shape; each max back in place, overlaps added
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from convscope.errors import ConvscopeError
from convscope.ops import native
from convscope.ops.allocation import empty_output
from convscope.ops.switches import IntOrTuple, Switches, as_tuple, check_pool_geometry

_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_LAYOUT = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}


def _spatial_dims(*params: IntOrTuple | None) -> int:
    """1, 2 or 3: the length of the first parameter given as a sequence, else 2."""
    for value in params:
        if isinstance(value, Sequence) and not isinstance(value, str):
            if len(value) not in (1, 2, 3):
                raise ConvscopeError(f"pooling parameter {tuple(value)} has {len(value)} entries",
                                     "Give 1, 2 or 3 entries, one per spatial axis.")
            return len(value)
    return 2


def max_pool_with_switches(x: torch.Tensor, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
                           padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                           ceil_mode: bool = False) -> tuple[torch.Tensor, Switches]:
    """``F.max_pool2d`` (or 1-D/3-D) that also returns the :class:`Switches` ``unpool`` needs.

    The arguments mean what they mean for ``nn.MaxPool2d`` (``stride=None`` is ``kernel_size``).
    Pooling is 2-D over ``(N, C, H, W)`` unless a parameter is a 1- or 3-tuple, which selects
    1-D ``(N, C, L)`` or 3-D ``(N, C, D, H, W)``. ``pooled`` stays differentiable in ``x``.
    Configurations that would make a window of padding only are rejected before PyTorch runs.

    Example::

        pooled, sw = max_pool_with_switches(torch.randn(2, 3, 7, 7), 3, stride=2, padding=1)
        pooled.shape, sw.indices.shape  # (2, 3, 4, 4) twice
    """
    dims = _spatial_dims(kernel_size, stride, padding, dilation)
    if not isinstance(x, torch.Tensor):
        raise ConvscopeError(f"max_pool_with_switches needs a torch.Tensor, got {type(x).__name__}",
                             "Convert the input with torch.as_tensor(x).")
    if not x.is_floating_point():
        raise ConvscopeError(f"max_pool_with_switches needs a floating-point input, got {x.dtype}",
                             "Convert it first, e.g. x.float().")
    if x.dim() != dims + 2:
        raise ConvscopeError(f"{dims}-D max-pooling needs a {dims + 2}-D input {_LAYOUT[dims]}, "
                             f"got shape {tuple(x.shape)}",
                             "Add a batch dimension with x.unsqueeze(0) for a single sample, or pass "
                             "kernel_size as a 1- or 3-tuple for 1-D or 3-D pooling.")
    k = as_tuple(kernel_size, dims, "kernel_size")
    s = k if stride is None else as_tuple(stride, dims, "stride")
    p = as_tuple(padding, dims, "padding")
    d = as_tuple(dilation, dims, "dilation")
    check_pool_geometry(x.shape[2:], k, s, p, d, bool(ceil_mode))
    pooled, indices = _POOL[dims](x, k, s, p, d, ceil_mode=bool(ceil_mode), return_indices=True)
    switches = Switches(indices, x.shape, k, s, p, d, bool(ceil_mode))
    switches._trust_indices()
    return pooled, switches


def unpool(values: torch.Tensor, switches: Switches) -> torch.Tensor:
    """Add each of ``values`` at its switch position of a zero tensor of the pooled input's shape.

    ``out[n, c, switch[n, c, o]] += values[n, c, o]``: the gradient of the max-pool that made
    ``switches`` with ``values`` as the upstream signal. ``values`` must have the pooled shape and
    a floating dtype; the result has its dtype and device and is differentiable in ``values``
    (its gradient is ``gather_at_switches``).

    Example::

        pooled, sw = max_pool_with_switches(x, 3, stride=2)
        back = unpool(pooled, sw)  # == torch.autograd.grad(F.max_pool2d(x, 3, 2), x, pooled)[0]
    """
    _check_unpool_args(values, switches)
    switches.check_indices()
    if not (values.requires_grad and torch.is_grad_enabled()):  # no graph to record: skip autograd's wrapper
        return _route(values, switches)
    return _Unpool.apply(values, switches)


def gather_at_switches(grad: torch.Tensor, switches: Switches) -> torch.Tensor:
    """The adjoint of ``unpool``: ``out[n, c, o] = grad[n, c, switch[n, c, o]]`` (pooled shape)."""
    index = switches.indices.flatten(2)
    return grad.flatten(2).gather(2, index).view(switches.pooled_shape)


def _route(values: torch.Tensor, switches: Switches) -> torch.Tensor:
    """The fastest exact unpooling for the device and layout (see the module docstring)."""
    if values.device.type == "cuda" and not switches.overlapping and not _is_channels_last(values):
        return _unpool_by_max_unpool(values, switches)
    if values.device.type == "cpu":
        if native.unpool_kernel(values.dtype):
            return _unpool_by_native_kernel(values, switches)
        if values.dtype in (torch.float16, torch.bfloat16):
            return _unpool_by_max_pool_backward(values, switches)
    return _unpool_by_scatter_add(values, switches)


class _Unpool(torch.autograd.Function):
    """Forward: the fastest exact route for the device and layout; backward: a gather."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, values: torch.Tensor,  # type: ignore[override]
                switches: Switches) -> torch.Tensor:
        ctx.switches = switches  # type: ignore[attr-defined]
        ctx.save_for_backward(switches.indices)  # autograd then refuses indices edited in place
        return _route(values, switches)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,  # type: ignore[override]
                 grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        ctx.saved_tensors  # noqa: B018 - raises if the indices changed since the forward
        return gather_at_switches(grad, ctx.switches), None  # type: ignore[attr-defined]


def _check_unpool_args(values: torch.Tensor, switches: Switches) -> None:
    if not isinstance(switches, Switches):
        raise ConvscopeError(f"unpool needs a Switches record, got {type(switches).__name__}",
                             "Pass the second result of max_pool_with_switches(x, ...).")
    if not isinstance(values, torch.Tensor):
        raise ConvscopeError(f"unpool needs a torch.Tensor of values, got {type(values).__name__}",
                             "Convert them with torch.as_tensor(values).")
    if not values.is_floating_point():
        raise ConvscopeError(f"unpool needs floating-point values, got {values.dtype}",
                             "Convert them first, e.g. values.float().")
    if values.shape != switches.pooled_shape:
        raise ConvscopeError(f"values have shape {tuple(values.shape)}, but the switches were recorded for a "
                             f"pooled output of shape {tuple(switches.pooled_shape)}",
                             "Unpool a signal shaped like the output of the max-pool these switches came from.")
    if values.device != switches.indices.device:
        raise ConvscopeError(f"values are on {values.device} but the switches are on {switches.indices.device}",
                             f"Move the values with values.to('{switches.indices.device}').")


_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}  # by tensor rank


def _is_channels_last(t: torch.Tensor) -> bool:
    fmt = _CHANNELS_LAST.get(t.dim())
    return fmt is not None and not t.is_contiguous() and t.is_contiguous(memory_format=fmt)


def _unpool_by_max_unpool(values: torch.Tensor, sw: Switches) -> torch.Tensor:
    """The max-unpool kernel, which writes each value at its switch: exact only when no two windows
    share an input position (``not sw.overlapping``), where it is also deterministic on CUDA."""
    idx, spatial = sw.indices, list(sw.input_shape[2:])
    if len(spatial) == 3:
        return torch.ops.aten.max_unpool3d(values, idx, spatial, list(sw.stride), list(sw.padding))
    if len(spatial) == 1:  # 1-D as 2-D with a height of one: flat indices within L stay the same
        return torch.ops.aten.max_unpool2d(values.unsqueeze(2), idx.unsqueeze(2), [1, *spatial]).squeeze(2)
    return torch.ops.aten.max_unpool2d(values, idx, spatial)


_POOL_BACKWARD = {2: torch.ops.aten.max_pool2d_with_indices_backward, 3: torch.ops.aten.max_pool3d_with_indices_backward}


def _unpool_by_max_pool_backward(values: torch.Tensor, sw: Switches) -> torch.Tensor:
    """PyTorch's own max-pool backward kernel, which reads only the shape and layout of the pooled
    input (given here as an untouched ``empty``): the CPU route for float16, and for bfloat16
    without the C kernel (``scatter_add_`` rounds their sums differently, and is slower)."""
    layout = _CHANNELS_LAST[values.dim()] if _is_channels_last(values) else torch.contiguous_format
    like = torch.empty(sw.input_shape, dtype=values.dtype, device=values.device, memory_format=layout)
    geometry = [list(sw.kernel_size), list(sw.stride), list(sw.padding), list(sw.dilation)]
    if like.dim() == 3:  # 1-D as 2-D with a height of one, as F.max_pool1d pools
        geometry = [[one, *g] for one, g in zip((1, 1, 0, 1), geometry, strict=True)]
        return _POOL_BACKWARD[2](values.unsqueeze(2), like.unsqueeze(2), *geometry, sw.ceil_mode,
                                 sw.indices.unsqueeze(2)).squeeze(2)
    return _POOL_BACKWARD[like.dim() - 2](values, like, *geometry, sw.ceil_mode, sw.indices)


def _unpool_by_native_kernel(values: torch.Tensor, sw: Switches) -> torch.Tensor:
    """The C kernel of ``native.py`` (float32, float64, bfloat16 on the CPU), on NCHW planes or, for
    channels_last values, on ``[N, plane, C]`` in blocks of channels; the result keeps the layout."""
    kernel = native.unpool_kernel(values.dtype)
    if kernel is None:
        raise ConvscopeError(f"no native unpooling kernel for {values.dtype}: {native.unavailable_reason()}",
                             "Call unpool(), which picks a route that exists.")
    n, c = sw.input_shape[:2]
    pooled, spatial = math.prod(sw.pooled_shape[2:]), tuple(sw.input_shape[2:])
    if _is_channels_last(values):  # [N, *spatial, C] as they lie in memory
        to_last = (0, *range(2, values.dim()), 1)
        src, index = values.permute(to_last).contiguous(), sw.indices.permute(to_last).contiguous()  # no copies
        # for channels_last values and the switches of a channels_last input
        out = empty_output((n, *spatial, c), values.dtype, values.device)
        rows, channels, block = n, c, _channel_block(n, c)
        result = out.permute(0, -1, *range(1, values.dim() - 1))
    else:
        src, index = values.contiguous(), sw.indices.contiguous()
        out = result = empty_output(sw.input_shape, values.dtype, values.device)
        rows, channels, block = n * c, 1, 1
    threads = max(1, min(torch.get_num_threads(), out.nbytes // _BYTES_PER_THREAD))
    bad = kernel(out.data_ptr(), src.data_ptr(), index.data_ptr(), rows, sw.plane_size, pooled, channels, block,
                 threads)
    if bad >= 0:  # check_indices ran first: only an edit of the indices since can get here
        where = f"sample {bad}" if channels > 1 else f"sample {bad // c}, channel {bad % c}"
        raise ConvscopeError(f"switch indices of {where} lie outside [0, {sw.plane_size - 1}]",
                             "Do not modify the switch indices; pool again for a fresh record.")
    return result


_BYTES_PER_THREAD = 1 << 20  # each thread the kernel starts gets at least this much output: less
# work than this (about 0.1 ms) would not pay for starting the thread


def _channel_block(n: int, c: int) -> int:
    """Channels per channels_last work item: all of them (one ``[plane, C]`` slab per sample, whose
    rows a 2-D window's switches share), halved to a multiple of 16 (whole 64-byte lines for
    float32, so threads never write one line) only while there are fewer items than threads."""
    block = c
    while block > 16 and n * -(-c // block) < torch.get_num_threads():
        block = max(16, block // 2 // 16 * 16)
    return block


def _unpool_by_scatter_add(values: torch.Tensor, sw: Switches) -> torch.Tensor:
    """``scatter_add_`` over the flattened plane, channels last when ``values`` are channels_last."""
    n, c = sw.input_shape[:2]
    pooled = math.prod(sw.pooled_shape[2:])  # explicit sizes: an empty batch cannot infer a -1
    if _is_channels_last(values):  # [N, P, C] views of channels_last tensors need no copy
        to_last = (0, *range(2, values.dim()), 1)
        src = values.permute(to_last).reshape(n, pooled, c)
        index = sw.indices.permute(to_last).reshape(n, pooled, c)
        out = empty_output((n, sw.plane_size, c), values.dtype, values.device).zero_().scatter_add_(1, index, src)
        return out.view(n, *sw.input_shape[2:], c).permute(0, -1, *range(1, values.dim() - 1))
    src, index = values.reshape(n * c, pooled), sw.indices.reshape(n * c, pooled)
    out = empty_output((n * c, sw.plane_size), values.dtype, values.device)
    blocked = values.device.type == "cpu" and out.nbytes > _UNBLOCKED_BYTES
    rows = max(1, _cache_block_bytes() // max(1, out[:1].nbytes) if blocked else n * c)
    for lo in range(0, n * c, rows):  # zero a block, then scatter into it while it is still in cache
        out[lo:lo + rows].zero_().scatter_add_(1, index[lo:lo + rows], src[lo:lo + rows])
    return out.view(sw.input_shape)


_UNBLOCKED_BYTES = 16 << 20  # smaller outputs stay in the last-level cache: one block is faster


def _cache_block_bytes() -> int:
    """How much output one CPU block may span: 4 MiB per thread (measured on a 2-core CPU with
    1 MiB of L2 per core and a 32 MiB L3: 1-2 MiB blocks pay more in per-op overhead on short
    planes than they gain, 16 MiB blocks no longer stay in cache)."""
    return torch.get_num_threads() << 22
