"""Noise tunnels: average any attribution method over noisy copies of the input.

With ``m`` the wrapped method's map, ``eps_k ~ N(0, 1)`` (``k = 1..K``) and
``sigma_n = noise * (max(x_n) - min(x_n))`` (the noise level as a fraction of each sample's
value range, as in Smilkov et al. 2017; with several inputs, of each input's range), or an
absolute ``sigma = stdevs`` (Captum's ``stdevs``; one per input with several inputs)::

    SmoothGrad         = mean_k m(x + sigma eps_k)
    SmoothGradSquared  = mean_k m(x + sigma eps_k) ** 2
    VarGrad            = mean_k m(...) ** 2 - (mean_k m(...)) ** 2     (population variance)

The draws are ``torch.randn(K, *sample_shape)`` from ``torch.Generator(x.device).manual_seed(seed)``
(:func:`~convscope.methods.draws.gaussian_draws`): the same for every sample, so a sample's map
never depends on the rest of the batch or on ``max_batch``, and the global random state is
untouched. They are made on the input's device (CPU and CUDA draws differ); a Keras model gets
the CPU draws of the channels-first sample moved to channels-last, so it sees its PyTorch twin's noise.

A noise tunnel wraps any method, CAM methods included (their maps keep the CAM's shape).

Example::

    SmoothGrad(GuidedBackprop(model), samples=50, noise=0.15, seed=0).attribute(x, 3)
    VarGrad(model, method=IntegratedGradients).attribute(x, 3)
    SmoothGrad(model).attribute(x, 3)                        # wraps Saliency(model)
"""

from __future__ import annotations

import copy
from typing import Any

from convscope.backends.protocol import Chunk, Engine, Ops, Tensor
from convscope.backends.torch.batching import MaxBatch
from convscope.methods.base import Method, Rows, Wrapper, wrapped_method
from convscope.methods.gradient import Saliency
from convscope.errors import ConvscopeError
from convscope.methods.options import check_noise, check_samples
from convscope.methods.registry import register_method
from convscope.ops import tensors
from convscope.targets import Target


def input_range(x: Tensor, ops: Ops = tensors) -> Tensor:
    """``max - min`` of each sample, shaped ``[N, 1, ...]`` to scale noise per sample."""
    axes = tuple(range(1, ops.rank(x)))
    return ops.amax(ops.detach(x), axes, keepdims=True) - ops.amin(ops.detach(x), axes, keepdims=True)


def noise_level(noise: float | None, stdevs: Any, default: float, example: float) -> tuple[float, Any]:
    """``(noise, stdevs)`` checked: a relative level (``default`` when neither is given) or an
    absolute standard deviation ``stdevs`` (a number >= 0, or one per input), not both."""
    if noise is not None and stdevs is not None:
        raise ConvscopeError(f"both noise={noise!r} and stdevs={stdevs!r} were given",
                             "Give noise= (a fraction of each sample's value range) or stdevs= (absolute), not both.")
    if stdevs is None:
        return check_noise(default if noise is None else noise, example=example), None
    for s in stdevs if isinstance(stdevs, (tuple, list)) else (stdevs,):
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not s >= 0:
            raise ConvscopeError(f"stdevs={stdevs!r} must be a number >= 0 or one per input",
                                 "stdevs is the noise's absolute standard deviation, e.g. stdevs=0.1 or (0.1, 0.5).")
    return 0.0, stdevs


def noise_sigma(x: Tensor, ops: Ops, inputs: Any, noise: float, stdevs: Any) -> Tensor:
    """The noise's standard deviation, one row per sample of ``x``, broadcastable to it:
    ``stdevs`` (absolute; one per input with several inputs) or ``noise`` times each sample's
    (each input's) value range."""
    if stdevs is None:
        return noise * (input_range(x, ops) if inputs is None else inputs.ranges(x))
    if inputs is None:
        if isinstance(stdevs, (tuple, list)):
            if len(stdevs) != 1:
                raise ConvscopeError(f"stdevs={stdevs!r} gives {len(stdevs)} values for one input",
                                     "Give one number, e.g. stdevs=0.1.")
            stdevs = stdevs[0]
        return ops.zeros_like(x) + float(stdevs)
    return ops.zeros_like(x) + inputs.pack(stdevs, like=x, what="stdevs")


def check_noise_input(engine: Engine, noisy: bool, method: str) -> None:
    """A clear error when noise would be added to integer inputs (token ids)."""
    inputs = engine.inputs
    if noisy and inputs is not None and inputs.integer:
        raise ConvscopeError(f"{method} adds noise to the inputs, and integer inputs (token ids) cannot take noise",
                             "Use a method without input noise (IntegratedGradients, Saliency) with wrt= the "
                             "embedding layer, or pass the embeddings as a float input.")


