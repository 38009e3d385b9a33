"""Perturbation curves: the model's score as the features a map ranks highest are changed, in order.

One engine serves four published protocols. A map ranks the features (pixels, or patches) of
each sample; step ``s`` of a curve replaces the ``k_s`` first-ranked features of the *start* image
by the *end* image's, and the curve is the model's score ``f_y`` at every step:

- :func:`deletion` (Petsiuk et al., "RISE", BMVC 2018): start ``x``, end a baseline (0); the
  fraction of pixels deleted runs 0, 1/S, ..., 1; a faithful map makes the score drop early:
  lower AUC is better.
- :func:`insertion` (ibid.): start a blurred ``x`` (Gaussian, sigma 5 px), end ``x``; a faithful map
  makes the score rise early: higher AUC is better.
- :func:`pixel_flipping` (Bach et al., PLoS ONE 2015; Quantus's ``PixelFlipping``): ``x`` towards a
  baseline, ``pixels_in_step`` pixels per step, the first point after the first step; lower is better.
- :func:`region_perturbation` (Samek et al., IEEE TNNLS 2017): patches of ``patch`` x ``patch``
  pixels (on a grid centred on the image; edge patches smaller) ranked by the map's sum over
  them, replaced one per step; the curve is ``f_y(x) - f_y(x_k)`` for ``k = 1..regions``
  (Quantus's ``RegionPerturbation``) and :attr:`Curve.aopc` its mean over ``k = 0..regions``
  (Samek's AOPC; higher is better for MoRF).

``order="lerf"`` ranks the least relevant first (the LeRF curves). Pixels are ranked by the map
summed over its channels; ties go to the earlier position (row-major), so curves are
deterministic. Rows of every curve and sample are evaluated together, ``max_batch`` at a time,
and no changed copy is made before its chunk runs: results do not depend on ``max_batch``.
Cost: ``N * len(curve)`` model evaluations (:attr:`Curve.evaluations`).

Example::

    curve = deletion(model, x, labels, GradCAM(model).attribute(x, labels), steps=50)
    curve.auc()            # [N], the area under each sample's curve (fraction axis 0..1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from convscope.backends.torch.batching import MaxBatch
from convscope.errors import ConvscopeError
from convscope.evaluate.maps import as_classes, as_inputs, as_maps, one_channel
from convscope.evaluate.scoring import ClassScores, Output
from convscope.ops.tensors import gaussian_blur

Order = Literal["morf", "lerf"]
Baseline = float | Tensor | Literal["blur"]


@dataclass(frozen=True)
class Curve:
    """Scores along a perturbation: ``values [N, S]`` at ``fractions [S]`` of the features changed."""

    fractions: Tensor
    values: Tensor
    evaluations: int  # model evaluations spent (samples x steps)

    def auc(self) -> Tensor:
        """``[N]``: the trapezoid area under each curve over ``fractions`` (for 0..1: the mean height)."""
        return torch.trapezoid(self.values, self.fractions.to(self.values), dim=1)

    def aopc(self, reference: Tensor) -> Tensor:
        """``[N]``: Samek's area over the perturbation curve, ``mean_k (reference - values_k)`` over
        ``k = 0..S`` (``reference``: the unperturbed score, whose own term is 0)."""
        drops = reference[:, None] - self.values
        return drops.sum(1) / (drops.shape[1] + 1)


def ranks(maps: Tensor, order: Order = "morf") -> Tensor:
    """Int64 ``[N, P]``: each position's place when sorted by ``maps [N, P]`` (0 = first changed),
    highest first for ``"morf"``, lowest first for ``"lerf"``; ties keep the earlier position first."""
    if order not in ("morf", "lerf"):
        raise ConvscopeError(f"order={order!r} is not a perturbation order", "Use order='morf' or order='lerf'.")
    keys = -maps if order == "morf" else maps
    sorted_positions = torch.argsort(keys, dim=1, stable=True)
    place = torch.empty_like(sorted_positions)
    place.scatter_(1, sorted_positions, torch.arange(maps.shape[1], device=maps.device).expand_as(maps).contiguous())
    return place


def perturbation_curve(scores: ClassScores, start: Tensor, end: Tensor, place: Tensor, counts: Tensor,
                       classes: Tensor) -> Tensor:
    """``[N, S]``: ``scores`` of ``where(place < counts[s], end, start)`` per sample and step.

    ``start``/``end`` are ``[N, C, *space]``; ``place [N, *space]`` ranks positions (shared by the
    channels); ``counts [S]`` how many positions step ``s`` has changed."""
    n, steps = len(start), len(counts)
    flat_place = place.reshape(n, 1, -1)
    counts = counts.to(place.device)

    def rows(r: slice) -> tuple[Tensor, Tensor]:
        index = torch.arange(r.start, r.stop, device=place.device)
        sample, step = index // steps, index % steps
        changed = (flat_place[sample] < counts[step].view(-1, 1, 1)).view(len(index), 1, *start.shape[2:])
        return torch.where(changed, end[sample], start[sample]), classes[sample]

    return scores.map(n * steps, rows).view(n, steps)


def _prepared(model: Any, x: Any, targets: Any, maps: Any, max_batch: MaxBatch,
              output: Output) -> tuple[Tensor, Tensor, Tensor, ClassScores]:
    inputs = as_inputs(x, model)
    return inputs, as_classes(targets, len(inputs)), one_channel(as_maps(maps, inputs, model))[:, 0], \
        ClassScores(model, max_batch=max_batch, output=output)


def _baseline(baseline: Baseline, x: Tensor) -> Tensor:
    if isinstance(baseline, str):
        if baseline != "blur":
            raise ConvscopeError(f"baseline={baseline!r} is not supported", "Use a number, a tensor or 'blur'.")
        return gaussian_blur(x, 5.0)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    b = torch.as_tensor(baseline).to(x)
    try:
        return b.expand_as(x)
    except RuntimeError as error:
        raise ConvscopeError(f"a baseline of shape {list(b.shape)} does not fit inputs of shape {list(x.shape)}",
                             "Give a number, 'blur', or a tensor shaped like one sample or the whole batch.") from error


def _steps(steps: int) -> int:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConvscopeError(f"steps={steps!r} must be a positive int", "Use e.g. steps=50.")
    return steps


def _fraction_curve(model: Any, x: Any, targets: Any, maps: Any, *, steps: int, order: Order, max_batch: MaxBatch,
                    output: Output, baseline: Baseline, insert: bool) -> Curve:
    inputs, classes, m, scores = _prepared(model, x, targets, maps, max_batch, output)
    pixels = m[0].numel()
    fractions = torch.linspace(0, 1, _steps(steps) + 1)
    counts = torch.round(fractions * pixels).long()
    base = _baseline(baseline, inputs)
    start, end = (base, inputs) if insert else (inputs, base)
    values = perturbation_curve(scores, start, end, ranks(m.flatten(1), order).view_as(m), counts, classes)
    return Curve(fractions, values, scores.rows)


def deletion(model: Any, x: Any, targets: Any, maps: Any, *, steps: int = 50, order: Order = "morf",
             baseline: Baseline = 0.0, max_batch: MaxBatch = None, output: Output = "probability") -> Curve:
    """Petsiuk et al.'s deletion curve: ``f_y`` as the top-ranked pixels go to ``baseline``, over
    ``steps + 1`` fractions ``0, 1/steps, ..., 1`` of the pixels (lower AUC: more faithful)."""
    return _fraction_curve(model, x, targets, maps, steps=steps, order=order, max_batch=max_batch, output=output,
                           baseline=baseline, insert=False)


def insertion(model: Any, x: Any, targets: Any, maps: Any, *, steps: int = 50, order: Order = "morf",
              baseline: Baseline = "blur", max_batch: MaxBatch = None, output: Output = "probability") -> Curve:
    """Petsiuk et al.'s insertion curve: ``f_y`` as the top-ranked pixels of ``x`` are put into the
    ``baseline`` image (a blurred ``x``), over fractions ``0..1`` (higher AUC: more faithful)."""
    return _fraction_curve(model, x, targets, maps, steps=steps, order=order, max_batch=max_batch, output=output,
                           baseline=baseline, insert=True)


def pixel_flipping(model: Any, x: Any, targets: Any, maps: Any, *, pixels_in_step: int = 1, order: Order = "morf",
                   baseline: Baseline = 0.0, max_batch: MaxBatch = None, output: Output = "probability") -> Curve:
    """Bach et al.'s pixel flipping: ``f_y`` after each step of ``pixels_in_step`` more top-ranked
    pixels set to ``baseline``, ``ceil(P / pixels_in_step)`` points (the first after one step)."""
    inputs, classes, m, scores = _prepared(model, x, targets, maps, max_batch, output)
    pixels = m[0].numel()
    count = math.ceil(pixels / _steps(pixels_in_step))
    counts = torch.clamp(torch.arange(1, count + 1) * pixels_in_step, max=pixels)
    values = perturbation_curve(scores, inputs, _baseline(baseline, inputs), ranks(m.flatten(1), order).view_as(m),
                                counts, classes)
    return Curve(counts / pixels, values, scores.rows)


def _margins(size: int, patch: int) -> tuple[int, int]:
    """Padding before and after an axis of ``size`` that centres a grid of ``patch`` cells on it."""
    total = -size % patch
    return total // 2, total - total // 2


def patch_sums(maps: Tensor, patch: int) -> Tensor:
    """``[N, h, w]``: the sum of ``maps [N, H, W]`` over each ``patch`` x ``patch`` cell of a grid
    centred on the image (``h = ceil(H / patch)``; the cells at the edges hold what is left, split
    evenly between both sides, the extra pixel after: Quantus's grid)."""
    (top, bottom), (left, right) = _margins(maps.shape[-2], patch), _margins(maps.shape[-1], patch)
    padded = F.pad(maps[:, None], (left, right, top, bottom))
    return F.avg_pool2d(padded, patch, divisor_override=1)[:, 0]


def patch_places(place: Tensor, patch: int, height: int, width: int) -> Tensor:
    """``[N, height, width]``: each pixel's cell rank, from the ranks ``place [N, h, w]`` of the cells
    of :func:`patch_sums`'s grid."""
    top, left = _margins(height, patch)[0], _margins(width, patch)[0]
    pixels = place.repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    return pixels[:, top:top + height, left:left + width]


def region_perturbation(model: Any, x: Any, targets: Any, maps: Any, *, patch: int = 8, regions: int = 100,
                        order: Order = "morf", baseline: Baseline = 0.0, max_batch: MaxBatch = None,
                        output: Output = "probability") -> tuple[Curve, Tensor]:
    """Samek et al.'s region perturbation: the ``regions`` most (``"lerf"``: least) relevant patches
    set to ``baseline`` one per step; returns the curve of ``f_y(x_k)`` for ``k = 1..regions`` and
    the unperturbed ``f_y(x)`` ``[N]`` (``curve.aopc(reference)``; Quantus reports
    ``reference - curve.values``)."""
    inputs, classes, m, scores = _prepared(model, x, targets, maps, max_batch, output)
    if m.dim() != 3:
        raise ConvscopeError(f"region perturbation needs images [N, C, H, W], not inputs of shape {list(inputs.shape)}",
                             "Use deletion or pixel_flipping, which rank single positions of any input.")
    if not isinstance(patch, int) or patch < 1:
        raise ConvscopeError(f"patch={patch!r} must be a positive int", "Use e.g. patch=8.")
    sums = patch_sums(m, patch)
    cells = sums[0].numel()
    regions = min(_steps(regions), cells)
    place = patch_places(ranks(sums.flatten(1), order).view_as(sums), patch, *m.shape[1:])
    counts = torch.arange(regions + 1)
    values = perturbation_curve(scores, inputs, _baseline(baseline, inputs), place, counts, classes)
    return Curve(counts[1:] / cells, values[:, 1:], scores.rows), values[:, 0]
