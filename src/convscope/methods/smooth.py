"""Noise tunnels: average any attribution method over noisy copies of the input.

With ``m`` the wrapped method's map, ``eps_k ~ N(0, 1)`` (``k = 1..K``) and
``sigma_n = noise * (max(x_n) - min(x_n))`` (the noise level as a fraction of each sample's
value range, as in Smilkov et al. 2017)::

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
from convscope.methods.options import check_noise, check_samples
from convscope.methods.registry import register_method
from convscope.ops import tensors
from convscope.targets import Target


def input_range(x: Tensor, ops: Ops = tensors) -> Tensor:
    """``max - min`` of each sample, shaped ``[N, 1, ...]`` to scale noise per sample."""
    axes = tuple(range(1, ops.rank(x)))
    return ops.amax(ops.detach(x), axes, keepdims=True) - ops.amin(ops.detach(x), axes, keepdims=True)


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
                 noise: float = 0.15, seed: int = 0, max_batch: MaxBatch = None) -> None:
        method = wrapped_method(method, use, "GuidedBackprop")
        super().__init__(method.model, max_batch=max_batch if max_batch is not None else method.max_batch)
        check_samples(samples), check_noise(noise, example=0.15)
        self.method = copy.copy(method)  # our max_batch on a copy: the caller's object stays as it was
        self.method.max_batch = self.max_batch
        self.samples, self.noise, self.seed = samples, noise, seed

    def reduce(self, mean: Tensor, mean_sq: Tensor | None) -> Tensor:
        """The map from the mean (and mean square) of the noisy maps."""
        return mean

    def _compute(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any) -> list[Tensor]:
        ops, draws = engine.ops, self.samples
        eps = engine.gaussian(draws, x, self.seed)
        sigma = self.noise * input_range(x, ops)

        def evaluate(c: Chunk) -> list[Tensor]:
            noisy = ops.take(x, c.sample) + ops.take(sigma, c.sample) * ops.take(eps, c.k)
            maps = self.method._compute(engine, noisy, engine.take_rows(rows, c), targets, wrt)
            return maps + [m * m for m in maps] if self.squares else maps

        sums = engine.accumulate(int(x.shape[0]), draws, evaluate, like=x,
                                 **({"max_batch": draws} if self.method.expands else {}))
        count = len(targets)
        return [self.reduce(s / draws, sums[count + i] / draws if self.squares else None)
                for i, s in enumerate(sums[:count])]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.method!r}, samples={self.samples}, noise={self.noise}, "
                f"seed={self.seed})")


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
