"""How alike two batches of maps are, per sample pair: SSIM, Spearman and Pearson correlation.

- :func:`ssim` (Wang et al., IEEE TIP 2004; computed by :func:`convscope.ops.similarity.windowed_ssim`,
  which the Gaussian-window SSIM of adaptive occlusion's report shares), as scikit-image's ``structural_similarity`` with its
  defaults and Quantus's data range: 7 x 7 uniform windows wholly inside the map, sample
  covariances (``N / (N - 1)``), ``C1 = (0.01 R)^2``, ``C2 = (0.03 R)^2`` with ``R`` the pair's
  joint range ``max(a, b) - min(a, b)``, and the mean of

  ``(2 mu_a mu_b + C1)(2 cov_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2))``

  over the windows. Two equal constant maps (``R = 0``) score 1. A map smaller than 7 px uses
  the largest odd window that fits.
- :func:`spearman`: Pearson's correlation of the values' ranks (ties share their mean rank, as
  ``scipy.stats.spearmanr``); NaN when a map is constant.
- :func:`pearson`: Pearson's correlation of the values; NaN when a map is constant.

Maps are ``[N, ...]``; SSIM needs two spatial axes (``[N, H, W]`` or ``[N, 1, H, W]``).

Example::

    ssim(maps, maps_after_randomisation)     # [N]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from convscope.errors import ConvscopeError
from convscope.evaluate.maps import as_array
from convscope.ops.similarity import windowed_ssim


def _pair(a: Any, b: Any) -> tuple[Tensor, Tensor]:
    x, y = as_array(a, "maps").double(), as_array(b, "maps").double()
    if x.shape != y.shape:
        raise ConvscopeError(f"maps of shapes {list(x.shape)} and {list(y.shape)} cannot be compared",
                             "Give two batches of maps of the same shape.")
    return x, y


def ssim(a: Any, b: Any, window: int = 7) -> Tensor:
    """``[N]``: the mean structural similarity of each pair of 2-D maps (see the module)."""
    x, y = _pair(a, b)
    if x.dim() == 4 and x.shape[1] == 1:
        x, y = x[:, 0], y[:, 0]
    if x.dim() != 3:
        raise ConvscopeError(f"SSIM compares 2-D maps, not maps of shape {list(x.shape)}",
                             "Reduce the channels first (convscope.evaluate.maps.one_channel).")
    side = min(window, *x.shape[1:])
    side -= 1 - side % 2
    both = torch.cat([x.flatten(1), y.flatten(1)], 1)
    span = both.amax(1) - both.amin(1)
    count = side * side
    scale = count / (count - 1) if count > 1 else 1.0
    s = windowed_ssim(x, y, torch.full((side,), 1.0 / side, dtype=torch.float64), span, scale)
    return torch.where(span > 0, s, 1.0).float()


def pearson(a: Any, b: Any) -> Tensor:
    """``[N]``: Pearson's correlation of each pair of maps' values (NaN for a constant map)."""
    x, y = _pair(a, b)
    return _correlation(x.flatten(1), y.flatten(1))


def _correlation(x: Tensor, y: Tensor) -> Tensor:
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    return ((x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))).float()


def mean_ranks(values: Tensor) -> Tensor:
    """``[N, P]``: the 1-based rank of each value in its row; ties share their mean rank."""
    n, p = values.shape
    sorted_values, order = torch.sort(values, dim=1, stable=True)
    new_run = torch.ones_like(sorted_values, dtype=torch.bool)
    new_run[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    run = torch.cumsum(new_run, 1) - 1 + torch.arange(n, device=values.device)[:, None] * p
    place = torch.arange(p, dtype=values.dtype, device=values.device).expand(n, p).flatten()
    first = torch.full((n * p,), float(p), dtype=values.dtype, device=values.device)
    last = torch.zeros_like(first)
    first.scatter_reduce_(0, run.flatten(), place, "amin")
    last.scatter_reduce_(0, run.flatten(), place, "amax")
    mean_place = ((first + last) / 2 + 1)[run]
    ranks = torch.empty_like(mean_place)
    ranks.scatter_(1, order, mean_place)
    return ranks


def spearman(a: Any, b: Any) -> Tensor:
    """``[N]``: Spearman's rank correlation of each pair of maps (ties: mean ranks; NaN if constant)."""
    x, y = _pair(a, b)
    return _correlation(mean_ranks(x.flatten(1)), mean_ranks(y.flatten(1)))
