"""Noise tunnels on Keras models: any Keras method averaged over noisy copies of the input
(formulas as in :mod:`convscope.methods.smooth`)::

    SmoothGrad = mean_k m(x + sigma eps_k),   sigma_n = noise * (max(x_n) - min(x_n))

The draws are the torch backend's CPU draws (:func:`~convscope.methods.draws.gaussian_draws`,
``[K, C, H, W]``) moved to channels-last, so a Keras model and its PyTorch twin see the very same noise and give
the same maps; the global random state is untouched.

Example::

    SmoothGrad(GuidedBackprop(keras_model), samples=50, noise=0.15).attribute(x_nhwc, 3)
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import tensorflow as tf
import torch

from convscope.backends.tf.layout import channels_first_shape, channels_last
from convscope.backends.tf.method import Chunk, KerasMethod, implements, keras_wrapped
from convscope.backends.tf.path import input_range
from convscope.backends.tf.targets import Scorer
from convscope.methods.batching import MaxBatch
from convscope.methods.draws import gaussian_draws
from convscope.methods.gradient import Saliency
from convscope.methods.options import check_noise, check_samples
from convscope.methods.smooth import SmoothGrad, SmoothGradSquared, VarGrad


def noise_draws(shape: tuple[int, ...], draws: int, seed: int) -> tf.Tensor:
    """``draws`` standard-normal samples of one channels-last sample ``shape``: the torch backend's
    CPU draws of the channels-first shape, moved to channels-last."""
    return tf.constant(channels_last(gaussian_draws(draws, channels_first_shape(shape), seed, like=torch.empty(0))))


class KerasNoiseTunnel(KerasMethod):
    """The wrapped Keras method's maps over ``samples`` noisy copies, reduced by :meth:`reduce`."""

    expands = True
    squares: ClassVar[bool] = False

    def __init__(self, method: Any, *, use: type = Saliency, samples: int = 32, noise: float = 0.15,
                 seed: int = 0, max_batch: MaxBatch = None) -> None:
        method = keras_wrapped(method, use, "GuidedBackprop", "SmoothGrad(Saliency(model))")
        super().__init__(method.model, max_batch=max_batch if max_batch is not None else method.max_batch)
        check_samples(samples), check_noise(noise, example=0.15)
        self.method = copy.copy(method)  # our max_batch on a copy: the caller's object stays as it was
        self.method.max_batch = self.max_batch
        self.samples, self.noise, self.seed = samples, noise, seed

    def reduce(self, mean: tf.Tensor, mean_sq: tf.Tensor | None) -> tf.Tensor:
        """The map from the mean (and mean square) of the noisy maps."""
        return mean

    def _compute(self, x: tf.Tensor, rows: tf.Tensor, scorers: list[Scorer], wrt: str | None) -> list[tf.Tensor]:
        draws = self.samples
        eps = tf.cast(noise_draws(tuple(x.shape[1:]), draws, self.seed), x.dtype)
        sigma = self.noise * input_range(x)

        def run(c: Chunk) -> list[tf.Tensor]:
            noisy = tf.gather(x, c.sample) + tf.gather(sigma, c.sample) * tf.gather(eps, c.k)
            maps = self.method._compute(noisy, tf.gather(rows, c.sample), scorers, wrt)
            maps += [m * m for m in maps] if self.squares else []
            return [tf.math.unsorted_segment_sum(m, c.segment, c.segments) for m in maps]

        sums = self.accumulate(int(x.shape[0]), draws, run, draws if self.method.expands else None)
        squares = sums[len(scorers):]
        return [self.reduce(s / draws, squares[i] / draws if self.squares else None)
                for i, s in enumerate(sums[:len(scorers)])]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.method!r}, samples={self.samples}, noise={self.noise}, seed={self.seed})"


@implements(SmoothGrad)
class KerasSmoothGrad(KerasNoiseTunnel):
    """``mean_k m(x + sigma eps_k)``. Example: ``SmoothGrad(keras_model, samples=50).attribute(x, 3)``."""


@implements(SmoothGradSquared)
class KerasSmoothGradSquared(KerasNoiseTunnel):
    """``mean_k m(x + sigma eps_k) ** 2``."""

    squares = True

    def reduce(self, mean: tf.Tensor, mean_sq: tf.Tensor | None) -> tf.Tensor:
        assert mean_sq is not None
        return mean_sq


@implements(VarGrad)
class KerasVarGrad(KerasNoiseTunnel):
    """``mean_k m_k ** 2 - (mean_k m_k) ** 2``."""

    squares = True

    def reduce(self, mean: tf.Tensor, mean_sq: tf.Tensor | None) -> tf.Tensor:
        assert mean_sq is not None
        return mean_sq - mean * mean
