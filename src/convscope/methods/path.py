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

from typing import Any

import numpy as np
import torch
from torch import Tensor as TorchTensor

from convscope.backends.protocol import Chunk, Engine, Ops, Tensor
from convscope.backends.torch.batching import MaxBatch
from convscope.errors import ConvscopeError
from convscope.methods.base import Method, Rows
from convscope.methods.options import check_flag, check_samples
from convscope.methods.registry import register_method
from convscope.methods.smooth import check_noise_input, input_range, noise_level, noise_sigma
from convscope.targets import Target

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


def as_baseline(baseline: Any, x: Tensor, ops: Ops, what: str = "baseline", inputs: Any = None) -> Tensor:
    """``baseline`` as ``[1 or len(x), *x.shape[1:]]`` like ``x``: a number, one sample's shape
    (shared by all), one per sample, or a callable ``f(x)`` giving one of those for the input (in
    the model's layout, e.g. ``lambda x: gaussian_blur(x, 5.0)``). With several inputs
    (``inputs``, :class:`~convscope.backends.torch.inputs.Inputs`) one such value per input, in a
    tuple; a callable gets and returns the inputs as the user gave them."""
    if inputs is not None:
        given = baseline(_given(inputs, x)) if callable(baseline) else baseline
        b = inputs.pack(given, like=x, what=what)
        if int(b.shape[0]) not in (1, int(x.shape[0])):
            raise ConvscopeError(f"the {what} holds {int(b.shape[0])} rows for {int(x.shape[0])} samples",
                                 "Give one (shared) or one per sample.")
        return b
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


def _given(inputs: Any, x: Tensor) -> Any:
    """The user's inputs (integer ids in their dtype) from the attributed input ``x``."""
    parts = inputs.unpack(x)
    return parts[0] if inputs.single else parts


def path_gradients(method: Method, engine: Engine, x: Tensor, start: Tensor, end: Tensor, alpha: Tensor,
                   weight: Tensor, rows: Rows) -> list[Tensor]:
    """``weight * ds/da`` at ``start + alpha (end - start)`` for each target (one row per path
    point), compiled as one function per chunk."""
    return engine.compiled(("path",), method._path_point)(x, start, end, alpha, weight, rows)  # type: ignore[attr-defined]


class PathMethod(Method):
    """A method summing weighted gradients at points of straight paths (IG, GradientSHAP).

    ``multiply_by_inputs=False`` leaves out the factor ``(x - b)``: the path-averaged gradient
    alone (Captum's option of the same name; it has no convergence delta)."""

    expands = True
    multiply_by_inputs: bool = True

    def _path_point(self, engine: Engine, x: Tensor, start: Tensor, end: Tensor, alpha: Tensor, weight: Tensor,
                    rows: Rows) -> list[Tensor]:
        ops = engine.ops
        point = start + ops.per_row(alpha, end) * (end - start)
        run = engine.forward(x, rows, grad=True, replace=(engine.wrt, point))
        grads = [run.gradients(i, [run.value])[0] for i in range(len(run.scores))]
        return [g * ops.per_row(weight, g) for g in grads]

    def _check_delta(self) -> None:
        if not self.multiply_by_inputs:
            raise ConvscopeError(f"{type(self).__name__}(multiply_by_inputs=False) has no convergence delta: its maps "
                                 "are gradients, which do not add up to a score difference",
                                 "Leave multiply_by_inputs at True to get the delta.")


def baseline_rows(engine: Engine, base: Tensor, n: int) -> Tensor:
    """``base`` with one row per sample where the model gets per-sample arguments (a shared
    baseline's layer value then differs by sample), else as it is."""
    if engine.inputs is None or int(base.shape[0]) == n:
        return base
    return engine.ops.cat([base] * n)


