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
from typing import Any

import numpy as np
import torch
from torch import Tensor as TorchTensor

from convscope.backends.protocol import Chunk, Engine, Ops, Tensor
from convscope.backends.torch.batching import MaxBatch
from convscope.errors import ConvscopeError
from convscope.methods.base import Method, Rows, Wrt
from convscope.methods.options import check_noise, check_samples
from convscope.methods.registry import register_method
from convscope.methods.smooth import input_range
from convscope.targets import Target, TargetLike

__all__ = ["RULES", "GradientSHAP", "IntegratedGradients", "as_baseline", "input_range", "quadrature"]

RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gauss_legendre")


def quadrature(rule: str, steps: int) -> tuple[TorchTensor, TorchTensor]:
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


def as_baseline(baseline: Any, x: Tensor, ops: Ops, what: str = "baseline") -> Tensor:
    """``baseline`` as ``[1 or len(x), *x.shape[1:]]`` like ``x``: a number, one sample's shape
    (shared by all), one per sample, or a callable ``f(x)`` giving one of those for the input (in
    the model's layout, e.g. ``lambda x: gaussian_blur(x, 5.0)``)."""
    if callable(baseline):
        baseline = baseline(x)
    shape = list(x.shape[1:])
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return ops.full([1, *shape], float(baseline), like=x)
    b = ops.convert(baseline, x)
    if b is not None:
        if list(b.shape) == shape:
            b = b[None]
        if ops.rank(b) == ops.rank(x) and list(b.shape[1:]) == shape and int(b.shape[0]) in (1, int(x.shape[0])):
            return b
    found = list(np.shape(baseline)) if hasattr(baseline, "shape") else type(baseline).__name__
    raise ConvscopeError(f"the {what} {found} does not fit an input of shape {list(x.shape)}",
                         f"Give a number, an array shaped like one sample {shape}, or one per sample {list(x.shape)}.")


def path_gradients(method: Method, engine: Engine, x: Tensor, start: Tensor, end: Tensor, alpha: Tensor,
                   weight: Tensor, rows: Rows) -> list[Tensor]:
    """``weight * ds/da`` at ``start + alpha (end - start)`` for each target (one row per path
    point), compiled as one function per chunk."""
    return engine.compiled(("path",), method._path_point)(x, start, end, alpha, weight, rows)  # type: ignore[attr-defined]


class PathMethod(Method):
    """A method summing weighted gradients at points of straight paths (IG, GradientSHAP)."""

    expands = True

    def _path_point(self, engine: Engine, x: Tensor, start: Tensor, end: Tensor, alpha: Tensor, weight: Tensor,
                    rows: Rows) -> list[Tensor]:
        ops = engine.ops
        point = start + ops.per_row(alpha, end) * (end - start)
        run = engine.forward(x, rows, grad=True, replace=(engine.wrt, point))
        grads = [run.gradients(i, [run.value])[0] for i in range(len(run.scores))]
        return [g * ops.per_row(weight, g) for g in grads]


