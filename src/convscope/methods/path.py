"""Path methods: gradients averaged along straight paths from a baseline ``b`` to the input ``x``.

:class:`IntegratedGradients` (Sundararajan et al. 2017), with ``s`` the target's score::

    IG(x) = (x - b) * integral_0^1 ds/da (b + alpha (x - b)) d alpha
          ~ (x - b) * sum_k w_k * ds/da (b + alpha_k (x - b))

with the quadrature ``rule`` giving ``alpha_k, w_k`` (:func:`quadrature`; Captum's conventions).
Completeness: ``sum(IG(x)) -> s(x) - s(b)``; :meth:`IntegratedGradients.attribute_with_delta`
returns the gap ``sum(IG(x)) - (s(x) - s(b))`` per sample.

:class:`GradientSHAP` (Lundberg & Lee 2017) is its Monte-Carlo cousin: ``K`` draws of a
baseline ``b_k`` from a distribution, ``alpha_k ~ U(0, 1)`` and (optional) Gaussian noise
``eps_k`` on the input give ``mean_k (x + eps_k - b_k) * ds/da (b_k + alpha_k (x + eps_k - b_k))``.

With ``wrt=layer`` the path runs through the layer's activations, from their value at the
baseline input to their value at ``x`` (Captum's ``LayerIntegratedGradients``).

Example::

    ig = IntegratedGradients(model, steps=64, rule="riemann_trapezoid", max_batch=32)
    maps, delta = ig.attribute_with_delta(x, 3)
    maps = GradientSHAP(model, baselines=torch.zeros(1, 3, 64, 64), samples=50).attribute(x, 3)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from convscope.backends.torch.probes import LayerKey
from convscope.backends.torch.session import Session
from convscope.errors import ConvscopeError
from convscope.methods.base import (
    Attributed,
    MaxBatch,
    Method,
    Rows,
    Wrt,
    gradients,
    row_index,
)
from convscope.methods.batching import Batches, expansion_rows
from convscope.methods.draws import gaussian_draws
from convscope.methods.options import check_noise, check_samples
from convscope.methods.registry import register_method
from convscope.targets import Target, TargetLike

RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gauss_legendre")


def quadrature(rule: str, steps: int) -> tuple[Tensor, Tensor]:
    """Nodes ``alpha`` in [0, 1] and weights ``w`` (float64) of ``rule`` with ``steps`` points.

    riemann_left ``alpha_k = k/n``; right ``(k+1)/n``; middle ``(k+1/2)/n``; all ``w_k = 1/n``;
    riemann_trapezoid ``alpha_k = k/(n-1)``, ``w = 1/n`` halved at both ends (Captum's choice:
    the weights sum to ``1 - 1/n``); gauss_legendre: Gauss-Legendre nodes and weights mapped
    to [0, 1]. Example: ``quadrature("riemann_middle", 2)`` -> ``([0.25, 0.75], [0.5, 0.5])``.
    """
    rule = "gauss_legendre" if rule == "gausslegendre" else rule
    if rule not in RULES:
        raise ConvscopeError(f"unknown integration rule {rule!r}", f"Use one of {', '.join(RULES)}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < (1 if rule == "gauss_legendre" else 2):
        raise ConvscopeError(f"steps={steps!r} is too few for {rule}",
                             "Use steps >= 2 for the Riemann rules (>= 1 for gauss_legendre), e.g. 32.")
    k = torch.arange(steps, dtype=torch.float64)
    weights = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if rule == "gauss_legendre":
        nodes, w = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(w / 2)
    if rule == "riemann_trapezoid":
        weights[[0, -1]] /= 2
        return k / (steps - 1), weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
    return (k + offset) / steps, weights


def as_baseline(baseline: float | Tensor, x: Tensor, rows: Tensor, what: str = "baseline") -> Tensor:
    """``baseline`` as ``[1 or len(x), *x.shape[1:]]`` on ``x``'s device: a number, one sample's
    shape (shared by all), or one per sample of the user's batch (picked by ``rows``)."""
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full((1, *x.shape[1:]), float(baseline), dtype=x.dtype, device=x.device)
    if isinstance(baseline, Tensor):
        b = baseline.to(x.device, x.dtype)
        if b.shape == x.shape[1:]:
            b = b.unsqueeze(0)
        if b.dim() == x.dim() and b.shape[1:] == x.shape[1:] and b.shape[0] == 1:
            return b
        if b.dim() == x.dim() and b.shape[1:] == x.shape[1:] and b.shape[0] > int(rows.max()):
            return b[rows.to(b.device)]
    shape = list(baseline.shape) if isinstance(baseline, Tensor) else type(baseline).__name__
    raise ConvscopeError(f"the {what} {shape} does not fit an input of shape {list(x.shape)}",
                         f"Give a number, a tensor shaped like one sample {list(x.shape[1:])}, or one per "
                         f"sample {list(x.shape)}.")


