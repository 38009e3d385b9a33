"""Turn raw attributions into display-ready maps: channel reduction, then scaling.

``P_p(v)`` below is the ``p``-th percentile of ``v`` over all pixels with linear
interpolation between order statistics (numpy's default): sorted ``v_0 <= ... <= v_{n-1}``,
rank ``r = p / 100 * (n - 1)``, ``P_p = v_floor(r) + (r - floor(r)) * (v_ceil(r) - v_floor(r))``.
``percentile=100`` is the maximum, i.e. no clipping; ``99.5`` lets the top 0.5% saturate.

Example::

    heat = normalize(grads, mode="absolute", percentile=99.5, reduce="max-abs", channel_axis=0)
    signed = normalize(ig, mode="signed")              # in [-1, 1], for a diverging map
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from convscope.errors import ConvscopeError, did_you_mean
from convscope.render.image import channels_last, to_numpy

Mode = Literal["absolute", "positive", "signed", "minmax"]
Reduce = Literal["sum", "abs-sum", "max-abs", "norm"]
MODES: tuple[str, ...] = ("absolute", "positive", "signed", "minmax")
REDUCTIONS: tuple[str, ...] = ("sum", "abs-sum", "max-abs", "norm")


def reduce_channels(
    attr: Any, reduce: Reduce = "sum", channel_axis: int | None = None
) -> np.ndarray:
    """Collapse the channels of a ``C x H x W`` or ``H x W x C`` attribution to ``H x W``.

    With ``a_c`` the channel values at one pixel:

    * ``"sum"``: ``sum_c a_c`` (keeps the sign; what input x gradient adds up to)
    * ``"abs-sum"``: ``sum_c |a_c|``
    * ``"max-abs"``: ``max_c |a_c|`` (the classic saliency map of Simonyan et al.)
    * ``"norm"``: ``sqrt(sum_c a_c^2)``

    ``channel_axis`` (0 or -1) says where the channels are; without it, the layout rule of
    :mod:`convscope.render.image` decides. A 2-D input is returned as float64, unchanged.
    Example: ``reduce_channels(np.ones((3, 2, 2)), "sum")`` is a 2x2 array of 3s.
    """
    reduce = _choice(reduce, REDUCTIONS, "channel reduction")
    a = channels_last(attr, channel_axis, channels=None).astype(np.float64)
    if reduce == "sum":
        return a.sum(axis=-1)
    if reduce == "abs-sum":
        return np.abs(a).sum(axis=-1)
    if reduce == "max-abs":
        return np.abs(a).max(axis=-1)
    return np.sqrt((a * a).sum(axis=-1))


def normalize(
    attr: Any,
    mode: Mode = "absolute",
    percentile: float = 100.0,
    reduce: Reduce = "sum",
    channel_axis: int | None = None,
) -> np.ndarray:
    """Scale an attribution map for display; returns a float64 ``H x W`` array.

    A 3-D input is first reduced with :func:`reduce_channels` (``reduce``, ``channel_axis``).
    Then, with ``p = percentile``:

    * ``"absolute"``: ``clip(|a| / P_p(|a|), 0, 1)``, in ``[0, 1]``
    * ``"positive"``: ``clip(max(a, 0) / P_p(max(a, 0)), 0, 1)``, in ``[0, 1]``
    * ``"signed"``: ``clip(a / P_p(|a|), -1, 1)``, in ``[-1, 1]`` (0 stays 0: diverging maps)
    * ``"minmax"``: ``clip((a - P_{100-p}(a)) / (P_p(a) - P_{100-p}(a)), 0, 1)`` (``p >= 50``)

    When the clip value is 0 (a sparse map whose percentile falls on zeros) the maximum is
    used instead (for ``minmax``: the full min and max); a map with no spread at all
    (all zeros, or constant for ``minmax``) gives zeros, never NaN.
    Example: ``normalize([[-2, 1], [0.5, 4]])`` is ``[[0.5, 0.25], [0.125, 1.0]]``.
    """
    mode = _choice(mode, MODES, "normalisation mode")
    if not 0.0 < percentile <= 100.0 or (mode == "minmax" and percentile < 50.0):
        low = 50 if mode == "minmax" else 0
        raise ConvscopeError(
            f"percentile={percentile} is out of range for mode {mode!r}",
            f"pass a percentile in ({low}, 100], e.g. 99.5; 100 means no clipping",
        )
    raw = to_numpy(attr)
    a = raw.astype(np.float64) if raw.ndim == 2 else reduce_channels(raw, reduce, channel_axis)
    if not np.all(np.isfinite(a)):
        raise ConvscopeError(
            "attribution contains NaN or infinite values",
            "check the method's inputs (e.g. an exploding gradient or a 0/0 in a custom target)",
        )
    if a.size == 0:
        raise ConvscopeError(f"attribution is empty (shape {a.shape})", "pass a non-empty map")
    if mode == "minmax":
        lo, hi = np.percentile(a, 100.0 - percentile), np.percentile(a, percentile)
        if hi <= lo:
            lo, hi = a.min(), a.max()
        return np.clip((a - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(a)
    magnitude = np.maximum(a, 0.0) if mode == "positive" else np.abs(a)
    clip = _clip_value(magnitude, percentile)
    if clip == 0.0:
        return np.zeros_like(a)
    if mode == "signed":
        return np.clip(a / clip, -1.0, 1.0)
    return np.clip(magnitude / clip, 0.0, 1.0)


def _clip_value(magnitude: np.ndarray, percentile: float) -> float:
    """``P_p(magnitude)``, or the maximum when that percentile is 0."""
    value = float(np.percentile(magnitude, percentile))
    return value if value > 0.0 else float(magnitude.max())


def _choice(value: str, allowed: tuple[str, ...], what: str) -> Any:
    if value not in allowed:
        raise ConvscopeError(f"unknown {what} {value!r}", did_you_mean(value, allowed, what))
    return value
