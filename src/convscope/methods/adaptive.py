"""Adaptive occlusion (an approximation): a coarse pass, then fine windows only where it is high.

Krypton's adaptive drill-down (Nakandala et al., SIGMOD 2019) on occlusion's own window grid.
The fine windows form a grid, ``n_r x n_c`` positions (per channel window). With ``factor = f``
the *anchors* of an axis of ``n`` positions are ``0, f, 2f, ...`` and ``n - 1``; consecutive
anchors bound the *cells*. Per sample and target:

1. the coarse pass scores the anchor windows (every anchor row x anchor column);
2. a cell's score is the largest drop ``s(x) - s(x_w)`` at its four corners; the
   ``ceil(keep * cells)`` cells of highest score are refined (ties: the first in row-major order),
   scoring every fine window inside them, edges included;
3. every other window's drop is the bilinear interpolation, along the grid, of the anchors' drops;
4. the map is occlusion's: per position the mean of the drops of the windows covering it.

With ``keep=1`` (or ``factor=1``) every window is scored: the map is exact occlusion's. The
windows scored for one target are scored once for all, but each target's map uses its own
selection only, so a map never depends on the other targets of the call, nor on ``max_batch``.

``tau`` adds Krypton's other approximation on the incremental path: each layer keeps a window's
change only inside a box of ``ceil(tau * side)`` per side around it
(:class:`~convscope.backends.torch.incremental.geometry.Cap`). Where the plain path runs (Keras,
CUDA with ``incremental="auto"``, ``incremental=False``, untraceable models) the windows are
scored exactly and ``tau`` does nothing: ``last_report.incremental`` says which path ran.

Example::

    occ = Occlusion(model, window=16, stride=8, adaptive=Adaptive(keep=0.2, factor=3, tau=0.5))
    maps = occ.attribute(x, 3)
    print(occ.last_report)   # windows scored, passes and multiply-adds saved
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from convscope.errors import ConvscopeError


@dataclass(frozen=True)
class Adaptive:
    """The adaptive occlusion's settings (see the module docstring): the share ``keep`` of cells
    refined, the coarse pass's ``factor`` (anchors every ``factor`` windows along each axis) and
    the projective-field cap ``tau`` (None: none). ``Adaptive()`` is what ``adaptive=True`` means.

    Example: ``Adaptive(keep=0.1, factor=4, tau=0.5)``."""

    keep: float = 0.2
    factor: int = 3
    tau: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)) or not 0 < self.keep <= 1:
            raise ConvscopeError(f"keep={self.keep!r} must be in (0, 1]", "keep is the share of cells refined, e.g. 0.2.")
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or self.factor < 1:
            raise ConvscopeError(f"factor={self.factor!r} must be a positive int",
                                 "factor is the coarse pass's spacing in windows, e.g. 4.")
        if self.tau is not None and (isinstance(self.tau, bool) or not isinstance(self.tau, (int, float))
                                     or not 0 < self.tau <= 1):
            raise ConvscopeError(f"tau={self.tau!r} must be in (0, 1] or None",
                                 "tau caps each layer's changed box at that share of its side, e.g. 0.5.")


def as_adaptive(value: Any) -> Adaptive | None:
    """``adaptive=`` as given to :class:`~convscope.methods.Occlusion`: None/False, True or an :class:`Adaptive`."""
    if value is None or value is False:
        return None
    if value is True:
        return Adaptive()
    if isinstance(value, Adaptive):
        return value
    raise ConvscopeError(f"adaptive={value!r} is not supported",
                         "Use adaptive=True, adaptive=Adaptive(keep=0.2, factor=4, tau=None) or leave it out.")


def anchors(n: int, factor: int) -> np.ndarray:
    """The anchor positions of an axis of ``n`` windows: ``0, f, 2f, ...`` and ``n - 1``.

    Example: ``anchors(10, 4)`` -> ``[0, 4, 8, 9]``."""
    return np.unique(np.r_[np.arange(0, n, factor), n - 1])


def interpolation(n: int, at: np.ndarray) -> np.ndarray:
    """``[n, len(at)]`` linear interpolation weights from the anchors ``at`` to every position.

    Example: ``interpolation(5, [0, 4])[1]`` -> ``[0.75, 0.25]``."""
    weights = np.zeros((n, len(at)))
    if len(at) == 1:
        weights[:, 0] = 1
        return weights
    for i in range(len(at) - 1):
        lo, hi = at[i], at[i + 1]
        t = (np.arange(lo, hi + 1) - lo) / (hi - lo)
        weights[lo:hi + 1] = 0
        weights[lo:hi + 1, i], weights[lo:hi + 1, i + 1] = 1 - t, t
    return weights


@dataclass
class Grid:
    """The fine windows' grid ``[n_a, n_r, n_c]`` (channel windows, rows, columns) and its anchors."""

    counts: tuple[int, int, int]
    factor: int

    def __post_init__(self) -> None:
        self.rows, self.cols = anchors(self.counts[1], self.factor), anchors(self.counts[2], self.factor)

    @property
    def size(self) -> int:
        return math.prod(self.counts)

    def index(self, a: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Window numbers (:func:`~convscope.methods.perturb.windows` order) of grid positions."""
        return (a * self.counts[1] + r) * self.counts[2] + c

    def coarse(self) -> np.ndarray:
        """Bool ``[n_a, n_r, n_c]``: the anchor windows."""
        found = np.zeros(self.counts, bool)
        found[:, self.rows[:, None], self.cols[None, :]] = True
        return found

    def cells(self) -> list[tuple[int, int]]:
        """Each cell as its (row, column) in anchor indices: it spans anchors ``i..i+1``, ``j..j+1``."""
        r, c = max(len(self.rows) - 1, 1), max(len(self.cols) - 1, 1)
        return [(i, j) for i in range(r) for j in range(c)]

    def refined(self, anchor_drops: np.ndarray, keep: float) -> np.ndarray:
        """Bool ``[n_a, n_r, n_c]``: the windows of the ``ceil(keep * cells)`` cells whose corners
        hold the largest drop (``anchor_drops [n_a, len(rows), len(cols)]``)."""
        cells = self.cells()
        last_r, last_c = len(self.rows) - 1, len(self.cols) - 1
        scores = np.array([anchor_drops[:, i:min(i + 2, last_r + 1), j:min(j + 2, last_c + 1)].max() for i, j in cells])
        chosen = np.argsort(-scores, kind="stable")[:math.ceil(keep * len(cells))]
        found = np.zeros(self.counts, bool)
        for i, j in (cells[k] for k in chosen):
            r0, r1 = self.rows[i], self.rows[min(i + 1, last_r)]
            c0, c1 = self.cols[j], self.cols[min(j + 1, last_c)]
            found[:, r0:r1 + 1, c0:c1 + 1] = True
        return found

    def interpolated(self, anchor_drops: np.ndarray) -> np.ndarray:
        """``[n_a, n_r, n_c]``: every window's drop interpolated bilinearly from the anchors'."""
        wr, wc = interpolation(self.counts[1], self.rows), interpolation(self.counts[2], self.cols)
        return np.einsum("ri,aij,cj->arc", wr, anchor_drops, wc)


@dataclass
class AdaptiveReport:
    """What an adaptive ``attribute`` call did: the windows exact occlusion would score per sample
    (``windows``), those the coarse pass scored (``coarse``), those scored in all per sample
    (``scored``), and the incremental path's report (``incremental``: its multiply-adds; None on
    Keras). ``ssim``: per map, the structural similarity to the exact map, once :meth:`compare`
    is given it (the exact map costs what the adaptive one saves).

    Example: ``occ.last_report.passes_saved()`` -> 0.8 (80% fewer windows than exact occlusion)."""

    settings: Adaptive
    windows: int
    coarse: int
    scored: list[int]
    cells: int
    refined_cells: int
    incremental: Any = None
    ssim: list[float] | None = None

    @property
    def path(self) -> str:
        """The path the windows' scores took (``"incremental"`` or ``"plain"``)."""
        return "plain" if self.incremental is None else str(self.incremental.path)

    def passes_saved(self) -> float:
        """The share of exact occlusion's windows not scored."""
        return 1 - sum(self.scored) / (self.windows * len(self.scored))

    def mac_share(self) -> float | None:
        """Multiply-adds done against exact *plain* occlusion's (a full pass per window), where the
        incremental path counted them; None otherwise."""
        if self.incremental is None or self.incremental.path != "incremental" or not self.incremental.nodes:
            return None
        totals = self.incremental.totals()
        return totals["mac_share"] * (1 - self.passes_saved())

    def compare(self, adaptive: Any, exact: Any) -> list[float]:
        """Per map, the SSIM of the ``adaptive`` maps to the ``exact`` ones (a channels-first batch
        each, or a list per target; a Keras map's channels moved first), kept in ``ssim``. See
        :func:`convscope.ops.similarity.ssim`."""
        from convscope.ops.similarity import ssim

        pairs = zip(adaptive, exact) if isinstance(adaptive, list) else [(adaptive, exact)]
        self.ssim = [float(v) for a, e in pairs for v in ssim(torch.as_tensor(np.asarray(a)),
                                                              torch.as_tensor(np.asarray(e)))]
        return self.ssim

    def __str__(self) -> str:
        s = self.settings
        mean = sum(self.scored) / len(self.scored)
        head = (f"adaptive occlusion (approximate; {self.refined_cells} of {self.cells} cells refined, factor {s.factor}"
                + (f", tau {s.tau:g}" if s.tau is not None else "") + f"): {mean:.0f} of {self.windows} windows "
                f"scored per sample ({self.coarse} coarse), {self.passes_saved():.1%} of the passes saved")
        macs = self.mac_share()
        if macs is not None:
            head += f"; multiply-adds {macs:.1%} of plain exact occlusion's"
        if self.ssim is not None:
            head += f"; SSIM to the exact map {min(self.ssim):.3f} (worst) .. {max(self.ssim):.3f}"
        return head + ("" if self.incremental is None else "\n" + str(self.incremental))
