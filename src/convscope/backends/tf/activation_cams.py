"""Ablation-CAM and Eigen-CAM on Keras models (formulas as in :mod:`convscope.methods.cam.ablation`
and :mod:`convscope.methods.cam.eigen`), channels-last.

- Ablation-CAM: ``w_k = (S - S_k) / S`` (``S - S_k`` where ``S = 0``), ``S_k`` the score with
  channel ``k`` of the layer's output set to 0; an all-zero channel gets ``w_k = 0`` unevaluated.
- Eigen-CAM: ``relu(sum_k v_k F_k)`` with ``F = A - mean_ij A`` and ``v`` the first right singular
  vector of ``F`` as ``[positions, K]``, signed so that ``sum_k v_k >= 0`` (class-agnostic).

Example::

    maps = AblationCAM(keras_model, "block5_conv3", max_batch=64).attribute(x_nhwc, 3)
"""

from __future__ import annotations

import tensorflow as tf

from convscope.backends.tf.batching import Batches
from convscope.backends.tf.cam import KerasActivationCAM, divide
from convscope.backends.tf.method import implements
from convscope.backends.tf.projection import centred, principal_direction
from convscope.backends.tf.targets import Scorer
from convscope.methods.cam import AblationCAM, EigenCAM


@implements(AblationCAM)
class KerasAblationCAM(KerasActivationCAM):
    """``relu(sum_k (S - S_k) / S * A_k)``. Example: ``AblationCAM(keras_model, max_batch=32).attribute(x, 3)``."""

    def layer_weights(self, x: tf.Tensor, rows: tf.Tensor, target: Scorer, layer: str, acts: tf.Tensor) -> tf.Tensor:
        score = self.scores(x, rows, x, [target], None)[0]  # [n]
        channels = acts.shape[-1]
        ablated = tf.tile(score[:, None], [1, channels])
        pairs = tf.cast(tf.where(tf.reduce_any(tf.not_equal(acts, 0), (1, 2))), tf.int32)  # zeroing a zero: no change

        def part(r: slice) -> tf.Tensor:
            chosen = pairs[r.start:r.stop]
            sample = chosen[:, 0]
            values = tf.gather(acts, sample) * (1 - tf.one_hot(chosen[:, 1], channels, dtype=acts.dtype))[:, None, None]
            return self.scores(tf.gather(x, sample), tf.gather(rows, sample), values, [target], layer)[0]

        found = [s for _, s in Batches(self.max_batch).map(int(pairs.shape[0]), part)]
        if found:
            ablated = tf.tensor_scatter_nd_update(ablated, pairs, tf.concat(found, 0))
        drop = score[:, None] - ablated
        return tf.where(tf.not_equal(score, 0)[:, None], divide(drop, score[:, None] + tf.zeros_like(drop)), drop)


@implements(EigenCAM)
class KerasEigenCAM(KerasActivationCAM):
    """``relu(sum_k v_k (A_k - mean A_k))``, ``v`` the first principal direction with ``sum v >= 0``."""

    eigen_smooth_applies = False  # the map is the projection already

    def features(self, acts: tf.Tensor) -> tf.Tensor:
        return centred(acts)

    def layer_weights(self, x: tf.Tensor, rows: tf.Tensor, target: Scorer, layer: str, acts: tf.Tensor) -> tf.Tensor:
        self.scores(x, rows, x, [target], None)  # the target does not enter the map, but it is checked
        v = principal_direction(acts)  # [n, K]: first right singular vector
        return tf.where(tf.reduce_sum(v, 1, keepdims=True) < 0, -v, v)
