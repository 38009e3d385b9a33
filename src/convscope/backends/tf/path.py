"""Integrated gradients on Keras models (formula, quadrature and baseline conventions as in
:mod:`convscope.methods.path`)::

    IG(x) = (x - b) * sum_k w_k * ds/da (b + alpha_k (x - b))

Each chunk of at most ``max_batch`` path points runs in one compiled function that also sums
the weighted gradients per sample (``tf.math.unsorted_segment_sum``). With ``wrt=layer`` the path
runs through that layer's activations (the layers below it still see the input).

:class:`KerasGradientSHAP` is its Monte-Carlo cousin (as :class:`convscope.methods.GradientSHAP`,
with the torch backend's draws moved to channels-last, so both backends agree).

Example::

    maps, delta = IntegratedGradients(keras_model, steps=64, max_batch=32).attribute_with_delta(x_nhwc, 3)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import torch
from torch import nn

from convscope.backends.tf.method import Chunk, KerasMethod, Wrt, implements, rows_of
from convscope.backends.tf.model import KerasNet
from convscope.backends.tf.layout import channels_first, channels_first_shape, channels_last
from convscope.backends.tf.targets import Scorer, score_all
from convscope.errors import ConvscopeError
from convscope.methods.batching import MaxBatch
from convscope.methods.path import GradientSHAP, IntegratedGradients, quadrature
from convscope.targets import TargetLike


def as_baseline(baseline: Any, x: tf.Tensor) -> tf.Tensor:
    """``baseline`` as ``[1 or N, ...]`` like ``x``: a number, one sample, or one per sample."""
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return tf.fill([1, *x.shape[1:]], tf.constant(float(baseline), x.dtype))
    if tf.is_tensor(baseline) or isinstance(baseline, np.ndarray):
        b = tf.cast(tf.convert_to_tensor(baseline), x.dtype)
        if b.shape == x.shape[1:]:
            b = b[None]
        if b.shape.rank == x.shape.rank and b.shape[1:] == x.shape[1:] and b.shape[0] in (1, x.shape[0]):
            return b
    shape = list(np.shape(baseline)) if hasattr(baseline, "shape") else type(baseline).__name__
    raise ConvscopeError(f"the baseline {shape} does not fit an input of shape {x.shape.as_list()}",
                         f"Give a number, an array shaped like one sample {x.shape.as_list()[1:]}, or one per "
                         f"sample {x.shape.as_list()}.")


def input_range(x: tf.Tensor) -> tf.Tensor:
    """``max - min`` of each sample, shaped ``[N, 1, ...]`` (noise is scaled by it)."""
    flat = tf.reshape(x, [x.shape[0], -1])
    return tf.reshape(tf.reduce_max(flat, 1) - tf.reduce_min(flat, 1), [-1] + [1] * (x.shape.rank - 1))


def weighted(values: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """Per-row ``values`` ``[m]`` reshaped to broadcast over ``like`` ``[m, ...]``."""
    return tf.reshape(tf.cast(values, like.dtype), [-1] + [1] * (like.shape.rank - 1))


def path_fn(net: KerasNet, scorers: list[Scorer], wrt: str | None, times_delta: bool = False
            ) -> Callable[..., list[tf.Tensor]]:
    """``f(x, start, end, alpha, weight, rows, segment, segments, feeds)``: per target
    ``sum over the rows of each segment of weight * ds/da`` at ``start + alpha (end - start)``
    (times ``end - start`` row by row when ``times_delta``, as GradientSHAP needs)."""
    layers = tuple(dict.fromkeys(layer for s in scorers for layer in s.layers))

    def fn(x: tf.Tensor, start: tf.Tensor, end: tf.Tensor, alpha: tf.Tensor, weight: tf.Tensor, rows: tf.Tensor,
           segment: tf.Tensor, segments: tf.Tensor, feeds: tuple[tf.Tensor, ...]) -> list[tf.Tensor]:
        point = start + weighted(alpha, end) * (end - start)
        with tf.GradientTape(persistent=len(scorers) > 1) as tape:
            tape.watch(point)
            record = net.run(point if wrt is None else x, layers, replace=None if wrt is None else {wrt: point})
            scores = [tf.reduce_sum(s) for s in score_all(scorers, record, rows, feeds)]
        grads = [tape.gradient(s, point, unconnected_gradients=tf.UnconnectedGradients.ZERO) for s in scores]
        scale = end - start if times_delta else 1.0
        return [tf.math.unsorted_segment_sum(g * weighted(weight, g) * scale, segment, segments) for g in grads]

    return fn


@implements(IntegratedGradients)
class KerasIntegratedGradients(KerasMethod):
    """``(x - b) * sum_k w_k ds/da(b + alpha_k (x - b))`` on a Keras model (defaults as in torch:
    32 Gauss-Legendre steps, a zero baseline; ``baseline`` NHWC)."""

    expands = True

    def __init__(self, model: keras.Model, *, steps: int = 32, rule: str = "gauss_legendre",
                 baseline: Any = 0.0, max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        alpha, weights = quadrature(rule, steps)  # validates early
        self.alpha, self.weights = alpha.numpy(), weights.numpy()
        self.steps, self.rule, self.baseline = steps, rule, baseline

    def endpoints(self, x: tf.Tensor, wrt: str | None) -> tuple[tf.Tensor, tf.Tensor]:
        """The attributed tensor at ``x`` and at the baseline (``[1 or N, ...]``)."""
        return self.values(x, wrt), self.values(as_baseline(self.baseline, x), wrt)

    def _compute(self, x: tf.Tensor, rows: tf.Tensor, scorers: list[Scorer], wrt: str | None) -> list[tf.Tensor]:
        value, base = self.endpoints(x, wrt)
        steps, net = self.steps, self.net

        def run(c: Chunk) -> list[tf.Tensor]:
            start = tf.gather(base, c.sample) if base.shape[0] > 1 else base
            return self.compiled(("path", wrt), lambda: path_fn(net, scorers, wrt), scorers,
                                 x if wrt is None else tf.gather(x, c.sample), start, tf.gather(value, c.sample),
                                 self.alpha[c.k].astype(np.float32), self.weights[c.k].astype(np.float32),
                                 tf.gather(rows, c.sample), c.segment, c.segments)

        sums = self.accumulate(int(x.shape[0]), steps, run)
        return [(value - base) * total for total in sums]

    def attribute_with_delta(self, x: Any, target: TargetLike | None = None, wrt: Wrt = None, *,
                             targets: Sequence[TargetLike] | None = None) -> Any:
        """``(maps, delta)`` with ``delta_n = sum(maps_n) - (s(x_n) - s(b_n))`` (a pair per target
        with ``targets=[...]``)."""

        def body(xs: tf.Tensor, scorers: list[Scorer], layer: str | None) -> list[tuple[tf.Tensor, tf.Tensor]]:
            maps = self._attribute(xs, scorers, layer)
            rows = rows_of(slice(0, int(xs.shape[0])))
            value, base = self.endpoints(xs, layer)
            at_x = self.scores(xs, rows, value, scorers, layer)
            at_b = self.scores(xs, rows, tf.broadcast_to(base, tf.shape(value)), scorers, layer)
            return [(m, tf.reduce_sum(tf.reshape(m, [m.shape[0], -1]), 1) - (sx - sb))
                    for m, sx, sb in zip(maps, at_x, at_b)]

        return self._run(x, target, wrt, targets, body)


@implements(GradientSHAP)
class KerasGradientSHAP(KerasMethod):
    """``mean_k (x + eps_k - b_k) * ds/da(b_k + alpha_k (x + eps_k - b_k))`` on a Keras model;
    ``baselines``: a number or an NHWC batch ``[B, H, W, C]`` to draw from."""

    expands = True

    def __init__(self, model: keras.Model, *, baselines: Any = 0.0, samples: int = 32,
                 noise: float = 0.0, seed: int = 0, max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        bank = baselines if isinstance(baselines, (int, float)) else \
            torch.from_numpy(channels_first(np.asarray(baselines, np.float32)))
        # the torch method checks the options and makes the draws; its model is never called
        self.planner = GradientSHAP(nn.Identity(), baselines=bank, samples=samples, noise=noise, seed=seed)
        self.samples, self.noise = samples, noise

    def _compute(self, x: tf.Tensor, rows: tf.Tensor, scorers: list[Scorer], wrt: str | None) -> list[tf.Tensor]:
        shape = tuple(x.shape[1:])
        given = self.planner.baselines
        if isinstance(given, torch.Tensor) and (given.dim() != len(shape) + 1
                                                or channels_last(given).shape[1:] != shape):
            raise ConvscopeError(f"baselines of shape {list(channels_last(given).shape)} are not a batch of samples "
                                 f"like the input {x.shape.as_list()}",
                                 "Pass a number or an array [B, H, W, C] shaped like the input's samples.")
        bank, alpha, eps = self.planner.draws(torch.empty(1, *channels_first_shape(shape)))
        bank = tf.cast(channels_last(bank), x.dtype)
        noise = None if eps is None else tf.cast(channels_last(eps), x.dtype)
        sigma = self.noise * input_range(x)
        draws, net = self.samples, self.net
        alpha = alpha.numpy().astype(np.float32)

        def run(c: Chunk) -> list[tf.Tensor]:
            noisy = tf.gather(x, c.sample)
            if noise is not None:
                noisy += tf.gather(sigma, c.sample) * tf.gather(noise, c.k)
            end, start = self.values(noisy, wrt), self.values(tf.gather(bank, c.k), wrt)
            return self.compiled(("shap", wrt), lambda: path_fn(net, scorers, wrt, times_delta=True), scorers,
                                 noisy, start, end, alpha[c.k], np.ones(len(c.k), np.float32),
                                 tf.gather(rows, c.sample), c.segment, c.segments)

        sums = self.accumulate(int(x.shape[0]), draws, run)
        return [total / draws for total in sums]
