"""Max-pool geometry and the :class:`Switches` record that :func:`~convscope.ops.unpool` needs.

For one spatial axis of size ``n`` with kernel ``k``, stride ``s``, padding ``p`` and dilation
``d``, window ``o`` reads the input positions ``o*s - p + j*d`` for ``j = 0 .. k-1`` and there are

    out = floor((n + 2p - d(k-1) - 1 + (s-1 if ceil_mode else 0)) / s) + 1

windows, minus one when ``ceil_mode`` would start the last window past the input
(``(out-1)*s >= n + p``), exactly as PyTorch counts them. A configuration is rejected when
``p > k // 2`` (PyTorch's own rule), when ``out < 1``, or when some window reads padding only:
PyTorch then returns ``-inf`` with an out-of-range index whose backward writes out of bounds.

Example::

    check_pool_geometry((7, 7), (3, 3), (2, 2), (1, 1), (1, 1), ceil_mode=True)  # -> (4, 4)
    check_pool_geometry((1,), (2,), (1,), (1,), (2,), ceil_mode=False)  # ConvscopeError
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from convscope.errors import ConvscopeError

IntOrTuple = int | Sequence[int]


def as_tuple(value: IntOrTuple, dims: int, name: str) -> tuple[int, ...]:
    """``value`` repeated to ``dims`` ints (an int) or checked to hold ``dims`` ints (a sequence)."""
    try:
        if isinstance(value, str):
            raise TypeError(name)
        items = [operator.index(value)] * dims if not isinstance(value, Sequence) else [operator.index(v) for v in value]
    except TypeError:
        raise ConvscopeError(f"{name}={value!r} is not an int or a tuple of ints",
                             f"Pass {name} as an int or a tuple of {dims} ints.") from None
    if len(items) != dims:
        raise ConvscopeError(f"{name}={tuple(items)} has {len(items)} entries for {dims}-D pooling",
                             f"Give {name} one entry per spatial axis ({dims}), or a single int.")
    return tuple(items)


def pooled_size(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """Number of pooling windows along one axis (PyTorch's formula; may be < 1 for bad input)."""
    span = n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    out = span // s + 1  # floor division, like PyTorch's div_rtn
    if ceil_mode and out > 0 and (out - 1) * s >= n + p:
        out -= 1
    return out


def padding_only_window(n: int, k: int, s: int, p: int, d: int, out: int) -> int | None:
    """The first window along one axis that reads no input position, or None.

    A window that starts at ``start >= 0`` holds its first tap, so only the windows that start in
    the left padding (``o*s < p``) and the last one (which ``ceil_mode`` may push right) can miss.
    """
    candidates = set(range(min(out, p // s + 1))) | {out - 1}
    for o in sorted(candidates):
        start = o * s - p
        if not any(0 <= start + j * d < n for j in range(k)):
            return o
    return None


def check_pool_geometry(spatial: Sequence[int], kernel_size: Sequence[int], stride: Sequence[int],
                        padding: Sequence[int], dilation: Sequence[int], ceil_mode: bool) -> tuple[int, ...]:
    """The pooled spatial shape, after rejecting every configuration PyTorch mishandles."""
    out = []
    for axis, (n, k, s, p, d) in enumerate(zip(spatial, kernel_size, stride, padding, dilation, strict=True)):
        where = f"spatial axis {axis}"
        if k < 1 or s < 1 or d < 1 or p < 0:
            raise ConvscopeError(f"invalid pooling parameters on {where}: kernel_size={k}, stride={s}, "
                                 f"padding={p}, dilation={d}",
                                 "kernel_size, stride and dilation must be >= 1 and padding >= 0.")
        if p > k // 2:
            raise ConvscopeError(f"padding={p} is more than half the kernel size {k} on {where}",
                                 f"Use padding <= {k // 2} (PyTorch's max-pool requires padding <= kernel_size // 2).")
        o = pooled_size(n, k, s, p, d, ceil_mode)
        if o < 1:
            raise ConvscopeError(f"the input size {n} on {where} is too small for a window of extent "
                                 f"{d * (k - 1) + 1} (kernel {k}, dilation {d}) with padding {p}: no window fits",
                                 "Use a larger input, a smaller kernel or dilation, or more padding.")
        bad = padding_only_window(n, k, s, p, d, o)
        if bad is not None:
            raise ConvscopeError(f"pooling window {bad} on {where} (size {n}, kernel {k}, stride {s}, padding {p}, "
                                 f"dilation {d}, ceil_mode={ceil_mode}) covers only padding, so it has no maximum",
                                 "Use less padding, a smaller dilation or ceil_mode=False; PyTorch would return "
                                 "-inf there with an out-of-range switch.")
        out.append(o)
    return tuple(out)


def windows_overlap(kernel_size: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> bool:
    """Whether two windows can read the same input position (then unpooling must add, not write).

    Windows ``o1 != o2`` share a tap when ``(o1 - o2) * s == (j2 - j1) * d`` for taps ``|j2 - j1| < k``,
    i.e. when some ``m*d`` with ``1 <= m < k`` is a multiple of ``s``: 3x3 stride 2 overlaps,
    2x2 stride 2 does not, nor does kernel 3, dilation 2, stride 3 (taps 0,2,4 / 3,5,7 / ...).
    """
    return any(m * d % s == 0 for k, s, d in zip(kernel_size, stride, dilation, strict=True) for m in range(1, k))


@dataclass(frozen=True, eq=False)
class Switches:
    """Where each max came from: what :func:`~convscope.ops.unpool` needs to put values back.

    ``indices[n, c, *o]`` is the flat index, within the input's spatial plane (``h * W + w`` in 2-D),
    of the maximum of window ``o`` — the index PyTorch's max-pool returns, so ties resolve as in
    PyTorch. ``input_shape`` is ``(N, C, *spatial)`` of the pooled input; the pooling parameters are
    stored one int per spatial axis. Construction checks shapes, dtype and geometry in O(1); the
    index range is scanned once, lazily, on the first :func:`~convscope.ops.unpool` (never for
    records made by :func:`~convscope.ops.max_pool_with_switches`, whose indices PyTorch
    produced), and again only if ``indices`` is modified in place.

    Example::

        pooled, sw = max_pool_with_switches(x, 3, stride=2)
        sw.input_shape, sw.overlapping  # torch.Size([8, 64, 55, 55]), True
    """

    indices: torch.Tensor
    input_shape: torch.Size
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    ceil_mode: bool = False
    _checked_version: int | None = field(default=None, init=False, repr=False)

    def __repr__(self) -> str:
        idx = self.indices
        return (f"Switches(indices=int64{list(idx.shape)} on {idx.device}, input_shape={tuple(self.input_shape)}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode})")

    def __post_init__(self) -> None:
        if not isinstance(self.indices, torch.Tensor) or self.indices.dtype != torch.int64:
            got = self.indices.dtype if isinstance(self.indices, torch.Tensor) else type(self.indices).__name__
            raise ConvscopeError(f"switch indices must be an int64 tensor, got {got}",
                                 "Build switches with max_pool_with_switches, or pass the int64 indices that "
                                 "F.max_pool2d(..., return_indices=True) returns.")
        try:
            object.__setattr__(self, "input_shape", torch.Size(self.input_shape))
        except TypeError:
            raise ConvscopeError(f"input_shape {self.input_shape!r} is not a sequence of ints",
                                 "Record x.shape of the pooled input.") from None
        dims = len(self.input_shape) - 2
        if dims not in (1, 2, 3):
            raise ConvscopeError(f"input_shape {tuple(self.input_shape)} is not (N, C, *spatial) with 1 to 3 "
                                 "spatial axes", "Record the full batched shape x.shape of the pooled input.")
        for name in ("kernel_size", "stride", "padding", "dilation"):
            object.__setattr__(self, name, as_tuple(getattr(self, name), dims, name))
        object.__setattr__(self, "ceil_mode", bool(self.ceil_mode))
        pooled = check_pool_geometry(self.input_shape[2:], self.kernel_size, self.stride, self.padding,
                                     self.dilation, self.ceil_mode)
        expected = torch.Size((*self.input_shape[:2], *pooled))
        if self.indices.shape != expected:
            raise ConvscopeError(f"switch indices have shape {tuple(self.indices.shape)}, but pooling an input of "
                                 f"shape {tuple(self.input_shape)} with these parameters gives {tuple(expected)}",
                                 "Use the indices and parameters of one and the same max-pool call.")

    @property
    def pooled_shape(self) -> torch.Size:
        """Shape of the pooled output, which is the shape ``unpool`` expects its values to have."""
        return self.indices.shape

    @property
    def plane_size(self) -> int:
        """Number of positions in one spatial plane of the input (indices lie in ``[0, plane_size)``)."""
        return math.prod(self.input_shape[2:])

    @property
    def overlapping(self) -> bool:
        """Whether one input position can be the switch of several windows (see windows_overlap)."""
        return windows_overlap(self.kernel_size, self.stride, self.dilation)

    def check_indices(self) -> None:
        """Raise unless every index lies in ``[0, plane_size)``; a no-op when already verified.

        Cost: one min/max pass over ``indices`` the first time and after in-place changes,
        otherwise O(1) (it compares the tensor's version counter).
        """
        version = self.indices._version
        if self._checked_version == version or self.indices.numel() == 0:
            return
        low, high = (int(v) for v in torch.aminmax(self.indices))
        if low < 0 or high >= self.plane_size:
            raise ConvscopeError(f"switch indices range over [{low}, {high}], outside the input plane "
                                 f"[0, {self.plane_size - 1}] of shape {tuple(self.input_shape[2:])}",
                                 "The indices do not belong to this input shape: use the record that "
                                 "max_pool_with_switches returned for this input.")
        object.__setattr__(self, "_checked_version", version)

    def _trust_indices(self) -> None:
        """Mark the current indices as in range (they come straight from PyTorch's max-pool)."""
        object.__setattr__(self, "_checked_version", self.indices._version)
