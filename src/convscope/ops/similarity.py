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


def windowed_ssim(a: Tensor, b: Tensor, taps: Tensor, span: Tensor, covariance_scale: float = 1.0) -> Tensor:
    """``[N]``: the mean SSIM of the maps ``a``, ``b`` (``[N, H, W]``, float64) over the positions
    where the separable window ``taps`` (1-D weights summing to 1, used on both axes) fits, with
    ``C1 = (0.01 span)^2``, ``C2 = (0.03 span)^2`` per sample (``span [N]``) and the variances and
    covariance times ``covariance_scale`` (``n / (n - 1)`` for scikit-image's sample covariances).

    Example: ``windowed_ssim(a, b, torch.full((7,), 1 / 7, dtype=torch.float64), span)``."""
    k = len(taps)

    def mean(t: Tensor) -> Tensor:
        t = F.conv2d(t[:, None], taps.view(1, 1, k, 1))
        return F.conv2d(t, taps.view(1, 1, 1, k))[:, 0]

    span = span.view(-1, 1, 1)
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2
    mu_a, mu_b = mean(a), mean(b)
    var_a = covariance_scale * (mean(a * a) - mu_a ** 2)
    var_b = covariance_scale * (mean(b * b) - mu_b ** 2)
    cov = covariance_scale * (mean(a * b) - mu_a * mu_b)
    value = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return value.flatten(1).mean(1)


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
    if data_range is None:
        span = b.flatten(1).amax(1) - b.flatten(1).amin(1)
    else:
        span = torch.full((len(b),), float(data_range), dtype=torch.float64)
    return windowed_ssim(a, b, g, span)