class NoiseTunnel(Wrapper):
    """The wrapped method's maps over ``samples`` noisy copies, reduced by :meth:`reduce`.

    ``method`` is a :class:`Method` instance, or a model (then ``use`` names the method class
    built on it, default :class:`~convscope.methods.Saliency`). ``max_batch`` (default: the
    wrapped method's) bounds every model call; a wrapped method that expands its input itself
    (integrated gradients, ...) gets one sample's noisy copies at a time and the same bound.
    """

    expands = True
    squares = False  # whether reduce needs the mean of the squared maps

    def __init__(self, method: Method | Any, *, use: type[Method] = Saliency, samples: int = 32,
                 noise: float | None = None, stdevs: Any = None, seed: int = 0, max_batch: MaxBatch = None) -> None:
        method = wrapped_method(method, use, "GuidedBackprop")
        super().__init__(method.model, max_batch=max_batch if max_batch is not None else method.max_batch)
        check_samples(samples)
        self.noise, self.stdevs = noise_level(noise, stdevs, default=0.15, example=0.15)
        self.method = copy.copy(method)  # our max_batch on a copy: the caller's object stays as it was
        self.method.max_batch = self.max_batch
        self.samples, self.seed = samples, seed

    def reduce(self, mean: Tensor, mean_sq: Tensor | None) -> Tensor:
        """The map from the mean (and mean square) of the noisy maps."""
        return mean

    def _compute(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any) -> list[Tensor]:
        count = len(targets)
        sums = self._noisy(engine, x, rows, targets, wrt, delta=False)
        return [self.reduce(s / self.samples, sums[count + i] / self.samples if self.squares else None)
                for i, s in enumerate(sums[:count])]

    def _noisy(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any, delta: bool
               ) -> list[Tensor]:
        """Per target the summed maps of the noisy copies, then (``squares``) their squares, then
        (``delta``) the wrapped method's deltas ``[n, K]`` of each copy."""
        ops, draws = engine.ops, self.samples
        check_noise_input(engine, True, type(self).__name__)
        eps = engine.gaussian(draws, x, self.seed)
        sigma = noise_sigma(x, ops, engine.inputs, self.noise, self.stdevs)

        def evaluate(c: Chunk) -> list[Tensor]:
            noisy = ops.take(x, c.sample) + ops.take(sigma, c.sample) * ops.take(eps, c.k)
            r = engine.take_rows(rows, c)
            maps = self.method._compute(engine, noisy, r, targets, wrt)
            parts = maps + [m * m for m in maps] if self.squares else maps
            if delta:
                slots = ops.one_hot(c.k, draws, like=noisy)  # row j's delta in column k_j: summed, [n, K]
                parts += [slots * ops.per_row(d, slots) for d in self.method._deltas(engine, noisy, r, maps)]
            return parts

        return engine.accumulate(int(x.shape[0]), draws, evaluate, like=x,
                                 **({"max_batch": draws} if self.method.expands else {}))

    def _check_delta(self) -> None:
        if not hasattr(self.method, "_deltas"):
            raise ConvscopeError(f"{type(self).__name__} around {type(self.method).__name__} has no convergence delta",
                                 "Wrap IntegratedGradients to get one (GradientSHAP is a noise tunnel itself: ask it "
                                 "for its delta directly).")
        self.method._check_delta()
        if self.squares:
            raise ConvscopeError(f"{type(self).__name__} has no convergence delta: its maps are squares of attributions",
                                 "Use SmoothGrad(IntegratedGradients(model)) for a delta per noisy copy.")

    def _with_delta(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any
                    ) -> list[tuple[Tensor, Tensor]]:
        count = len(targets)
        sums = self._noisy(engine, x, rows, targets, wrt, delta=True)
        return [(m / self.samples, engine.ops.vector(d)) for m, d in zip(sums[:count], sums[count:])]

    def __repr__(self) -> str:
        level = f"noise={self.noise}" if self.stdevs is None else f"stdevs={self.stdevs!r}"
        return f"{type(self).__name__}({self.method!r}, samples={self.samples}, {level}, seed={self.seed})"


@register_method("smooth_grad", "SmoothGrad: the gradient averaged over noisy copies of the input")
class SmoothGrad(NoiseTunnel):
    """``mean_k m(x + sigma eps_k)``. Example: ``SmoothGrad(model, samples=50).attribute(x, 3)``."""


@register_method("smooth_grad_squared", "SmoothGrad-squared: the mean square of gradients at noisy inputs")
class SmoothGradSquared(NoiseTunnel):
    """``mean_k m(x + sigma eps_k) ** 2``. Example: ``SmoothGradSquared(model).attribute(x, 3)``."""

    squares = True

    def reduce(self, mean: Tensor, mean_sq: Tensor | None) -> Tensor:
        assert mean_sq is not None
        return mean_sq


@register_method("var_grad", "VarGrad: the variance of gradients at noisy inputs")
class VarGrad(NoiseTunnel):
    """``mean_k m_k ** 2 - (mean_k m_k) ** 2``. Example: ``VarGrad(GuidedBackprop(model)).attribute(x, 3)``."""

    squares = True

    def reduce(self, mean: Tensor, mean_sq: Tensor | None) -> Tensor:
        assert mean_sq is not None
        return mean_sq - mean * mean
