"""Adaptive occlusion by loops, from per-window drops (convscope.methods.adaptive's rule, written
again without its code): Captum's window starts, the anchors, the cells' scores, the refined cells,
bilinear interpolation, and occlusion's map from the windows' drops."""

from __future__ import annotations

import itertools
import math

import numpy as np


def starts(n: int, w: int, s: int) -> list[int]:
    """Window starts along an axis of ``n``: ``0, s, 2s, ...`` until one reaches the edge."""
    return list(range(0, max(n - w, 0) + s, s))


def naive_map(drops: np.ndarray, shape: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]
              ) -> np.ndarray:
    """Per position the mean drop of the windows covering it, ``[N, H, W]``, by loops."""
    total, count = np.zeros((len(drops), *shape)), np.zeros(shape)
    rows, cols = starts(shape[0], window[0], stride[0]), starts(shape[1], window[1], stride[1])
    for (r, t), (c, lf) in itertools.product(enumerate(rows), enumerate(cols)):
        total[:, t:t + window[0], lf:lf + window[1]] += drops[:, r, c, None, None]
        count[t:t + window[0], lf:lf + window[1]] += 1
    return total / count


def naive_adaptive(drops: np.ndarray, keep: float, factor: int) -> tuple[np.ndarray, list[int]]:
    """The selection rule in loops: anchors every ``factor`` windows and the last; cells between
    consecutive anchors scored by their corners' largest drop; the best ``ceil(keep * cells)``
    (first in row-major order on ties) keep their windows' drops, the others interpolated."""
    out, scored = drops.copy(), []
    n_r, n_c = drops.shape[1:]
    ar = sorted(set(range(0, n_r, factor)) | {n_r - 1})
    ac = sorted(set(range(0, n_c, factor)) | {n_c - 1})
    cells = [(i, j) for i in range(max(len(ar) - 1, 1)) for j in range(max(len(ac) - 1, 1))]
    for n, d in enumerate(drops):
        def corners(i: int, j: int) -> list[float]:
            return [d[ar[a], ac[b]] for a in (i, min(i + 1, len(ar) - 1)) for b in (j, min(j + 1, len(ac) - 1))]

        order = sorted(range(len(cells)), key=lambda k: (-max(corners(*cells[k])), k))
        exact = {(r, c) for r in ar for c in ac}
        for k in order[:math.ceil(keep * len(cells))]:
            i, j = cells[k]
            for r in range(ar[i], ar[min(i + 1, len(ar) - 1)] + 1):
                for c in range(ac[j], ac[min(j + 1, len(ac) - 1)] + 1):
                    exact.add((r, c))
        scored.append(len(exact))
        for r, c in itertools.product(range(n_r), range(n_c)):
            if (r, c) in exact:
                continue
            r0, r1 = max(a for a in ar if a <= r), min(a for a in ar if a >= r)
            c0, c1 = max(a for a in ac if a <= c), min(a for a in ac if a >= c)
            tr = 0.0 if r1 == r0 else (r - r0) / (r1 - r0)
            tc = 0.0 if c1 == c0 else (c - c0) / (c1 - c0)
            out[n, r, c] = ((1 - tr) * (1 - tc) * d[r0, c0] + (1 - tr) * tc * d[r0, c1]
                            + tr * (1 - tc) * d[r1, c0] + tr * tc * d[r1, c1])
    return out, scored
