"""Structural similarity (SSIM; Wang, Bovik, Sheikh & Simoncelli 2004) between two maps.

With Gaussian-weighted local means ``mu``, variances ``sigma^2`` and covariance ``sigma_ab``
(an 11x11 window of std 1.5, weights normalised to 1)::

    SSIM(a, b) = mean over positions of (2 mu_a mu_b + C1) (2 sigma_ab + C2)
                 / ((mu_a^2 + mu_b^2 + C1) (sigma_a^2 + sigma_b^2 + C2)),
    C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = the reference's range max(b) - min(b)

over the positions where the window fits inside the map (scikit-image's
``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``
crops its mean the same way). Attribution maps ``[N, C, H, W]`` are compared per sample on their
mean over channels (occlusion's channels are equal where its windows span them all).

Example::

    ssim(adaptive_maps, exact_maps)   # [N] floats, 1.0 where the maps are equal
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_window(sigma: float = 1.5, radius: int = 5) -> Tensor:
    """The normalised 1-D Gaussian of ``2 radius + 1`` taps (float64)."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim(a: Tensor, b: Tensor, data_range: float | None = None) -> Tensor:
    """Per sample, the SSIM of map ``a`` to the reference ``b`` (both ``[N, C, H, W]`` or
    ``[N, H, W]``; float64 ``[N]``). ``data_range``: ``L`` (default: each reference's range)."""
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ, {list(a.shape)} and {list(b.shape)}")
    a, b = (t.detach().double().cpu() for t in (a, b))
    if a.dim() == 4:
        a, b = a.mean(1), b.mean(1)
    g = gaussian_window()
    k = len(g)
    if a.shape[-1] < k or a.shape[-2] < k:
        raise ValueError(f"ssim: maps of {list(a.shape[-2:])} are smaller than the {k}x{k} window")

    def blur(t: Tensor) -> Tensor:
        t = F.conv2d(t[:, None], g.view(1, 1, k, 1))
        return F.conv2d(t, g.view(1, 1, 1, k))[:, 0]

    if data_range is None:
        top, bottom = b.flatten(1).amax(1), b.flatten(1).amin(1)
        span = (top - bottom).view(-1, 1, 1)
    else:
        span = torch.full((len(b), 1, 1), float(data_range), dtype=torch.float64)
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    value = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return value.flatten(1).mean(1)