def _scaled(weights: Tensor, like: Tensor) -> Tensor:
    return weights.to(like.device, like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def path_gradients(space: Attributed, x: Tensor, rows: Tensor, start: Tensor, end: Tensor, alpha: Tensor,
                   targets: list[Target]) -> list[Tensor]:
    """``ds/da`` at ``start + alpha (end - start)`` for each target (one row per path point)."""
    point = start + _scaled(alpha, end) * (end - start)
    run = space.forward(x, rows, point, grad=True)
    return gradients(run, targets)


@register_method("integrated_gradients", "integrated gradients: (x - baseline) * path-averaged gradient")
class IntegratedGradients(Method):
    """``(x - b) * sum_k w_k ds/da(b + alpha_k (x - b))``: see the module docstring.

    Defaults: 32 Gauss-Legendre steps (exact for polynomial paths of degree < 64) and a zero
    baseline. ``baseline`` is a number, one sample's shape, or one per sample (``[N, ...]``).
    Example: ``IntegratedGradients(model, steps=50, baseline=blurred).attribute(x, 3)``.
    """

    expands = True

    def __init__(self, model: nn.Module, *, steps: int = 32, rule: str = "gauss_legendre",
                 baseline: float | Tensor = 0.0, max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        self.alpha, self.weights = quadrature(rule, steps)  # validates early
        self.steps, self.rule, self.baseline = steps, rule, baseline

    def _endpoints(self, space: Attributed, x: Tensor, rows: Tensor, batches: Batches) -> tuple[Tensor, Tensor]:
        """The attributed tensor at ``x`` and at the baseline (``[1 or N, ...]``)."""
        base = as_baseline(self.baseline, x, rows)
        return space.values(x, rows, batches), space.values(base, rows[:base.shape[0]], batches)

    def _compute(self, session: Session, x: Tensor, rows: Rows, targets: list[Target],
                 wrt: LayerKey | None) -> list[Tensor]:
        space, batches, glob = Attributed(session, wrt), Batches(self.max_batch, x.device), row_index(rows, len(x))
        value, base = self._endpoints(space, x, glob, batches)
        steps = self.steps
        sums = [torch.zeros_like(value) for _ in targets]

        alpha, weights = self.alpha.to(value.device), self.weights.to(value.device)

        def evaluate(items: slice) -> tuple[Tensor, list[Tensor]]:
            host, sample, k = expansion_rows(items, steps, value.device)
            start = base[sample] if base.shape[0] > 1 else base
            grads = path_gradients(space, x[sample], glob[host], start, value[sample], alpha[k], targets)
            return sample, [g * _scaled(weights[k], g) for g in grads]

        for _, (sample, grads) in batches.map(len(x) * steps, evaluate):
            for total, g in zip(sums, grads):
                total.index_add_(0, sample.to(total.device), g)
        return [(value - base) * total for total in sums]

    def attribute_with_delta(self, x: Tensor, target: TargetLike | None = None, wrt: Wrt = None, *,
                             targets: Sequence[TargetLike] | None = None
                             ) -> tuple[Tensor, Tensor] | list[tuple[Tensor, Tensor]]:
        """``(maps, delta)`` with ``delta_n = sum(maps_n) - (s(x_n) - s(b_n))`` (a pair per target
        with ``targets=[...]``): the completeness gap, which shrinks as ``steps`` grows."""

        def body(session: Session, xs: Tensor, found: list[Target], layer: LayerKey | None
                 ) -> list[tuple[Tensor, Tensor]]:
            maps = self._attribute(session, xs, found, layer)
            space, batches, glob = Attributed(session, layer), Batches(self.max_batch, xs.device), torch.arange(len(xs))
            value, base = self._endpoints(space, xs, glob, batches)
            at_x = space.scores(xs, glob, value, found, batches)
            at_b = space.scores(xs, glob, base.expand_as(value), found, batches)
            return [(m, m.reshape(len(xs), -1).sum(1) - (sx - sb)) for m, sx, sb in zip(maps, at_x, at_b)]

        return self._run(x, target, wrt, targets, body)


def input_range(x: Tensor) -> Tensor:
    """``max - min`` of each sample, shaped ``[N, 1, ...]`` to scale noise per sample."""
    flat = x.detach().reshape(x.shape[0], -1)
    return (flat.amax(1) - flat.amin(1)).reshape(-1, *([1] * (x.dim() - 1)))


@register_method("gradient_shap", "GradientSHAP: expected (x - baseline) * gradient at random path points")
class GradientSHAP(Method):
    """``mean_k (x + eps_k - b_k) * ds/da(b_k + alpha_k (x + eps_k - b_k))`` over ``samples`` draws.

    ``baselines``: a number or a tensor ``[B, *sample_shape]`` to draw ``b_k`` from (default: one
    all-zero baseline); ``noise``: the standard deviation of ``eps_k`` as a fraction of each
    sample's value range (default 0). Baseline indices ``randint(B, [K])`` then ``alpha = rand(K)``
    come from ``torch.Generator().manual_seed(seed)``; when ``noise > 0``,
    ``eps = randn(K, *sample_shape)`` comes from a generator on the input's device seeded with
    ``seed + 1`` (:func:`~convscope.methods.draws.gaussian_draws`). Every sample sees the same
    draws, so its map never depends on the rest of the batch. Example:
    ``GradientSHAP(model, baselines=backgrounds, samples=64, noise=0.1).attribute(x, 3)``.
    """

    expands = True

    def __init__(self, model: nn.Module, *, baselines: float | Tensor = 0.0, samples: int = 32,
                 noise: float = 0.0, seed: int = 0, max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        check_samples(samples), check_noise(noise, example=0.1)
        self.baselines, self.samples, self.noise, self.seed = baselines, samples, noise, seed

    def draws(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """The baseline distribution ``[B, ...]`` with the drawn indices and alphas, and the noise."""
        bank = self.baselines
        if not isinstance(bank, Tensor):
            bank = torch.full((1, *x.shape[1:]), float(bank))
        if bank.dim() != x.dim() or bank.shape[1:] != x.shape[1:]:
            raise ConvscopeError(f"baselines of shape {list(bank.shape)} are not a batch of samples like the "
                                 f"input {list(x.shape)}",
                                 f"Pass a number or a tensor [B, {', '.join(map(str, x.shape[1:]))}] to draw from.")
        bank = bank.to(x.device, x.dtype)
        g = torch.Generator().manual_seed(self.seed)
        pick = torch.randint(bank.shape[0], (self.samples,), generator=g)
        alpha = torch.rand(self.samples, generator=g, dtype=torch.float64)
        eps = gaussian_draws(self.samples, x.shape[1:], self.seed + 1, like=x) if self.noise > 0 else None
        return bank[pick.to(bank.device)], alpha, eps

    def _compute(self, session: Session, x: Tensor, rows: Rows, targets: list[Target],
                 wrt: LayerKey | None) -> list[Tensor]:
        space, batches, glob = Attributed(session, wrt), Batches(self.max_batch, x.device), row_index(rows, len(x))
        baselines, alpha, eps = self.draws(x)
        alpha = alpha.to(x.device)  # indexed by device rows below
        sigma = self.noise * input_range(x)
        draws = self.samples
        sums: list[Tensor] = []

        def evaluate(items: slice) -> tuple[Tensor, list[Tensor]]:
            host, sample, k = expansion_rows(items, draws, x.device)
            noisy = x[sample] if eps is None else x[sample] + sigma[sample] * eps[k]
            end = space.values(noisy, glob[host], Batches(None))
            start = space.values(baselines[k], glob[host], Batches(None))
            grads = path_gradients(space, noisy, glob[host], start, end, alpha[k], targets)
            return sample, [(end - start) * g for g in grads]

        for _, (sample, parts) in batches.map(len(x) * draws, evaluate):
            if not sums:
                sums = [torch.zeros(len(x), *p.shape[1:], dtype=p.dtype, device=p.device) for p in parts]
            for total, p in zip(sums, parts):
                total.index_add_(0, sample.to(total.device), p)
        return [total / draws for total in sums]