@register_method("integrated_gradients", "integrated gradients: (x - baseline) * path-averaged gradient")
class IntegratedGradients(PathMethod):
    """``(x - b) * sum_k w_k ds/da(b + alpha_k (x - b))``: see the module docstring.

    Defaults: 32 Gauss-Legendre steps (exact for polynomial paths of degree < 64) and a zero
    baseline. ``baseline`` is a number, one sample's shape, one per sample (``[N, ...]``), or a
    callable ``f(x)`` returning one of those for the input.
    Example: ``IntegratedGradients(model, steps=50, baseline=blurred).attribute(x, 3)``.
    """

    def __init__(self, model: Any, *, steps: int = 32, rule: str = "gauss_legendre",
                 baseline: Any = 0.0, max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        self.alpha, self.weights = quadrature(rule, steps)  # validates early
        self.steps, self.rule, self.baseline = steps, rule, baseline

    def _endpoints(self, engine: Engine, x: Tensor, rows: Rows) -> tuple[Tensor, Tensor]:
        """The attributed tensor at ``x`` and at the baseline (``[1 or N, ...]``)."""
        base = as_baseline(self.baseline, x, engine.ops)
        return engine.values(x, rows), engine.values(base, rows[:int(base.shape[0])])

    def _compute(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any) -> list[Tensor]:
        ops = engine.ops
        value, base = self._endpoints(engine, x, rows)
        alpha = ops.constant(self.alpha.numpy(), like=value)
        weights = ops.constant(self.weights.numpy(), like=value)

        def evaluate(c: Chunk) -> list[Tensor]:
            start = ops.take(base, c.sample) if int(base.shape[0]) > 1 else base
            return path_gradients(self, engine, ops.take(x, c.sample), start, ops.take(value, c.sample),
                                  ops.take(alpha, c.k), ops.take(weights, c.k), engine.take_rows(rows, c))

        sums = engine.accumulate(int(x.shape[0]), self.steps, evaluate, like=value)
        return [(value - base) * total for total in sums]

    def attribute_with_delta(self, x: Any, target: TargetLike | None = None, wrt: Wrt = None, *,
                             targets: Sequence[TargetLike] | None = None) -> Any:
        """``(maps, delta)`` with ``delta_n = sum(maps_n) - (s(x_n) - s(b_n))`` (a pair per target
        with ``targets=[...]``): the completeness gap, which shrinks as ``steps`` grows."""

        def body(engine: Engine, xs: Tensor, found: list[Target], layer: Any) -> list[tuple[Tensor, Tensor]]:
            ops = engine.ops
            maps = self._attribute(engine, xs, found, layer)
            rows = engine.rows(slice(0, int(xs.shape[0])))
            value, base = self._endpoints(engine, xs, rows)
            at_x = engine.scores(xs, rows, value)
            at_b = engine.scores(xs, rows, base + ops.zeros_like(value))
            axes = tuple(range(1, ops.rank(xs if layer is None else value)))
            return [(m, ops.sum(m, axes) - (sx - sb)) for m, sx, sb in zip(maps, at_x, at_b)]

        return self._run(x, target, wrt, targets, body)


@register_method("gradient_shap", "GradientSHAP: expected (x - baseline) * gradient at random path points")
class GradientSHAP(PathMethod):
    """``mean_k (x + eps_k - b_k) * ds/da(b_k + alpha_k (x + eps_k - b_k))`` over ``samples`` draws.

    ``baselines``: a number, a tensor ``[B, *sample_shape]`` to draw ``b_k`` from (default: one
    all-zero baseline), or a callable ``f(x)`` returning such a tensor for the input; ``noise``:
    the standard deviation of ``eps_k`` as a fraction of each sample's value range (default 0). Baseline indices ``randint(B, [K])`` then ``alpha = rand(K)``
    come from ``torch.Generator().manual_seed(seed)``; when ``noise > 0``,
    ``eps = randn(K, *sample_shape)`` comes from a generator on the input's device seeded with
    ``seed + 1`` (:func:`~convscope.methods.draws.gaussian_draws`). Every sample sees the same
    draws, so its map never depends on the rest of the batch. Example:
    ``GradientSHAP(model, baselines=backgrounds, samples=64, noise=0.1).attribute(x, 3)``.
    """

    def __init__(self, model: Any, *, baselines: Any = 0.0, samples: int = 32,
                 noise: float = 0.0, seed: int = 0, max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        check_samples(samples), check_noise(noise, example=0.1)
        self.baselines, self.samples, self.noise, self.seed = baselines, samples, noise, seed

    def draws(self, x: Tensor, engine: Engine) -> tuple[Tensor, Tensor, Tensor | None]:
        """The drawn baselines ``[K, ...]`` and alphas ``[K]``, and the noise (None without)."""
        ops = engine.ops
        bank = self.baselines(x) if callable(self.baselines) else self.baselines
        if isinstance(bank, (int, float)) and not isinstance(bank, bool):
            bank = ops.full([1, *x.shape[1:]], float(bank), like=x)
        converted = ops.convert(bank, x)
        if converted is None or ops.rank(converted) != ops.rank(x) or list(converted.shape[1:]) != list(x.shape[1:]):
            shape = list(np.shape(bank)) if hasattr(bank, "shape") else type(bank).__name__
            raise ConvscopeError(f"baselines of shape {shape} are not a batch of samples like the input "
                                 f"{list(x.shape)}",
                                 f"Pass a number or an array [B, {', '.join(str(int(d)) for d in x.shape[1:])}] "
                                 "to draw from.")
        g = torch.Generator().manual_seed(self.seed)
        pick = torch.randint(int(converted.shape[0]), (self.samples,), generator=g)
        alpha = torch.rand(self.samples, generator=g, dtype=torch.float64)
        eps = engine.gaussian(self.samples, x, self.seed + 1) if self.noise > 0 else None
        return ops.take(converted, ops.constant(pick.numpy(), like=converted)), ops.constant(alpha.numpy(), like=x), eps

    def _compute(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any) -> list[Tensor]:
        ops = engine.ops
        baselines, alpha, eps = self.draws(x, engine)
        sigma = self.noise * input_range(x, ops)
        ones = ops.full([self.samples], 1.0, like=x)

        def evaluate(c: Chunk) -> list[Tensor]:
            noisy = ops.take(x, c.sample)
            if eps is not None:
                noisy = noisy + ops.take(sigma, c.sample) * ops.take(eps, c.k)
            r = engine.take_rows(rows, c)
            end, start = engine.values(noisy, r), engine.values(ops.take(baselines, c.k), r)
            grads = path_gradients(self, engine, noisy, start, end, ops.take(alpha, c.k), ops.take(ones, c.k), r)
            return [(end - start) * g for g in grads]

        sums = engine.accumulate(int(x.shape[0]), self.samples, evaluate, like=x)
        return [total / self.samples for total in sums]
