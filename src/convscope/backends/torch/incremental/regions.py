"""Feature maps that differ from the clean pass's only inside a box, and reading regions of them.

A :class:`Local` is a batch of ``B`` changed copies of a ``[C, H, W]`` map, stored as the clean
maps of the chunk's samples (``clean [S, C, H, W]``, element ``b`` belongs to sample
``sample[b]``) and, per element, the values inside its :class:`~.geometry.Box` (``patch
[B, C, h, w]``); everywhere else the element equals its sample's clean map.

:meth:`Regions.read` cuts any region out of such a batch (rows ``top[b] .. top[b] + rh - 1``,
possibly outside the map, where it reads a padding value): one row gather from the clean map
stored as channels-last *pixel rows* (``[S * H' * W', C]``, padded once per node and padding),
then the patch's pixels copied over it. The result is a channels-last ``[B, C, rh, rw]`` tensor,
the layout the CPU's convolutions prefer.

Example::

    regions = Regions(sample=np.array([0, 0]))
    x = Local(clean, Box(np.array([3, 9]), np.array([0, 4]), 5, 5), patch)  # two occluded copies
    r = regions.read(x, np.array([2, 8]), np.array([-1, 3]), 7, 7, pad=(1, 1, 1, 1))  # conv 3x3 input
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from convscope.backends.torch.incremental.geometry import Box

Pad = tuple[int, int, int, int]  # rows before, rows after, columns before, columns after


@dataclass(frozen=True)
class Local:
    """``B`` copies of a clean map, changed inside ``box`` only (see the module docstring)."""

    clean: Tensor  # [S, C, H, W]
    box: Box
    patch: Tensor  # [B, C, h, w]

    @property
    def size(self) -> tuple[int, int]:
        return int(self.clean.shape[2]), int(self.clean.shape[3])

    @property
    def whole(self) -> bool:
        """Whether the box is the whole map (the patch is then the batch itself)."""
        return self.box.covers(self.size)


def pixel_rows(t: Tensor) -> Tensor:
    """``t [N, C, H, W]`` as ``[N * H * W, C]`` (a view where ``t`` is channels-last)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


class Regions:
    """Region reads for one chunk, whose element ``b`` belongs to the chunk's sample ``sample[b]``.

    Padded pixel rows of each clean map are built once per node and padding (:meth:`source`) and
    kept in ``sources`` (shared by the chunks of the same samples); ``gathered`` counts the bytes
    the reads copied."""

    def __init__(self, sample: np.ndarray, sources: dict[Hashable, tuple[Tensor, int, int]] | None = None) -> None:
        self.sample = sample
        self._sources = {} if sources is None else sources
        self.gathered = 0

    def source(self, key: Hashable, clean: Tensor, pad: Pad, value: float) -> tuple[Tensor, int, int]:
        """``clean`` padded by ``pad`` with ``value``, as pixel rows, with its padded height and width."""
        found = self._sources.get((key, pad, value))
        if found is None:
            t, b, left, right = pad
            padded = F.pad(clean, (left, right, t, b), value=value) if any(pad) else clean
            found = (pixel_rows(padded).contiguous(), int(padded.shape[2]), int(padded.shape[3]))
            self._sources[(key, pad, value)] = found
        return found

    def read(self, x: Local, top: np.ndarray, left: np.ndarray, rh: int, rw: int, *, key: Hashable,
             pad: Pad = (0, 0, 0, 0), value: float = 0.0, overlay: bool = True) -> Tensor:
        """Per element, rows ``[top, top + rh)`` and columns ``[left, left + rw)`` of ``x``
        (``[B, C, rh, rw]``, channels-last), positions outside the map reading ``value``. ``pad``
        bounds how far outside any read of this node goes (the same for every chunk);
        ``overlay=False`` reads the clean maps alone."""
        n, c = len(top), int(x.clean.shape[1])
        if overlay and x.whole and len(set(top.tolist())) == 1 and len(set(left.tolist())) == 1:
            return self._shifted(x.patch, int(top[0]), int(left[0]), rh, rw, value)
        rows = top[:, None] + np.arange(rh)  # [B, rh]
        cols = left[:, None] + np.arange(rw)
        in_rows = rows - x.box.top[:, None]
        in_cols = cols - x.box.left[:, None]
        inside = (((in_rows >= 0) & (in_rows < x.box.h))[:, :, None]
                  & ((in_cols >= 0) & (in_cols < x.box.w))[:, None, :]) if overlay else np.zeros(1, bool)
        device = x.patch.device
        patch_index = None
        if inside.any():
            patch_index = ((np.arange(n)[:, None, None] * x.box.h + in_rows[:, :, None]) * x.box.w
                           + in_cols[:, None, :])
        if patch_index is not None and inside.all():
            out = pixel_rows(x.patch).index_select(0, _index(patch_index.ravel(), device))
        else:
            source, hp, wp = self.source(key, x.clean, pad, value)
            index = (self.sample[:, None, None] * hp + rows[:, :, None] + pad[0]) * wp + cols[:, None, :] + pad[2]
            out = source.index_select(0, _index(index.ravel(), device))
            if patch_index is not None:
                where = np.flatnonzero(inside)
                out.index_copy_(0, _index(where, device),
                                pixel_rows(x.patch).index_select(0, _index(patch_index.ravel()[where], device)))
        self.gathered += out.numel() * out.element_size()
        return out.view(n, rh, rw, c).permute(0, 3, 1, 2)

    def whole(self, x: Local, key: Hashable) -> Tensor:
        """``x`` as a plain batch ``[B, C, H, W]``."""
        if x.whole:
            return x.patch
        zeros = np.zeros(len(x.box.top), np.int64)
        return self.read(x, zeros, zeros, *x.size, key=key)

    def _shifted(self, t: Tensor, top: int, left: int, rh: int, rw: int, value: float) -> Tensor:
        """Rows ``[top, top + rh)``, columns ``[left, left + rw)`` of every map of ``t``, padded with ``value``."""
        h, w = int(t.shape[2]), int(t.shape[3])
        pad = (max(0, -left), max(0, left + rw - w), max(0, -top), max(0, top + rh - h))
        if any(pad):
            t = F.pad(t, pad, value=value)
            self.gathered += t.numel() * t.element_size()
        top, left = top + pad[2], left + pad[0]
        return t[:, :, top:top + rh, left:left + rw]


def _index(a: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)
