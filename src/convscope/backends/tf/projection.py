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
    return _direction(centred(t))


def _direction(f: tf.Tensor) -> tf.Tensor:
    """:func:`principal_direction` of maps ``f`` that are centred already."""
    return tf.linalg.svd(tf.reshape(f, [tf.shape(f)[0], -1, f.shape[-1]]), full_matrices=False)[2][:, :, 0]


def principal_projection(t: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """``F v`` ``[n, h, w, 1]``, the sign chosen per sample so that it does not anti-correlate with
    ``like [n, h, w, 1]``."""
    f = centred(t)
    projection = tf.reduce_sum(_direction(f)[:, None, None, :] * f, -1, keepdims=True)
    agreement = tf.reduce_sum(projection * centred(like), (1, 2, 3), keepdims=True)
    return tf.where(agreement < 0, -projection, projection)
