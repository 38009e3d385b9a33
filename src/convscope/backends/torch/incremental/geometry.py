"""Where a local change of a feature map can travel: boxes, and sliding windows along one axis.

A :class:`Box` holds one rectangle per element of a batch, all of one size: element ``b``
covers rows ``top[b] .. top[b] + h - 1`` and columns ``left[b] .. left[b] + w - 1``. Boxes of
different sizes (a window cut off at the image edge, a union) are made one size by
:func:`fit`: the largest, shifted inside the map. A bigger box only recomputes values that did
not change, so exactness never depends on the size chosen.

A sliding window op (convolution, pooling) along one axis of input size ``n`` reads, for output
``o``, the inputs ``o s - p .. o s - p + (k - 1) d`` (:class:`Axis`). So a change on inputs
``[lo, hi)`` reaches the outputs ``ceil((lo + p - span + 1) / s) .. floor((hi - 1 + p) / s)``
(the *projective field*, ``span = (k - 1) d + 1``), clipped to the output, and recomputing
outputs ``[o, o + m)`` reads inputs ``[o s - p, (o + m - 1) s - p + span)``.

Example::

    axis = Axis(kernel=3, stride=2, pad=1, dilation=1, size=224, out=112)
    axis.changed(np.array([100]), np.array([116]))   # -> ([50], [58]): outputs 50..57 may change
    axis.reads(np.array([50]), 8)                     # -> ([99], 17): they read inputs 99..115
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Box:
    """Per element ``b``: rows ``[top[b], top[b] + h)``, columns ``[left[b], left[b] + w)``."""

    top: np.ndarray
    left: np.ndarray
    h: int
    w: int

    def covers(self, size: tuple[int, int]) -> bool:
        """Whether every element's box is the whole ``size`` map."""
        return self.h == size[0] and self.w == size[1]

    def same(self, other: Box) -> bool:
        return (self.h == other.h and self.w == other.w and np.array_equal(self.top, other.top)
                and np.array_equal(self.left, other.left))

    @staticmethod
    def whole(n: int, size: tuple[int, int]) -> Box:
        zeros = np.zeros(n, np.int64)
        return Box(zeros, zeros, size[0], size[1])


def fit(lo: np.ndarray, hi: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """Intervals ``[lo, hi)`` made one length (the longest, at least 1), shifted into ``[0, size)``."""
    length = int(min(max(int((hi - lo).max(initial=1)), 1), size))
    return np.clip(lo, 0, size - length), length


def box_of(top: np.ndarray, bottom: np.ndarray, left: np.ndarray, right: np.ndarray, size: tuple[int, int]) -> Box:
    """The :class:`Box` (one size, inside ``size``) holding rows ``[top, bottom)``, columns ``[left, right)``."""
    t, h = fit(top, bottom, size[0])
    lft, w = fit(left, right, size[1])
    return Box(t, lft, h, w)


def union(boxes: list[Box], size: tuple[int, int]) -> Box:
    """Per element, the smallest box holding all of ``boxes`` (made one size by :func:`fit`)."""
    top = np.min([b.top for b in boxes], axis=0)
    left = np.min([b.left for b in boxes], axis=0)
    bottom = np.max([b.top + b.h for b in boxes], axis=0)
    right = np.max([b.left + b.w for b in boxes], axis=0)
    return box_of(top, bottom, left, right, size)


@dataclass(frozen=True)
class Axis:
    """A sliding window along one axis: ``kernel``, ``stride``, ``pad`` (before the first input),
    ``dilation``; ``size`` inputs, ``out`` outputs (as the op produced them)."""

    kernel: int
    stride: int
    pad: int
    dilation: int
    size: int
    out: int

    @property
    def span(self) -> int:
        """Inputs one output reads, from first to last: ``(kernel - 1) dilation + 1``."""
        return (self.kernel - 1) * self.dilation + 1

    @property
    def pad_after(self) -> int:
        """Padding the last output reads beyond the input (ceil mode may read past ``pad``)."""
        return max(0, (self.out - 1) * self.stride - self.pad + self.span - self.size)

    def changed(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The outputs ``[first, last + 1)`` that read any input of ``[lo, hi)`` (may be empty)."""
        first = -((self.span - 1 - self.pad - lo) // self.stride)  # ceil((lo + pad - span + 1) / stride)
        last = (hi - 1 + self.pad) // self.stride
        return np.clip(first, 0, self.out), np.clip(last + 1, 0, self.out)

    def reads(self, start: np.ndarray, length: int) -> tuple[np.ndarray, int]:
        """The inputs ``[first, first + count)`` read by outputs ``[start, start + length)``."""
        return start * self.stride - self.pad, (length - 1) * self.stride + self.span


def intersect(a: Box, b: Box, size: tuple[int, int]) -> Box:
    """Per element, a box holding the overlap of ``a`` and ``b`` (made one size by :func:`fit`;
    where they do not overlap, some box of at least one position)."""
    top, left = np.maximum(a.top, b.top), np.maximum(a.left, b.left)
    bottom, right = np.minimum(a.top + a.h, b.top + b.h), np.minimum(a.left + a.w, b.left + b.w)
    return box_of(top, np.maximum(bottom, top), left, np.maximum(right, left), size)


@dataclass(frozen=True)
class Cap:
    """Krypton's projective-field threshold (Nakandala et al., SIGMOD 2019): at every node a
    change is kept only inside a box of ``ceil(tau * side)`` positions per side, centred where
    element ``b``'s input change is centred (``centre_y[b]``, ``centre_x[b]``: fractions of the
    input's height and width); outside it the node keeps its clean value. An approximation that
    depends only on ``tau`` and each element's own change (never on the batch it runs in);
    ``tau = 1`` keeps everything (exact).

    Example: ``Cap(0.5, np.array([0.5]), np.array([0.25])).box((14, 14))`` -> rows 4..10, columns 0..6.
    """

    tau: float
    centre_y: np.ndarray
    centre_x: np.ndarray

    def box(self, size: tuple[int, int]) -> Box:
        """Each element's kept box on a map of ``size``."""
        h, w = (max(1, min(n, int(np.ceil(self.tau * n)))) for n in size)
        top = np.clip(np.floor(self.centre_y * size[0] - h / 2 + 0.5).astype(np.int64), 0, size[0] - h)
        left = np.clip(np.floor(self.centre_x * size[1] - w / 2 + 0.5).astype(np.int64), 0, size[1] - w)
        return Box(top, left, h, w)

    def inside(self, out: Box, size: tuple[int, int]) -> np.ndarray | None:
        """``[B, 1, out.h, out.w]`` bool: which positions of ``out`` lie in the kept box, or None
        where all do."""
        keep = self.box(size)
        rows = out.top[:, None] + np.arange(out.h) - keep.top[:, None]
        cols = out.left[:, None] + np.arange(out.w) - keep.left[:, None]
        in_rows, in_cols = (rows >= 0) & (rows < keep.h), (cols >= 0) & (cols < keep.w)
        if in_rows.all() and in_cols.all():
            return None
        return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