@register_method("integrated_gradients", "integrated gradients: (x - baseline) * path-averaged gradient")
class IntegratedGradients(PathMethod):
    """``(x - b) * sum_k w_k ds/da(b + alpha_k (x - b))``: see the module docstring.

    Defaults: 32 Gauss-Legendre steps (exact for polynomial paths of degree < 64) and a zero
    baseline. ``baseline`` is a number, one sample's shape, one per sample (``[N, ...]``), or a
    callable ``f(x)`` returning one of those for the input (with several inputs: one per input, in
    a tuple). ``multiply_by_inputs=False``: ``sum_k w_k ds/da(...)`` alone.
    Example: ``IntegratedGradients(model, steps=50, baseline=blurred).attribute(x, 3)``.
    """

    def __init__(self, model: Any, *, steps: int = 32, rule: str = "gauss_legendre",
                 baseline: Any = 0.0, multiply_by_inputs: bool = True, max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        self.alpha, self.weights = quadrature(rule, steps)  # validates early
        self.steps, self.rule, self.baseline = steps, rule, baseline
        self.multiply_by_inputs = check_flag("multiply_by_inputs", multiply_by_inputs) is not False

    def _endpoints(self, engine: Engine, x: Tensor, rows: Rows) -> tuple[Tensor, Tensor]:
        """The attributed tensor at ``x`` and at the baseline (``[1 or N, ...]``)."""
        base = baseline_rows(engine, as_baseline(self.baseline, x, engine.ops, inputs=engine.inputs), int(x.shape[0]))
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
        return [(value - base) * total for total in sums] if self.multiply_by_inputs else sums

    def _deltas(self, engine: Engine, x: Tensor, rows: Rows, maps: list[Tensor]) -> list[Tensor]:
        """``sum(maps_n) - (s(x_n) - s(b_n))`` per sample, for the maps of ``x``."""
        ops = engine.ops
        value, base = self._endpoints(engine, x, rows)
        at_x = engine.scores(x, rows, value)
        at_b = engine.scores(x, rows, base + ops.zeros_like(value))
        axes = tuple(range(1, ops.rank(value)))
        return [ops.sum(m, axes) - (sx - sb) for m, sx, sb in zip(maps, at_x, at_b)]

    def _with_delta(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any
                    ) -> list[tuple[Tensor, Tensor]]:
        maps = self._compute(engine, x, rows, targets, wrt)
        return list(zip(maps, self._deltas(engine, x, rows, maps)))


@register_method("gradient_shap", "GradientSHAP: expected (x - baseline) * gradient at random path points")
class GradientSHAP(PathMethod):
    """``mean_k (x + eps_k - b_k) * ds/da(b_k + alpha_k (x + eps_k - b_k))`` over ``samples`` draws.

    ``baselines``: a number, a tensor or numpy array ``[B, *sample_shape]`` to draw ``b_k`` from
    (default: one all-zero baseline), or a callable ``f(x)`` returning such a tensor for the input
    (with several inputs: one per input, in a tuple); ``noise``: the standard deviation of
    ``eps_k`` as a fraction of each sample's value range (default 0), or ``stdevs``: an absolute
    one (a number, or one per input; Captum's ``stdevs``). Baseline indices ``randint(B, [K])``
    then ``alpha = rand(K)`` come from ``torch.Generator().manual_seed(seed)``; when noise is
    on, ``eps = randn(K, *sample_shape)`` comes from a generator on the input's device seeded with
    ``seed + 1`` (:func:`~convscope.methods.draws.gaussian_draws`). Every sample sees the same
    draws, so its map never depends on the rest of the batch. ``multiply_by_inputs=False``: the
    mean gradient alone. Example:
    ``GradientSHAP(model, baselines=backgrounds, samples=64, noise=0.1).attribute(x, 3)``.
    """

    def __init__(self, model: Any, *, baselines: Any = 0.0, samples: int = 32, noise: float | None = None,
                 stdevs: Any = None, seed: int = 0, multiply_by_inputs: bool = True,
                 max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        check_samples(samples)
        self.noise, self.stdevs = noise_level(noise, stdevs, default=0.0, example=0.1)
        self.baselines, self.samples, self.seed = baselines, samples, seed
        self.multiply_by_inputs = check_flag("multiply_by_inputs", multiply_by_inputs) is not False

    def draws(self, x: Tensor, engine: Engine) -> tuple[Tensor, Tensor, Tensor | None]:
        """The drawn baselines ``[K, ...]`` and alphas ``[K]``, and the noise (None without)."""
        ops = engine.ops
        converted = self._bank(x, engine)
        g = torch.Generator().manual_seed(self.seed)
        pick = torch.randint(int(converted.shape[0]), (self.samples,), generator=g)
        alpha = torch.rand(self.samples, generator=g, dtype=torch.float64)
        noisy = self.noise > 0 or self.stdevs is not None
        eps = engine.gaussian(self.samples, x, self.seed + 1) if noisy else None
        return ops.take(converted, ops.constant(pick.numpy(), like=converted)), ops.constant(alpha.numpy(), like=x), eps

    def _bank(self, x: Tensor, engine: Engine) -> Tensor:
        """The baselines to draw from, ``[B, ...]`` like ``x``, else a clear error."""
        ops, inputs = engine.ops, engine.inputs
        if inputs is not None:
            bank = self.baselines(_given(inputs, x)) if callable(self.baselines) else self.baselines
            return inputs.pack(bank, like=x, what="baselines")
        bank = self.baselines(x) if callable(self.baselines) else self.baselines
        if isinstance(bank, (int, float)) and not isinstance(bank, bool):
            bank = ops.full([1, *x.shape[1:]], float(bank), like=x)
        try:
            converted = ops.convert(bank, x)
        except (TypeError, ValueError):  # e.g. a numpy array of objects
            converted = None
        if converted is None or ops.rank(converted) != ops.rank(x) or list(converted.shape[1:]) != list(x.shape[1:]):
            shape = list(np.shape(bank)) if hasattr(bank, "shape") else type(bank).__name__
            raise ConvscopeError(f"baselines of shape {shape} are not a batch of samples like the input "
                                 f"{list(x.shape)}",
                                 f"Pass a number or an array [B, {', '.join(str(int(d)) for d in x.shape[1:])}] "
                                 "to draw from (or a callable returning one).")
        return converted

    def _evaluations(self, engine: Engine, x: Tensor, rows: Rows, delta: bool) -> list[Tensor]:
        """Per target the summed maps ``[n, ...]`` (and with ``delta``, then, the deltas ``[n, K]``)."""
        ops = engine.ops
        check_noise_input(engine, self.noise > 0 or self.stdevs is not None, type(self).__name__)
        baselines, alpha, eps = self.draws(x, engine)
        sigma = noise_sigma(x, ops, engine.inputs, self.noise, self.stdevs)
        ones = ops.full([self.samples], 1.0, like=x)
        count = self.samples

        def evaluate(c: Chunk) -> list[Tensor]:
            noisy = ops.take(x, c.sample)
            if eps is not None:
                noisy = noisy + ops.take(sigma, c.sample) * ops.take(eps, c.k)
            r = engine.take_rows(rows, c)
            end, start = engine.values(noisy, r), engine.values(ops.take(baselines, c.k), r)
            grads = path_gradients(self, engine, noisy, start, end, ops.take(alpha, c.k), ops.take(ones, c.k), r)
            maps = [(end - start) * g for g in grads] if self.multiply_by_inputs else grads
            if not delta:
                return maps
            axes = tuple(range(1, ops.rank(end)))
            gaps = [ops.sum(m, axes) - (se - ss) for m, se, ss in zip(
                maps, engine.evaluate(noisy, r, replace=(engine.wrt, end)),
                engine.evaluate(noisy, r, replace=(engine.wrt, start)))]
            slots = ops.one_hot(c.k, count, like=end)  # row j's delta in column k_j: summed, [n, K]
            return maps + [slots * ops.per_row(g, slots) for g in gaps]

        return engine.accumulate(int(x.shape[0]), count, evaluate, like=x)

    def _compute(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any) -> list[Tensor]:
        return [total / self.samples for total in self._evaluations(engine, x, rows, False)]

    def _with_delta(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any
                    ) -> list[tuple[Tensor, Tensor]]:
        sums, count = self._evaluations(engine, x, rows, True), len(targets)
        return [(m / self.samples, engine.ops.vector(d)) for m, d in zip(sums[:count], sums[count:])]
