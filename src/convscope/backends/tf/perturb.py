"""Occlusion on Keras models (windows, fills and formula as in :mod:`convscope.methods.perturb`)::

    Occlusion(x)[p] = mean over the windows w covering p of (s(x) - s(x_w))

Windows are planned on the channels-first shape ``(C, H, W)`` by the torch method's own code
(so both backends use the same windows) and applied channels-last. Each chunk of at most
``max_batch`` occluded inputs is built, scored and spread back over its windows in one compiled
function.

:class:`KerasRISE` scores the torch method's random soft masks (same draws, moved to channels-last).

Example::

    maps = Occlusion(keras_model, window=16, stride=8, fill="blur", max_batch=64).attribute(x_nhwc, 3)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from torch import nn

from convscope.backends.tf.layout import channels_last
from convscope.backends.tf.method import Chunk, KerasMethod, implements
from convscope.backends.tf.model import KerasNet
from convscope.backends.tf.targets import Scorer, score_all
from convscope.errors import ConvscopeError
from convscope.methods.batching import MaxBatch
from convscope.methods.perturb import RISE, Occlusion, Size, rise_masks


def gaussian_blur(x: tf.Tensor, sigma: float) -> tf.Tensor:
    """Each channel of ``x`` ``[N, H, W, C]`` blurred by a Gaussian of std ``sigma`` (reflected edges)."""
    radius = max(1, min(math.ceil(3 * sigma), min(x.shape[1:3]) - 1))
    t = tf.range(-radius, radius + 1, dtype=x.dtype)
    kernel = tf.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / tf.reduce_sum(kernel)
    c = x.shape[-1]
    out = tf.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    out = tf.nn.depthwise_conv2d(out, tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, c, 1]), [1] * 4, "VALID")
    return tf.nn.depthwise_conv2d(out, tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, c, 1]), [1] * 4, "VALID")


def fill_values(fill: Any, value: tf.Tensor, sigma: float) -> tf.Tensor:
    """What replaces the occluded parts, shaped like ``value`` ``[N, H, W, C]``."""
    if isinstance(fill, str):
        return gaussian_blur(value, sigma)
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        return tf.fill(tf.shape(value), tf.constant(float(fill), value.dtype))
    f = tf.cast(tf.convert_to_tensor(fill), value.dtype)
    try:
        return tf.broadcast_to(f[None], tf.shape(value))
    except (tf.errors.InvalidArgumentError, ValueError):
        raise ConvscopeError(f"the fill {f.shape.as_list()} does not broadcast to one sample "
                             f"{value.shape.as_list()[1:]}", "Give a number or an array shaped like one sample "
                             "[H, W, C] (or broadcastable).") from None


def occlusion_fn(net: KerasNet, scorers: list[Scorer], wrt: str | None) -> Callable[..., list[tf.Tensor]]:
    """``f(x, value, fill, bounds, rows, clean, segment, segments, feeds)``: per target the sum over
    each segment's rows of ``(clean - s(occluded)) * window mask`` (``bounds``: c0 c1 h0 h1 w0 w1)."""
    layers = tuple(dict.fromkeys(layer for s in scorers for layer in s.layers))

    def fn(x: tf.Tensor, value: tf.Tensor, fill: tf.Tensor, bounds: tf.Tensor, rows: tf.Tensor,
           clean: tuple[tf.Tensor, ...], segment: tf.Tensor, segments: tf.Tensor,
           feeds: tuple[tf.Tensor, ...]) -> list[tf.Tensor]:
        def inside(axis: int, size: int, low: tf.Tensor, high: tf.Tensor) -> tf.Tensor:
            pos = tf.range(size)[None, :]
            shape = [-1, 1, 1, 1]
            shape[axis] = size
            return tf.reshape((pos >= low[:, None]) & (pos < high[:, None]), shape)

        _, h, w, c = value.shape
        mask = inside(3, c, bounds[:, 0], bounds[:, 1]) & inside(1, h, bounds[:, 2], bounds[:, 3]) & \
            inside(2, w, bounds[:, 4], bounds[:, 5])
        occluded = tf.where(mask, fill, value)
        record = net.run(occluded if wrt is None else x, layers, replace=None if wrt is None else {wrt: occluded})
        weights = tf.cast(mask, value.dtype)
        return [tf.math.unsorted_segment_sum((base - s)[:, None, None, None] * weights, segment, segments)
                for base, s in zip(clean, score_all(scorers, record, rows, feeds))]

    return fn


