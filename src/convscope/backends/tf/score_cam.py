"""Score-CAM on Keras models (formulas and exact savings as in :mod:`convscope.methods.cam.score`).

For sample ``x`` and channel ``k`` of ``A`` ``[n, h, w, K]``: ``M_k = minmax(bilinear(A_k, H x W))``,
``s_k = S(x * M_k)``, ``w = softmax_k(s)``, map ``relu(sum_k w_k A_k)``. A channel constant over
the layer's grid has mask 0: its score is the zero image's, computed once per chunk. The masked
inputs are built inside the compiled scoring function, at most ``max_batch`` per evaluation.

Example::

    cams = ScoreCAM(keras_model, "block5_conv3", max_batch=64).attribute(x_nhwc, 3)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from convscope.backends.tf.batching import Batches
from convscope.backends.tf.cam import KerasActivationCAM, LayerSpec, resize
from convscope.backends.tf.method import implements
from convscope.backends.tf.model import KerasNet
from convscope.backends.tf.targets import Scorer, score_all
from convscope.methods.batching import MaxBatch
from convscope.methods.cam import ScoreCAM


def minmax(maps: tf.Tensor) -> tf.Tensor:
    """Each map of ``[m, H, W, 1]`` scaled to [0, 1]; a constant map becomes 0."""
    low = tf.reduce_min(maps, (1, 2, 3), keepdims=True)
    span = tf.reduce_max(maps, (1, 2, 3), keepdims=True) - low
    varying = span > 0
    return tf.where(varying, (maps - low) / tf.where(varying, span, tf.ones_like(span)), tf.zeros_like(maps))


def masked_score_fn(net: KerasNet, scorers: list[Scorer], align_corners: bool) -> Callable[..., list[tf.Tensor]]:
    """``f(x, maps, rows, feeds)``: the targets' scores of ``x * minmax(upsample(maps))`` (``maps`` ``[m, h, w]``)."""
    layers = tuple(dict.fromkeys(layer for s in scorers for layer in s.layers))

    def fn(x: tf.Tensor, maps: tf.Tensor, rows: tf.Tensor, feeds: tuple[tf.Tensor, ...]) -> list[tf.Tensor]:
        masks = minmax(resize(maps[..., None], x.shape[1:3], align_corners=align_corners))
        return score_all(scorers, net.run(x * masks, layers), rows, feeds)

    return fn


@implements(ScoreCAM)
class KerasScoreCAM(KerasActivationCAM):
    """``relu(sum_k softmax_k(S(x * M_k)) A_k)``. ``align_corners=True`` agrees with pytorch-grad-cam's masks."""

    def __init__(self, model: keras.Model, layer: LayerSpec = None, *, upsample: bool = True,
                 relu: bool | None = None, eigen_smooth: bool = False, align_corners: bool = False,
                 max_batch: MaxBatch = None) -> None:
        super().__init__(model, layer, upsample=upsample, relu=relu, eigen_smooth=eigen_smooth, max_batch=max_batch)
        self.align_corners = align_corners

    def layer_weights(self, x: tf.Tensor, rows: tf.Tensor, target: Scorer, layer: str, acts: tf.Tensor) -> tf.Tensor:
        """``softmax_k S(x * M_k)`` ``[n, K]`` for one target and one layer's maps ``acts``."""
        flat = tf.reshape(acts, [acts.shape[0], -1, acts.shape[-1]])
        varying = tf.reduce_max(flat, 1) > tf.reduce_min(flat, 1)  # [n, K]; the rest have mask 0
        scores = tf.zeros(varying.shape, acts.dtype)
        if not bool(tf.reduce_all(varying)):
            shared = self.scores(x, rows, tf.zeros_like(x[:1]), [target], None, spread=True)[0]
            scores += shared[:, None]
        pairs = tf.cast(tf.where(varying), tf.int32)  # (sample, channel), row-major like torch's nonzero
        by_channel = tf.transpose(acts, [0, 3, 1, 2])  # [n, K, h, w]
        net, align = self.net, self.align_corners

        def masked(part: slice) -> list[tf.Tensor]:
            chosen = pairs[part.start:part.stop]
            sample = chosen[:, 0]
            return self.compiled(("masked", align), lambda: masked_score_fn(net, [target], align), [target],
                                 tf.gather(x, sample), tf.gather_nd(by_channel, chosen), tf.gather(rows, sample))

        found = [p[0] for _, p in Batches(self.max_batch).map(int(pairs.shape[0]), masked)]
        if found:
            scores = tf.tensor_scatter_nd_update(scores, pairs, tf.concat(found, 0))
        return tf.nn.softmax(scores, axis=1)

    def _config(self) -> tuple[Any, ...]:
        return (self.align_corners,)
