"""The targets' scores of copies of samples changed inside one box each, computed incrementally,
and the choice between that and plain forward passes.

:func:`open_scores` traces the model (:class:`~.graph.IncrementalGraph`), runs the first
sample's clean pass, predicts the share of a full pass's multiply-adds a box of the given size
costs (:meth:`~.graph.IncrementalGraph.estimate`) and checks two changed copies (a corner box
and a central one) against full forward passes. With ``mode="auto"`` it takes the incremental path on the CPU when that share is
at most :data:`AUTO_MAX_SHARE` and the work is large enough to pay for the trace; with
``mode=True`` wherever it applies. Where it does not, the :class:`~.report.Report` says why.

The clean outputs are cached for the samples of the current chunk only (a chunk holds at most
``max_batch`` rows, so at most that many samples), and dropped when the chunks move on.

Example::

    scorer, report = open_scores(model, {}, targets, x, (16, 16), "auto", own_hooks=(), work=work)
    if scorer is not None:
        scores = scorer.scores(samples, occluded, top, bottom, left, right, rows)
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, fx, nn

from convscope.backends.torch.incremental.geometry import Box, Cap, box_of
from convscope.backends.torch.incremental.graph import Chunk, IncrementalGraph, NotApplicable
from convscope.backends.torch.incremental.report import NodeRun, Report
from convscope.targets import Record, Target

#: ``mode="auto"`` takes the incremental path where a box costs at most this share of a full pass
AUTO_MAX_SHARE = 0.6
#: the largest difference (relative to the largest output) the self-check accepts
CHECK_TOLERANCE = 1e-3


class IncrementalScores:
    """Scores of changed copies of ``values``' samples (see the module docstring)."""

    def __init__(self, graph: IncrementalGraph, values: Tensor, targets: Sequence[Target], report: Report) -> None:
        self.graph, self.values, self.targets, self.report = graph, values, list(targets), report
        self.tau: float | None = None  # a projective-field cap (geometry.Cap): approximate scores
        self._samples: dict[int, dict[fx.Node, Any]] = {}
        self._chunk: tuple[tuple[int, ...], Chunk] | None = None

    def scores(self, samples: np.ndarray, changed: Tensor, top: np.ndarray, bottom: np.ndarray, left: np.ndarray,
               right: np.ndarray, rows: Tensor) -> list[Tensor]:
        """Each target's scores for ``changed [B, C, H, W]``, element ``b`` being sample
        ``samples[b]`` changed only inside rows ``[top, bottom)`` and columns ``[left, right)``."""
        ids, index = np.unique(samples, return_inverse=True)
        chunk = self.chunk(tuple(int(i) for i in ids))
        box = box_of(top, bottom, left, right, (int(changed.shape[2]), int(changed.shape[3])))
        patch = torch.stack([changed[b, :, t:t + box.h, lf:lf + box.w]
                             for b, (t, lf) in enumerate(zip(box.top.tolist(), box.left.tolist()))])
        size = changed.shape[2:]
        cap = None if self.tau is None else Cap(self.tau, (top + bottom) / (2 * size[0]), (left + right) / (2 * size[1]))
        output, acts = self.graph.run(chunk, index.astype(np.int64), patch, box, cap)
        self.report.cache_bytes = max(self.report.cache_bytes, self._held())
        if output is None:
            output = changed.new_empty((len(samples), 0))
        record = Record(output=output, acts=acts, rows=rows)
        return [t.score(record).detach() for t in self.targets]

    def chunk(self, ids: tuple[int, ...]) -> Chunk:
        """The clean outputs of samples ``ids`` (computed for the samples not cached; the others dropped)."""
        if self._chunk is not None and self._chunk[0] == ids:
            return self._chunk[1]
        self._chunk = None
        self._samples = {i: v for i, v in self._samples.items() if i in ids}
        missing = [i for i in ids if i not in self._samples]
        if missing:
            env = self.graph.clean(self.values[list(missing)])
            kept = self.graph.kept()
            for j, i in enumerate(missing):
                self._samples[i] = {n: env[n] if self.graph.kinds[n] == "static" else env[n][j:j + 1] for n in kept}
        if len(ids) == 1:
            values = self._samples[ids[0]]
        else:
            first = self._samples[ids[0]]
            values = {n: v if self.graph.kinds[n] == "static" else torch.cat([self._samples[i][n] for i in ids])
                      for n, v in first.items()}
        chunk = Chunk(values)
        self._chunk = (ids, chunk)
        return chunk

    def _held(self) -> int:
        tensors = [t for per in self._samples.values() for t in per.values()]
        if self._chunk is not None:
            chunk = self._chunk[1]
            tensors += [*chunk.values.values(), *(s[0] for s in chunk.sources.values())]
        seen = {t.data_ptr(): t.numel() * t.element_size() for t in tensors if isinstance(t, Tensor)}
        return sum(seen.values())


