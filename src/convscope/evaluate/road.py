"""ROAD: remove the pixels a map ranks first, fill them by noisy linear imputation, score the model.

Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods", ICML 2022.
Deleting pixels to a constant leaks the deleted shape to the model ("class information leakage");
ROAD fills each removed pixel from its neighbours instead. For a sample with removed pixels
``R``, the imputed values ``u`` solve, jointly for all of ``R``,

``u_i = sum_j w_ij v_j / sum_j w_ij``  over the 8 neighbours ``j`` of ``i`` inside the image

(``v_j = u_j`` for a removed neighbour, the input's value for a kept one; ``w = 1/6`` for the four
direct neighbours and ``1/12`` for the diagonal ones), one sparse linear system per sample and
channel; then ``N(0, noise^2)`` noise is added to the removed pixels (seeded per sample and
percentage: :mod:`~convscope.evaluate.draws`). The curve is the model's score ``f_y`` after removing
``floor(P * p / 100)`` of the ``P`` pixels for each percentage ``p`` (default 10, 20, ..., 90, the
paper's; Quantus's default is 1, 3, ..., 99), the most relevant first
(``"morf"``: lower is better) or the least (``"lerf"``: higher is better); ``output="accuracy"``
scores 1 where the top class is still ``y`` (the paper's and Quantus's accuracy curves are the
mean of these over samples).

The systems of every sample and percentage in a chunk of ``max_batch`` rows are solved together
on the inputs' device by conjugate gradients in float64, each system to a relative residual of
``1e-10`` and then frozen, so a row's values do not depend on its chunk. The matrix is applied as
two 3-tap passes; the preconditioner is additive over levels (BPX-style): Jacobi, plus on blocks
of 2, 4, 8, ... px the residual summed over each block's removed pixels, divided by the block's
Galerkin diagonal ``e^T A e`` and spread back over them. For 90% of a 224 px image removed around
one blob that takes about 200 steps (Jacobi alone: about 770): cheap on a GPU, seconds per image
on a CPU, where a direct sparse solve (Quantus's) can still be faster at high percentages. The system is
singular when every pixel is removed: percentages must lie in ``[0, 100)``.

Pixels are ranked by the map summed over its channels, ties to the earlier position
(:func:`~convscope.evaluate.curves.ranks`). With one-channel images, distinct map values and no
noise, Quantus 0.6's ``ROAD`` gives the same accuracies (tests/tf/test_evaluate_quantus_road.py).
It differs otherwise: it ranks the map broadcast over the input's channels and passes those flat
indices to an imputation over one channel's pixels, so a colour image with a one-channel map
raises an ``IndexError`` (shown in that test); it breaks ties by numpy's unstable sort; it has
MoRF only; and it reports the mean accuracy over samples, never per-sample scores.

Cost: ``len(percentages)`` model passes per image (the imputation's solver uses no model).

Example::

    curve = road(model, x, labels, maps, percentages=[10, 30, 50, 70, 90], order="morf", seed=0)
    curve.values          # [N, 5]: f_y after imputing 10%, ..., 90% of the pixels
    curve.auc()           # [N]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from convscope.backends.torch.batching import MaxBatch
from convscope.errors import ConvscopeError
from convscope.evaluate.curves import Curve, Order, ranks
from convscope.evaluate.draws import check_seed, keyed_draws
from convscope.evaluate.maps import as_classes, as_inputs, as_maps, one_channel
from convscope.evaluate.scoring import ClassScores

RoadOutput = Literal["probability", "logit", "accuracy"]
TOLERANCE = 1e-10


def _neighbour_sum(t: Tensor) -> Tensor:
    """``sum_j w_ij t_j`` over the 8 neighbours inside the image, for ``t [..., H, W]``: the weights
    are ``(outer([1, 2, 1], [1, 2, 1]) - 4 * centre) / 12``, so two 3-tap passes over the zero-padded
    ``t`` (outside neighbours count 0) minus the centre."""
    padded = F.pad(t, (1, 1, 1, 1))
    rows = padded[..., :-2, :] + 2 * padded[..., 1:-1, :] + padded[..., 2:, :]
    both = rows[..., :-2] + 2 * rows[..., 1:-1] + rows[..., 2:]
    return (both - 4 * t) / 12


def _block_sums(t: Tensor) -> Tensor:
    """``t [..., H, W]`` summed over 2 x 2 blocks (an odd size's last row/column alone); a reshape,
    not a pooling kernel, so that small tensors never start a thread pool."""
    t = F.pad(t, (0, t.shape[-1] % 2, 0, t.shape[-2] % 2))
    return t.unflatten(-1, (-1, 2)).unflatten(-3, (-1, 2)).sum((-3, -1))


def _spread(t: Tensor, like: Tensor) -> Tensor:
    """Each value of ``t`` copied to its 2 x 2 block at ``like``'s (finer) size."""
    *lead, h, w = t.shape
    wide = t[..., :, None, :, None].expand(*lead, h, 2, w, 2).reshape(*lead, 2 * h, 2 * w)
    return wide[..., :like.shape[-2], :like.shape[-1]]


def _coarse_inverses(r: Tensor, weight: Tensor) -> list[Tensor]:
    """For blocks of ``s = 2, 4, ...`` px (until one block covers the image): ``1 / e^T A e`` with
    ``e`` the indicator of a block's removed pixels (0 for a block without any), from the removed
    mask ``r [m, 1, H, W]`` and the valid neighbours' weights."""
    height, width = r.shape[-2:]
    rows, cols = torch.arange(height, device=r.device), torch.arange(width, device=r.device)
    padded = F.pad(r, (1, 1, 1, 1))
    inverses, side, level = [], 2, 1
    while side < 2 * max(height, width):
        inner = r * weight  # e^T A e = sum of d_i - sum of w_ij over neighbour pairs inside the block
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if dr or dc:
                    same = ((rows // side) == (rows + dr) // side)[:, None] & ((cols // side) == (cols + dc) // side)
                    neighbour = padded[..., 1 + dr:1 + dr + height, 1 + dc:1 + dc + width]
                    inner = inner - (1 / 12 if dr and dc else 1 / 6) * r * neighbour * same
        diag = inner
        for _ in range(level):
            diag = _block_sums(diag)
        inverses.append(torch.where(diag > 1e-12, 1 / diag.clamp_min(1e-12), 0.0))
        side, level = side * 2, level + 1
    return inverses


def _preconditioned(residual: Tensor, r: Tensor, weight: Tensor, inverses: list[Tensor]) -> Tensor:
    """``B residual`` for the additive multilevel preconditioner ``B = D^-1 + sum_l P_l D_l^-1 P_l^T``
    (``P_l`` spreads a block's value over its removed pixels; ``D_l`` the blocks' diagonals)."""
    sums = [residual]
    for _ in inverses:
        sums.append(_block_sums(sums[-1]))
    coarse = None
    for level in range(len(inverses), 0, -1):
        part = sums[level] * inverses[level - 1]
        coarse = part if coarse is None else part + _spread(coarse, part)
    fine = residual / weight
    return r * (fine if coarse is None else fine + _spread(coarse, residual))


def linear_imputation(x: Tensor, removed: Tensor, tolerance: float = TOLERANCE) -> Tensor:
    """``x [m, C, H, W]`` with the pixels ``removed [m, H, W]`` (bool) replaced by the solution of
    ROAD's linear system (see the module), solved for all rows and channels at once in float64."""
    u_in = x.double()
    r = removed.to(x.device, torch.float64)[:, None].expand_as(u_in)
    weight = _neighbour_sum(torch.ones_like(u_in[:1, :1])).clamp_min(1e-300)  # the valid neighbours' weights
    b = r * _neighbour_sum((1 - r) * u_in)
    inverses = _coarse_inverses(r[:, :1], weight)

    def precondition(t: Tensor) -> Tensor:
        return _preconditioned(t, r, weight, inverses)

    def apply(p: Tensor) -> Tensor:  # p is 0 outside the removed pixels
        return r * (weight * p - _neighbour_sum(p))

    def dot(a: Tensor, c: Tensor) -> Tensor:
        return (a * c).sum((2, 3), keepdim=True)

    u = torch.zeros_like(u_in)
    residual = b.clone()
    z = precondition(residual)
    p = z.clone()
    rz = dot(residual, z)
    goal = tolerance * dot(b, b).sqrt()
    active = dot(residual, residual).sqrt() > goal
    limit = 4 * x.shape[-1] * x.shape[-2] + 20
    for _ in range(limit):
        if not bool(active.any()):
            break
        ap = apply(p)
        pap = dot(p, ap)
        alpha = torch.where(active & (pap > 0), rz / torch.where(pap > 0, pap, 1.0), 0.0)
        u = u + alpha * p
        residual = residual - alpha * ap
        z = precondition(residual)
        rz_next = dot(residual, z)
        beta = torch.where(rz > 0, rz_next / torch.where(rz > 0, rz, 1.0), 0.0)
        p = torch.where(active, z + beta * p, p)
        rz = torch.where(active, rz_next, rz)
        active = active & (dot(residual, residual).sqrt() > goal)
    if bool(active.any()):
        raise ConvscopeError("the ROAD imputation did not converge", "Report this input; it should not happen.")
    return torch.where(r > 0, u, u_in).to(x.dtype)


def noisy_linear_imputation(x: Tensor, removed: Tensor, *, noise: float = 0.01, seed: int = 0,
                            samples: Tensor | None = None, draws: Tensor | None = None) -> Tensor:
    """:func:`linear_imputation` plus ``noise * N(0, 1)`` on the removed pixels, the normal draws of
    row ``i`` keyed by ``(seed, samples[i], draws[i])`` (default: ``i`` and 0)."""
    filled = linear_imputation(x, removed)
    if noise == 0:
        return filled
    rows = torch.arange(len(x))
    eps = keyed_draws("normal", check_seed(seed), rows if samples is None else samples,
                      torch.zeros_like(rows) if draws is None else draws, x.shape[1:], x.device)
    return filled + noise * eps.to(x.dtype) * removed[:, None].to(x.dtype)


class TopClassHits(ClassScores):
    """``[m]``: 1.0 where the model's top class on ``x[i]`` is ``classes[i]``, else 0.0 (accuracy):
    the logit score of the one-hot top class, so every check and chunking of the scores applies."""

    def __init__(self, model: Any, *, max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch, output="logit")

    def _score(self, run: Callable[[Tensor], Tensor], x: Tensor, classes: Tensor) -> Tensor:
        return super()._score(lambda t: _top_one_hot(run(t)), x, classes)


def _top_one_hot(out: Tensor) -> Tensor:
    return F.one_hot(out.argmax(-1), out.shape[-1]).to(torch.float32)


def _percentages(percentages: Sequence[float]) -> Tensor:
    p = torch.as_tensor(list(percentages), dtype=torch.float64)
    if p.dim() != 1 or len(p) == 0 or bool(((p < 0) | (p >= 100)).any()):
        raise ConvscopeError(f"percentages {list(percentages)} must be numbers in [0, 100)",
                             "Use e.g. percentages=range(10, 100, 10) (removing 100% leaves nothing to impute from).")
    return p


def road(model: Any, x: Any, targets: Any, maps: Any, *, percentages: Sequence[float] = tuple(range(10, 100, 10)),
         order: Order = "morf", noise: float = 0.01, seed: int = 0, max_batch: MaxBatch = None,
         output: RoadOutput = "probability") -> Curve:
    """Rong et al.'s ROAD curve (see the module): ``f_y`` with ``p%`` of the pixels removed in
    ``order`` and filled by noisy linear imputation, for each ``p`` in ``percentages``."""
    inputs = as_inputs(x, model)
    if inputs.dim() != 4:
        raise ConvscopeError(f"ROAD imputes pixels of images [N, C, H, W], not inputs of shape {list(inputs.shape)}",
                             "Use deletion or pixel_flipping for other inputs.")
    classes = as_classes(targets, len(inputs))
    m = one_channel(as_maps(maps, inputs, model))[:, 0]
    if output == "accuracy":
        scores: ClassScores = TopClassHits(model, max_batch=max_batch)
    else:
        scores = ClassScores(model, max_batch=max_batch, output=output)
    if not isinstance(noise, (int, float)) or noise < 0:
        raise ConvscopeError(f"noise={noise!r} must be a number >= 0", "Use the paper's noise=0.01, or 0 for none.")
    seed = check_seed(seed)
    p = _percentages(percentages)
    n, steps, pixels = len(inputs), len(p), m[0].numel()
    counts = torch.tensor([int(pixels * q / 100) for q in p.tolist()], device=inputs.device)  # Quantus's rounding
    place = ranks(m.flatten(1), order).view_as(m).to(inputs.device)

    def rows(r: slice) -> tuple[Tensor, Tensor]:
        index = torch.arange(r.start, r.stop)
        sample, step = index // steps, index % steps
        removed = place[sample] < counts[step].view(-1, 1, 1)
        filled = noisy_linear_imputation(inputs[sample], removed, noise=float(noise), seed=seed, samples=sample,
                                         draws=step)
        return filled, classes[sample]

    values = scores.map(n * steps, rows).view(n, steps)
    return Curve((p / 100).float(), values, scores.rows)
