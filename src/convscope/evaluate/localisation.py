"""Localisation metrics: does an attribution map point at the object?

- :func:`pointing_game`: per sample, a hit when the map's maximum lies inside the object mask
  (Zhang et al. 2016; strict by default, ``tolerance=r`` accepts a maximum within ``r`` pixels
  (Euclidean) of the mask, as their 15 pixels on ~224 px images). Ties: when several positions
  share the maximum, *every* one of them must be accepted, so a constant map (all zero, say)
  only hits when the mask covers the whole image.
  ``tolerance="standard"`` is Zhang et al.'s protocol: 15 px at 224 px, scaled with the
  image's shorter side (:func:`standard_tolerance`). Quantus's ``PointingGame`` has no tolerance
  and counts a hit when *any* maximum is inside; on maps with one maximum the two agree.
- :func:`centre_maps`: the baseline that always points at the image centre (Zhang et al.'s
  "center" baseline), to print beside every pointing game: a method that does not beat it has
  not shown that it localises.
- :func:`class_mean`: Zhang et al.'s accuracy, the mean over classes of each class's mean.
- :func:`mass_inside`: per sample, the fraction of positive attribution mass inside the mask,
  ``sum(relu(map) * mask) / sum(relu(map))`` (Arras et al.'s relevance mass accuracy, 2022,
  on positive relevance); NaN for a map with no positive mass (average with ``torch.nanmean``).
- :func:`rank_inside`: Arras et al.'s relevance rank accuracy: with ``K`` the mask's size, the
  fraction of the map's ``K`` highest positions that lie inside it (ties: the earlier position
  ranks first); NaN for an empty mask.

``maps`` are ``[N, 1, H, W]`` or ``[N, H, W]`` (tensors or arrays; reduce several channels first,
e.g. ``maps.abs().sum(1, keepdim=True)``); ``masks`` are ``[N, H, W]`` (or ``[N, 1, H, W]``),
bool or 0/1, at the maps' resolution.

Example::

    images, masks, labels = Shapes(500, seed=2).arrays()
    maps = GradCAM(model).attribute(preset.to_tensor(images), torch.from_numpy(labels))
    accuracy = pointing_game(maps, masks).float().mean()
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from convscope.errors import ConvscopeError

ArrayLike = Tensor | np.ndarray


def _flat_pair(maps: ArrayLike, masks: ArrayLike) -> tuple[Tensor, Tensor]:
    """``maps`` as float ``[N, H*W]`` and ``masks`` as bool ``[N, H*W]``, after checking their shapes."""
    m = torch.as_tensor(maps).detach()
    k = torch.as_tensor(masks).detach()
    if m.dim() == 4:
        if m.shape[1] != 1:
            raise ConvscopeError(f"the maps have {m.shape[1]} channels (shape {list(m.shape)}); a localisation "
                                 "metric needs one value per pixel",
                                 "Reduce the channels first, e.g. maps.abs().sum(1, keepdim=True).")
        m = m[:, 0]
    if k.dim() == 4 and k.shape[1] == 1:
        k = k[:, 0]
    if m.dim() != 3 or k.shape != m.shape:
        raise ConvscopeError(f"maps of shape {list(torch.as_tensor(maps).shape)} do not match masks of shape "
                             f"{list(torch.as_tensor(masks).shape)}",
                             "Give maps [N, 1, H, W] or [N, H, W] and masks [N, H, W] of the same N, H and W "
                             "(upsample the maps to the masks' size).")
    if not m.is_floating_point():
        m = m.float()
    if bool(torch.isnan(m).any()):
        raise ConvscopeError("the maps contain NaN", "Check the attribution (a NaN has no position to point at).")
    return m.flatten(1), (k != 0).flatten(1).to(m.device)


def dilate(masks: Tensor, radius: float) -> Tensor:
    """Bool ``[N, H, W]``: the positions within Euclidean distance ``radius`` of a True of ``masks``."""
    r = int(radius)
    if r < 1:
        return masks
    offsets = torch.arange(-r, r + 1, dtype=torch.float32)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2).float()[None, None]
    hits = torch.nn.functional.conv2d(masks[:, None].float(), disk.to(masks.device), padding=r)
    return hits[:, 0] > 0.5


def standard_tolerance(height: int, width: int) -> float:
    """Zhang et al.'s 15 px at 224 px, scaled with the shorter side: ``15 * min(H, W) / 224``."""
    return 15.0 * min(height, width) / 224.0


def pointing_game(maps: ArrayLike, masks: ArrayLike, tolerance: float | str = 0.0) -> Tensor:
    """Bool ``[N]``: whether every position of each map's maximum lies inside its mask (or within
    ``tolerance`` pixels of it; ``"standard"``: :func:`standard_tolerance`).

    Example: ``pointing_game(maps, masks).float().mean()`` is the pointing-game accuracy.
    """
    if tolerance == "standard":
        tolerance = standard_tolerance(*torch.as_tensor(masks).shape[-2:])
    if isinstance(tolerance, str) or not tolerance >= 0:
        raise ConvscopeError(f"tolerance={tolerance!r} must be >= 0 or 'standard'",
                             "Give a distance in pixels, e.g. tolerance=4, or 'standard' (15 px at 224 px).")
    m, k = _flat_pair(maps, masks)
    if tolerance >= 1:
        height, width = torch.as_tensor(masks).shape[-2:]
        k = dilate(k.view(-1, height, width), tolerance).flatten(1)
    at_peak = m == m.amax(1, keepdim=True)
    return ~(at_peak & ~k).any(1)


def mass_inside(maps: ArrayLike, masks: ArrayLike) -> Tensor:
    """Float ``[N]``: ``sum(relu(map) * mask) / sum(relu(map))`` (NaN where a map has no positive mass).

    Example: ``torch.nanmean(mass_inside(maps, masks))``.
    """
    m, k = _flat_pair(maps, masks)
    positive = torch.relu(m)
    return (positive * k).sum(1) / positive.sum(1)


def rank_inside(maps: ArrayLike, masks: ArrayLike) -> Tensor:
    """Float ``[N]``: the fraction of each map's ``K = |mask|`` highest positions inside the mask.

    Example: ``rank_inside(maps, masks).nanmean()``.
    """
    m, k = _flat_pair(maps, masks)
    size = k.sum(1)
    order = torch.argsort(-m, dim=1, stable=True)
    top = torch.arange(m.shape[1], device=m.device)[None] < size[:, None]
    inside = (k.gather(1, order) & top).sum(1)
    return torch.where(size > 0, inside / size.clamp_min(1), torch.nan)


def centre_maps(n: int, height: int, width: int) -> Tensor:
    """``[n, 1, height, width]`` maps peaking at the image centre (``-`` the distance to it): the
    pointing game's centre baseline (with an even side, the middle two rows or columns tie)."""
    rows = torch.arange(height, dtype=torch.float32) - (height - 1) / 2
    cols = torch.arange(width, dtype=torch.float32) - (width - 1) / 2
    distance = rows[:, None] ** 2 + cols[None, :] ** 2
    return (-distance).expand(n, 1, height, width)


def class_mean(values: ArrayLike, classes: ArrayLike) -> float:
    """The mean over classes of each class's mean of ``values [N]`` (NaNs left out), Zhang et al.'s
    accuracy; NaN when no class has a value."""
    v = torch.as_tensor(values).detach().float().cpu()
    c = torch.as_tensor(classes).detach().cpu()
    means = [torch.nanmean(v[c == k]) for k in torch.unique(c)]
    kept = [float(m) for m in means if not torch.isnan(m)]
    return sum(kept) / len(kept) if kept else float("nan")
