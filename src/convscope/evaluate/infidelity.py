"""Infidelity: does the map predict how the score changes when the input is perturbed?

Yeh et al., "On the (In)fidelity and Sensitivity of Explanations", NeurIPS 2019:

``INFD(Phi, f, x) = E_I[(I^T Phi(x) - (f_y(x) - f_y(x - I)))^2]``

estimated per sample over ``n_perturb_samples`` draws ``I_k`` of a perturbation distribution
(lower is better). ``I^T Phi`` sums ``I * Phi`` over channels and positions (a one-channel map is
broadcast over the input's channels: Captum's value for the map repeated over the channels).
With ``normalize=True`` the map is first scaled by the optimal
``beta = sum_k a_k d_k / sum_k a_k^2`` (``a_k = I_k^T Phi``, ``d_k`` the score drop;
``beta = sum_k a_k d_k`` if every ``a_k`` is 0), Captum's ``normalize=True``, Yeh et al.'s
scale-invariant variant: ``mean_k (beta a_k - d_k)^2``.

Perturbations (``perturbation(x_rows, samples, draws, seed) -> I``, rows of ``x``'s shape):

- :class:`GaussianNoise` (default): ``I ~ N(0, std^2)`` per element, the plain additive form
  (Yeh et al.'s code instead draws a noisy baseline, ``0.2 N(0, 1)`` clipped to the image range);
- :class:`SquareRemoval`: one ``size`` x ``size`` square at a uniformly drawn position of each image
  set to ``baseline`` (``I = (x - baseline)`` on the square, 0 elsewhere): Yeh et al.'s square
  removal, drawn at random instead of enumerating every square;
- or any callable of that signature (e.g. one that replays fixed draws).

Draws are keyed by ``(seed, sample, draw)`` (:mod:`~convscope.evaluate.draws`), so results do not
depend on ``max_batch``. ``output="logit"`` (default) scores the model's raw output ``f_y``, as
Captum's ``infidelity`` on a model that returns logits; ``"probability"`` its softmax.

Quantus 0.6's ``Infidelity`` is not this quantity's estimator: it removes the patches of a grid
one after another in raster order, cumulatively, with a fixed baseline, so its
``n_perturb_samples`` repeats are identical; it is not used as an oracle (Captum is).

Cost: ``n_perturb_samples + 1`` model passes per image.

Example::

    infidelity(model, x, labels, maps, perturbation=GaussianNoise(0.1), n_perturb_samples=50, seed=0)   # [N]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from convscope.backends.torch.batching import MaxBatch
from convscope.errors import ConvscopeError
from convscope.evaluate.draws import check_seed, keyed_draws
from convscope.evaluate.maps import as_classes, as_inputs, as_maps
from convscope.evaluate.scoring import ClassScores, Output

Perturbation = Callable[[Tensor, Tensor, Tensor, int], Tensor]


@dataclass(frozen=True)
class GaussianNoise:
    """``I ~ N(0, std^2)`` for every element of every row."""

    std: float = 0.1

    def __call__(self, x: Tensor, samples: Tensor, draws: Tensor, seed: int) -> Tensor:
        return self.std * keyed_draws("normal", seed, samples, draws, x.shape[1:], x.device).to(x.dtype)


@dataclass(frozen=True)
class SquareRemoval:
    """One ``size`` x ``size`` square per image, its top-left corner uniform over the positions where
    it fits, set to ``baseline``: ``I = (x - baseline) * square``."""

    size: int = 4
    baseline: float = 0.0

    def __call__(self, x: Tensor, samples: Tensor, draws: Tensor, seed: int) -> Tensor:
        height, width = x.shape[-2:]
        if x.dim() != 4 or not 1 <= self.size <= min(height, width):
            raise ConvscopeError(f"a square of {self.size} px does not fit inputs of shape {list(x.shape)}",
                                 "Use images [N, C, H, W] and a size no larger than their sides.")
        corner = keyed_draws("uniform", seed, samples, draws, (2,), "cpu")
        top = (corner[:, 0] * (height - self.size + 1)).long()
        left = (corner[:, 1] * (width - self.size + 1)).long()
        rows, cols = torch.arange(height), torch.arange(width)
        inside_rows = (rows >= top[:, None]) & (rows < top[:, None] + self.size)
        inside_cols = (cols >= left[:, None]) & (cols < left[:, None] + self.size)
        square = (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None].to(x.device)
        return torch.where(square, x - self.baseline, torch.zeros_like(x))


def _count(n: int) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConvscopeError(f"n_perturb_samples={n!r} must be a positive int", "Use e.g. n_perturb_samples=10.")
    return n


def infidelity(model: Any, x: Any, targets: Any, maps: Any, *, perturbation: Perturbation = GaussianNoise(),
               n_perturb_samples: int = 10, normalize: bool = False, seed: int = 0, max_batch: MaxBatch = None,
               output: Output = "logit") -> Tensor:
    """``[N]``: Yeh et al.'s infidelity of each sample's map (see the module; lower is better)."""
    inputs = as_inputs(x, model)
    classes = as_classes(targets, len(inputs))
    phi = as_maps(maps, inputs, model)
    count, seed = _count(n_perturb_samples), check_seed(seed)
    scores = ClassScores(model, max_batch=max_batch, output=output)
    n = len(inputs)
    dots = torch.zeros(n * count, dtype=torch.float64)

    def rows(r: slice) -> tuple[Tensor, Tensor]:
        index = torch.arange(r.start, r.stop)
        sample, draw = index // count, index % count
        x_rows = inputs[sample]
        perturb = perturbation(x_rows, sample, draw, seed)
        if perturb.shape != x_rows.shape:
            raise ConvscopeError(f"the perturbation returned shape {list(perturb.shape)} for rows of shape "
                                 f"{list(x_rows.shape)}", "Return one perturbation I shaped like its input rows.")
        dots[r] = (perturb.double() * phi[sample].double()).flatten(1).sum(1).cpu()
        return x_rows - perturb, classes[sample]

    drops = (scores(inputs, classes)[:, None].double() - scores.map(n * count, rows).view(n, count).double())
    explained = dots.view(n, count)
    if normalize:
        denominator = (explained * explained).sum(1)
        beta = (explained * drops).sum(1) / torch.where(denominator != 0, denominator, 1.0)
        explained = beta[:, None] * explained
    return ((explained - drops) ** 2).mean(1).float()
