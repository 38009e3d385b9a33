"""How an attribution map is shown: its display kind, a [0, 1] heat map, and what the colours mean.

Every method declares one kind (``Method.display``; :func:`convscope.methods.display_kind` reads
it, following wrappers to the method they wrap). With ``a`` the map (``C x H x W``, or ``H x W``)
and ``P`` the 99.5th percentile over the pixels (see :func:`convscope.render.normalize`):

* ``"magnitude"``: ``m = sum_c |a_c|``, shown as ``clip(m / P(m), 0, 1)``. For signed maps whose
  sign is noisy (gradients, integrated gradients, deconvnet);
* ``"positive"``: ``s = sum_c a_c``, shown as ``clip(max(s, 0) / P(max(s, 0)), 0, 1)``: only the
  evidence for the target (the CAM family, occlusion's score drop);
* ``"relative"``: ``s = sum_c a_c``, shown as ``(s - min s) / (max s - min s)``: for maps whose
  values all sit near a common level, so that only their differences mean something (RISE's
  expected score with a pixel kept is near the mean score everywhere; 0..max would look flat).

A map with no spread (all zero; constant for ``"relative"``) gives zeros, never NaN.

Example::

    h = heat(maps[0], "relative")             # H x W in [0, 1]
    low, high = DISPLAYS["relative"].low, DISPLAYS["relative"].high   # colour-bar end labels
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from convscope.errors import ConvscopeError, did_you_mean
from convscope.render.image import to_numpy
from convscope.render.normalize import Mode, Reduce, normalize

DisplayKind = Literal["magnitude", "positive", "relative"]
PERCENTILE = 99.5


@dataclass(frozen=True)
class Display:
    """One display kind: the channel reduction and scaling of :func:`heat`, and the colour bar's
    end labels (``low`` is heat 0, ``high`` heat 1) with a one-line ``meaning``."""

    kind: str
    reduce: Reduce
    mode: Mode
    percentile: float
    low: str
    high: str
    meaning: str


DISPLAYS: dict[str, Display] = {
    d.kind: d
    for d in (
        Display("magnitude", "abs-sum", "positive", PERCENTILE, "0", "99.5th percentile",
                "|attribution| summed over colour"),
        Display("positive", "sum", "positive", PERCENTILE, "0 or less", "99.5th percentile",
                "positive attribution (evidence for the class)"),
        Display("relative", "sum", "minmax", 100.0, "lowest", "highest",
                "attribution relative to the map's own range"),
    )
}
DISPLAY_KINDS: tuple[str, ...] = tuple(DISPLAYS)


def get_display(kind: str) -> Display:
    """The :class:`Display` of ``kind`` (a clear error naming the kinds for an unknown one)."""
    if kind not in DISPLAYS:
        raise ConvscopeError(f"unknown display kind {kind!r}", did_you_mean(kind, DISPLAY_KINDS, "display kind"))
    return DISPLAYS[kind]


def heat(attribution: Any, kind: str, channel_axis: int | None = 0) -> np.ndarray:
    """One map (``C x H x W`` with ``channel_axis=0``, as methods return them; or ``H x W``) as an
    ``H x W`` float64 heat map in ``[0, 1]``, scaled as its display ``kind`` says (module doc).

    Example: ``heat(np.array([[1.0, 2.0], [3.0, 5.0]]), "relative")`` is
    ``[[0, 0.25], [0.5, 1]]``.
    """
    d = get_display(kind)
    a = to_numpy(attribution)
    return normalize(a, mode=d.mode, percentile=d.percentile, reduce=d.reduce,
                     channel_axis=channel_axis if a.ndim == 3 else None)


__all__ = ["DISPLAYS", "DISPLAY_KINDS", "PERCENTILE", "Display", "DisplayKind", "get_display", "heat"]
