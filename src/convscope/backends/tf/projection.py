"""First-principal-component projections of channels-last feature maps (Keras twin of
:mod:`convscope.methods.cam.projection`, same formulas and signs).

Example::

    v = principal_direction(acts)                               # [n, K] for acts [n, h, w, K]
    smooth = principal_projection(weighted, like=plain_map)     # [n, h, w, 1]
"""

from __future__ import annotations

import tensorflow as tf


def centred(t: tf.Tensor) -> tf.Tensor:
    """``t - mean over positions`` for ``t [n, h, w, K]``."""
    return t - tf.reduce_mean(t, (1, 2), keepdims=True)


def principal_direction(t: tf.Tensor) -> tf.Tensor:
    """The first right singular vector ``[n, K]`` of each sample's centred ``t`` (as ``[h * w, K]``)."""
    flat = tf.reshape(centred(t), [tf.shape(t)[0], -1, t.shape[-1]])
    return tf.linalg.svd(flat, full_matrices=False)[2][:, :, 0]


def principal_projection(t: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """``F v`` ``[n, h, w, 1]``, the sign chosen per sample so that it does not anti-correlate with
    ``like [n, h, w, 1]``."""
    projection = tf.reduce_sum(principal_direction(t)[:, None, None, :] * centred(t), -1, keepdims=True)
    agreement = tf.reduce_sum(projection * centred(like), (1, 2, 3), keepdims=True)
    return tf.where(agreement < 0, -projection, projection)