def open_scores(model: nn.Module, layers: Mapping[Hashable, str], targets: Sequence[Target], values: Tensor,
                window: tuple[int, int], mode: bool | str, *, own_hooks: Collection[int] = (), work: int = 0,
                min_work: int = 0, tau: float | None = None) -> tuple[IncrementalScores | None, Report]:
    """An :class:`IncrementalScores` for copies of ``values [N, C, H, W]`` changed inside boxes of
    ``window`` (rows, columns), or None where the plain path serves; and the report saying which
    and why. ``mode``: True (wherever it applies) or ``"auto"`` (also where it is expected faster:
    on the CPU, at least ``min_work`` input elements to evaluate, at most :data:`AUTO_MAX_SHARE`).
    ``tau``: cap each node's change at ``tau`` of each side (:class:`~.geometry.Cap`, approximate;
    the self-check runs without it)."""
    auto = mode == "auto"
    if auto and values.device.type != "cpu":
        return None, Report("plain", f"auto takes the incremental path on the CPU only, not on {values.device.type}")
    if auto and work < min_work:
        return None, Report("plain", f"too little work ({work} input elements) to pay for tracing the model")
    try:
        graph = IncrementalGraph(model, layers, any(t.reads_output() for t in targets), own_hooks)
        clean = graph.clean(values[:1])
    except NotApplicable as why:
        return None, Report("plain", str(why))
    h, w = values.shape[2:]
    wh, ww = min(window[0], h), min(window[1], w)
    estimate = graph.estimate(Box(np.array([(h - wh) // 2]), np.array([(w - ww) // 2]), wh, ww), tau)
    report = Report("incremental", "forced" if mode is True else f"auto: {estimate:.0%} of a full pass", estimate,
                    tau=tau)
    if auto and estimate > AUTO_MAX_SHARE:
        return None, Report("plain", f"auto: a {wh}x{ww} change costs {estimate:.0%} of a full pass, more than "
                                     f"{AUTO_MAX_SHARE:.0%}", estimate)
    scorer = IncrementalScores(graph, values, targets, report)
    problem = _self_check(graph, scorer, values, clean, wh, ww)
    if problem:
        return None, Report("plain", problem, estimate)
    scorer.tau = tau
    graph.stats = {n: NodeRun(s.name, s.label, s.mode, s.reason) for n, s in graph.stats.items()}
    report.nodes = graph.runs()
    return scorer, report


def _self_check(graph: IncrementalGraph, scorer: IncrementalScores, values: Tensor, clean: dict[fx.Node, Any],
                h: int, w: int) -> str:
    """Why two changed copies of sample 0 (a box in the top left corner, where the changed
    regions stay smallest, and one at the centre; each negated and shifted) evaluated
    incrementally differ from full passes, or ``""`` where they agree."""
    size = values.shape[2:]
    top, left = np.array([0, (size[0] - h) // 2]), np.array([0, (size[1] - w) // 2])
    changed = values[:1].detach().repeat(2, 1, 1, 1)
    for b in range(2):
        t, lf = int(top[b]), int(left[b])
        changed[b, :, t:t + h, lf:lf + w] = 1 - changed[b, :, t:t + h, lf:lf + w]
    patch = torch.stack([changed[b, :, int(top[b]):int(top[b]) + h, int(left[b]):int(left[b]) + w] for b in range(2)])
    try:
        full = graph.clean(changed)
        chunk = Chunk({n: clean[n] for n in graph.kept()})
        output, acts = graph.run(chunk, np.zeros(2, np.int64), patch, Box(top, left, h, w))
    except Exception as error:  # noqa: BLE001 - an op that behaves unexpectedly: take the plain path
        return f"the incremental pass failed ({type(error).__name__}: {str(error)[:120]})"
    pairs = [(output, full[graph.output])] if graph.output is not None else []
    pairs += [(acts[key], full[n]) for key, n in graph.layers.items()]
    for got, expected in pairs:
        scale = float(expected.abs().max()) if expected.numel() else 0.0
        gap = float((got - expected).abs().max()) if expected.numel() else 0.0
        if not gap <= CHECK_TOLERANCE * scale + 1e-6:
            return f"the self-check differed from a full pass by {gap:.3g} (largest value {scale:.3g})"
    scorer._samples[0] = {n: clean[n] for n in graph.kept()}
    return ""
