"""Histograms of oriented gradients (Dalal & Triggs, CVPR 2005) of maps, batched, and their similarity.

:func:`hog` equals ``skimage.feature.hog(m, orientations, pixels_per_cell, cells_per_block,
block_norm="L2-Hys", feature_vector=True)`` for each 2-D map ``m``, for a whole batch at once:

1. gradients by central differences, 0 on the border rows/columns:
   ``g_r[i, j] = m[i+1, j] - m[i-1, j]``, ``g_c[i, j] = m[i, j+1] - m[i, j-1]``;
2. magnitude ``hypot(g_c, g_r)``, orientation ``deg(atan2(g_r, g_c)) mod 180`` in ``orientations``
   hard bins of ``180 / orientations`` degrees (no interpolation, as scikit-image);
3. per cell of ``pixels_per_cell`` pixels (cells from the top-left corner; rows and columns
   beyond the last whole cell are left out): the sum of the magnitudes in each bin over the cell
   area;
4. per block of ``cells_per_block`` cells (stride one cell), L2-Hys: ``v / sqrt(|v|^2 + eps^2)``,
   clipped at 0.2, normalised again the same way (``eps = 1e-5``);
5. the vector of all blocks, in scikit-image's order ``[block_row, block_col, cell_row, cell_col,
   orientation]``.

:func:`hog_similarity` is Pearson's correlation of the two maps' HOG vectors, the comparison
Adebayo et al. ("Sanity Checks for Saliency Maps", NeurIPS 2018) report beside SSIM and rank
correlation. ``pixels_per_cell=None`` uses 8 x 8 cells, or ``min(H, W) // 2`` for maps smaller than
16 px, so that one 2 x 2 block fits. The computation runs in float64; results are ``[N]``. Cost:
no model pass (it compares maps already made).

Example::

    hog(maps).shape                         # [N, 9 * 2 * 2 * blocks] for [N, H, W] maps
    hog_similarity(maps, maps_randomised)   # [N], in [-1, 1]; NaN for a constant map's zero HOG
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from convscope.errors import ConvscopeError
from convscope.evaluate.maps import as_array
from convscope.evaluate.similarity import pearson

EPS = 1e-5


def _planes(maps: Any) -> Tensor:
    m = as_array(maps, "maps").double()
    if m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.dim() != 3:
        raise ConvscopeError(f"HOG describes 2-D maps, not maps of shape {list(m.shape)}",
                             "Give [N, H, W] or [N, 1, H, W] maps (sum the channels first: evaluate.maps.one_channel).")
    return m


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
        raise ConvscopeError(f"{name}={value!r} is not a pair of positive ints", f"Use e.g. {name}=(8, 8).")
    return pair  # type: ignore[return-value]


def default_cell(height: int, width: int) -> tuple[int, int]:
    """8 x 8 pixels, or ``min(H, W) // 2`` for maps under 16 px (one 2 x 2 block then fits)."""
    side = min(8, min(height, width) // 2)
    if side < 1:
        raise ConvscopeError(f"maps of {height} x {width} px are too small for HOG", "Compare maps of at least 2 x 2 px.")
    return side, side


def hog(maps: Any, orientations: int = 9, pixels_per_cell: int | tuple[int, int] | None = None,
        cells_per_block: int | tuple[int, int] = (2, 2)) -> Tensor:
    """``[N, D]``: the L2-Hys HOG feature vector of each 2-D map (see the module)."""
    m = _planes(maps)
    n, height, width = m.shape
    c_row, c_col = default_cell(height, width) if pixels_per_cell is None else _pair(pixels_per_cell, "pixels_per_cell")
    b_row, b_col = _pair(cells_per_block, "cells_per_block")
    if not isinstance(orientations, int) or orientations < 1:
        raise ConvscopeError(f"orientations={orientations!r} must be a positive int", "Use e.g. orientations=9.")
    rows, cols = height // c_row, width // c_col
    if rows < b_row or cols < b_col:
        raise ConvscopeError(f"maps of {height} x {width} px hold no block of {b_row} x {b_col} cells of "
                             f"{c_row} x {c_col} px", f"Use smaller cells (e.g. pixels_per_cell={default_cell(height, width)}).")
    g_row, g_col = torch.zeros_like(m), torch.zeros_like(m)
    g_row[:, 1:-1] = m[:, 2:] - m[:, :-2]
    g_col[:, :, 1:-1] = m[:, :, 2:] - m[:, :, :-2]
    magnitude = torch.hypot(g_col, g_row)
    angle = torch.remainder(torch.atan2(g_row, g_col) * (180 / math.pi), 180)
    # scikit-image's bin edges are single-precision floats; an angle rounded up to 180 votes nowhere
    edges = torch.tensor([180 / orientations * i for i in range(1, orientations + 1)], dtype=torch.float32)
    edges = edges.to(m.device, torch.float64)
    bins = (angle[..., None] >= edges).sum(-1)
    votes = torch.where(bins < orientations, magnitude, 0.0)
    used = (torch.arange(height) < rows * c_row)[:, None] & (torch.arange(width) < cols * c_col)
    row_cell = (torch.arange(height) // c_row).clamp(max=rows - 1)
    cell = row_cell[:, None] * cols + (torch.arange(width) // c_col).clamp(max=cols - 1)
    index = (cell.to(m.device) * orientations + bins.clamp(max=orientations - 1)).flatten(1)
    weights = (votes * used.to(m.device)).flatten(1)
    hist = torch.zeros(n, rows * cols * orientations, dtype=m.dtype, device=m.device).scatter_add_(1, index, weights)
    hist = hist.view(n, rows, cols, orientations) / (c_row * c_col)
    blocks = hist.unfold(1, b_row, 1).unfold(2, b_col, 1).permute(0, 1, 2, 4, 5, 3)
    flat = blocks.reshape(*blocks.shape[:3], -1)
    flat = flat / torch.sqrt((flat * flat).sum(-1, keepdim=True) + EPS ** 2)
    flat = flat.clamp(max=0.2)
    flat = flat / torch.sqrt((flat * flat).sum(-1, keepdim=True) + EPS ** 2)
    return flat.reshape(n, -1)


def hog_similarity(a: Any, b: Any, orientations: int = 9, pixels_per_cell: int | tuple[int, int] | None = None,
                   cells_per_block: int | tuple[int, int] = (2, 2)) -> Tensor:
    """``[N]``: Pearson's correlation of the HOG vectors of each pair of 2-D maps (see the module)."""
    x, y = _planes(a), _planes(b)
    if x.shape != y.shape:
        raise ConvscopeError(f"maps of shapes {list(x.shape)} and {list(y.shape)} cannot be compared",
                             "Give two batches of maps of the same shape.")
    return pearson(hog(x, orientations, pixels_per_cell, cells_per_block),
                   hog(y, orientations, pixels_per_cell, cells_per_block))