@implements(Occlusion)
class KerasOcclusion(KerasMethod):
    """``mean over windows covering p of (s(x) - s(x_w))`` on a Keras model. ``window``/``stride``:
    an int, ``(h, w)`` or ``(c, h, w)`` (channels first, as in torch); ``fill``: a number, an array
    broadcastable to one NHWC sample, or ``"blur"``."""

    expands = True

    def __init__(self, model: keras.Model, *, window: Size | None = None, stride: Size | None = None,
                 fill: Any = 0.0, sigma: float | None = None, max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        # the torch method checks the options and plans the windows; its model is never called
        self.planner = Occlusion(nn.Identity(), window=window, stride=stride, fill=fill if isinstance(fill, str)
                                 else 0.0, sigma=sigma)
        self.fill, self.sigma = fill, sigma

    def _compute(self, x: tf.Tensor, rows: tf.Tensor, scorers: list[Scorer], wrt: str | None) -> list[tf.Tensor]:
        value = self.values(x, wrt)
        if value.shape.rank != 4:
            raise ConvscopeError(f"Occlusion needs [N, H, W, C] tensors, got {value.shape.as_list()}",
                                 "Attribute to an image input or to a convolutional layer (wrt='...').")
        n, h, w, c = value.shape
        plan = list(itertools.product(*self.planner.plan((c, h, w))))  # windows, first dimension slowest
        sigma = self.sigma or max(max(s.stop - s.start for s in plan[0][1:]) / 4, 0.5)
        fill = fill_values(self.fill, value, sigma)
        clean = self.scores(x, rows, value, scorers, wrt)
        bounds = np.array([[s.start, s.stop] for window in plan for s in window], np.int32).reshape(len(plan), 6)
        count = np.zeros((h, w, c), np.float32)
        for cs, hs, ws in plan:
            count[hs, ws, cs] += 1
        windows, net = len(plan), self.net

        def run(c: Chunk) -> list[tf.Tensor]:
            return self.compiled(("occlusion", wrt), lambda: occlusion_fn(net, scorers, wrt), scorers,
                                 x if wrt is None else tf.gather(x, c.sample), tf.gather(value, c.sample),
                                 tf.gather(fill, c.sample), bounds[c.k], tf.gather(rows, c.sample),
                                 tuple(tf.gather(s, c.sample) for s in clean), c.segment, c.segments)

        sums = self.accumulate(int(n), windows, run)
        return [total / count for total in sums]


def rise_fn(net: KerasNet, scorers: list[Scorer], wrt: str | None) -> Callable[..., list[tf.Tensor]]:
    """``f(x, value, masks, fill, rows, segment, segments, feeds)``: per target the sum over each
    segment's rows of ``s(fill + (value - fill) * mask) * mask``."""
    layers = tuple(dict.fromkeys(layer for s in scorers for layer in s.layers))

    def fn(x: tf.Tensor, value: tf.Tensor, masks: tf.Tensor, fill: tf.Tensor, rows: tf.Tensor, segment: tf.Tensor,
           segments: tf.Tensor, feeds: tuple[tf.Tensor, ...]) -> list[tf.Tensor]:
        masked = fill + (value - fill) * masks
        record = net.run(masked if wrt is None else x, layers, replace=None if wrt is None else {wrt: masked})
        return [tf.math.unsorted_segment_sum(s[:, None, None, None] * masks, segment, segments)
                for s in score_all(scorers, record, rows, feeds)]

    return fn


@implements(RISE)
class KerasRISE(KerasMethod):
    """``1 / (M p) * sum_m s(x * mask_m + fill (1 - mask_m)) * mask_m`` on a Keras model, with the
    torch method's masks (same draws, same upsampling) moved to channels-last."""

    expands = True

    def __init__(self, model: keras.Model, *, masks: int = 512, cells: int = 7, p: float = 0.5, fill: float = 0.0,
                 seed: int = 0, max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        # the torch method checks the options and draws the masks; its model is never called
        self.planner = RISE(nn.Identity(), masks=masks, cells=cells, p=p, fill=fill, seed=seed)

    def _compute(self, x: tf.Tensor, rows: tf.Tensor, scorers: list[Scorer], wrt: str | None) -> list[tf.Tensor]:
        value = self.values(x, wrt)
        if value.shape.rank != 4:
            raise ConvscopeError(f"RISE needs [N, H, W, C] tensors, got {value.shape.as_list()}",
                                 "Attribute to an image input or to a convolutional layer (wrt='...').")
        size = (int(value.shape[1]), int(value.shape[2]))
        grid, shifts = self.planner.draws(size)
        count, net, p = self.planner.masks, self.net, self.planner.p
        fill = tf.constant(self.planner.fill, value.dtype)

        def run(c: Chunk) -> list[tf.Tensor]:
            masks = tf.cast(channels_last(rise_masks(grid[c.k], shifts[c.k], size)), value.dtype)
            return self.compiled(("rise", wrt), lambda: rise_fn(net, scorers, wrt), scorers,
                                 x if wrt is None else tf.gather(x, c.sample), tf.gather(value, c.sample), masks, fill,
                                 tf.gather(rows, c.sample), c.segment, c.segments)

        sums = self.accumulate(int(value.shape[0]), count, run)
        return [tf.broadcast_to(total / (count * p), tf.shape(value)) for total in sums]
