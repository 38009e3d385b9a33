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
untouched. They are made on the input's device (CPU and CUDA draws differ).

Example::

    SmoothGrad(GuidedBackprop(model), samples=50, noise=0.15, seed=0).attribute(x, 3)
    VarGrad(model, method=IntegratedGradients).attribute(x, 3)
    SmoothGrad(model).attribute(x, 3)                        # wraps Saliency(model)
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from convscope.backends.torch.probes import LayerKey
from convscope.backends.torch.session import Session
from convscope.methods.base import MaxBatch, Method, Rows, row_index, wrapped_method
from convscope.methods.batching import Batches, expansion_rows
from convscope.methods.draws import gaussian_draws
from convscope.methods.gradient import Saliency
from convscope.methods.options import check_noise, check_samples
from convscope.methods.path import input_range
from convscope.methods.registry import register_method
from convscope.rules import RuleMap
from convscope.targets import Target


class NoiseTunnel(Method):
    """The wrapped method's maps over ``samples`` noisy copies, reduced by :meth:`reduce`.

    ``method`` is a :class:`Method` instance, or a model (then ``use`` names the method class
    built on it, default :class:`~convscope.methods.Saliency`). ``max_batch`` (default: the
    wrapped method's) bounds every model call; a wrapped method that expands its input itself
    (integrated gradients, ...) gets one sample's noisy copies at a time and the same bound.
    """

    expands = True
    squares = False  # whether reduce needs the mean of the squared maps

    def __init__(self, method: Method | nn.Module, *, use: type[Method] = Saliency, samples: int = 32,
                 noise: float = 0.15, seed: int = 0, max_batch: MaxBatch = None) -> None:
        method = wrapped_method(method, use, (Method,), "GuidedBackprop")
        super().__init__(method.model, max_batch=max_batch if max_batch is not None else method.max_batch)
        check_samples(samples), check_noise(noise, example=0.15)
        self.method = copy.copy(method)  # our max_batch on a copy: the caller's object stays as it was
        self.method.max_batch = self.max_batch
        self.samples, self.noise, self.seed = samples, noise, seed

    def _rules(self) -> RuleMap | None:
        return self.method._rules()

    def reduce(self, mean: Tensor, mean_sq: Tensor | None) -> Tensor:
        """The map from the mean (and mean square) of the noisy maps."""
        return mean

    def _compute(self, session: Session, x: Tensor, rows: Rows, targets: list[Target],
                 wrt: LayerKey | None) -> list[Tensor]:
        glob, draws = row_index(rows, len(x)), self.samples
        eps = gaussian_draws(draws, x.shape[1:], self.seed, like=x)
        sigma = self.noise * input_range(x)
        batches = Batches(draws if self.method.expands else self.max_batch, x.device)
        sums: list[Tensor] = []
        squares: list[Tensor] = []

        def evaluate(items: slice) -> tuple[Tensor, list[Tensor]]:
            host, sample, k = expansion_rows(items, draws, x.device)
            noisy = x[sample] + sigma[sample] * eps[k]
            return sample, self.method._compute(session, noisy, glob[host], targets, wrt)

        for _, (sample, maps) in batches.map(len(x) * draws, evaluate):
            if not sums:
                sums = [torch.zeros(len(x), *m.shape[1:], dtype=m.dtype, device=m.device) for m in maps]
                squares = [torch.zeros_like(s) for s in sums] if self.squares else []
            index = sample.to(sums[0].device)
            for i, m in enumerate(maps):
                sums[i].index_add_(0, index, m)
                if self.squares:
                    squares[i].index_add_(0, index, m * m)
        return [self.reduce(s / draws, squares[i] / draws if self.squares else None) for i, s in enumerate(sums)]

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
