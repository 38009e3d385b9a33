"""The seed note's three TF1 unpooling recipes, ported to TF2 as faithfully as possible.

Only removed TF1 APIs are replaced (``tf.pack`` -> ``tf.stack``, ``tf.to_int64`` -> ``tf.cast``,
``tf.concat(axis, values)`` -> ``tf.concat(values, axis)``, ``tf.variable_scope`` -> nothing,
``tf.sparse_tensor_to_dense`` -> ``tf.sparse.to_dense``, ``tf.sparse_reorder`` -> ``tf.sparse.reorder``);
the logic, bugs included, is kept so that tests can show where each recipe is right and where it
breaks. The note's fourth recipe, ``unpool(pool, ind, ksize)``, is ``unpool_2d`` with another
argument name, so it is not repeated.

- ``unpool_layer2x2_batch_sparse``: builds a SparseTensor of (b, y, x, c) indices, densifies it.
- ``unpool_layer2x2_batch``: the same indices through ``tf.scatter_nd`` ("much faster").
- ``unpool_2d``: ``tf.scatter_nd`` on [batch, flat index] pairs (the "in documentation" recipe).

All three assume the input was exactly ``stride`` times the pooled size (2x2 for the first two) and
the default index layout (``include_batch_in_index=False``).

Example::

    pooled, argmax = tf.nn.max_pool_with_argmax(x, 2, 2, "VALID")
    up = unpool_2d(pooled, argmax)     # right only for even H, W and per-image indices
"""

from __future__ import annotations

import tensorflow as tf


def unravel_argmax(argmax, shape):
    output_list = [argmax // (shape[2] * shape[3]),
                   argmax % (shape[2] * shape[3]) // shape[3]]
    return tf.stack(output_list)


def _indices_2x2(bottom, argmax):
    """The seed repeats this block verbatim in both 2x2 variants; it is kept verbatim here too."""
    bottom_shape = tf.shape(bottom)
    top_shape = [bottom_shape[0], bottom_shape[1] * 2, bottom_shape[2] * 2, bottom_shape[3]]

    batch_size = top_shape[0]
    height = top_shape[1]
    width = top_shape[2]
    channels = top_shape[3]

    argmax_shape = tf.cast([batch_size, height, width, channels], tf.int64)
    argmax = unravel_argmax(argmax, argmax_shape)

    t1 = tf.cast(tf.range(channels), tf.int64)
    t1 = tf.tile(t1, [batch_size * (width // 2) * (height // 2)])
    t1 = tf.reshape(t1, [-1, channels])
    t1 = tf.transpose(t1, perm=[1, 0])
    t1 = tf.reshape(t1, [channels, batch_size, height // 2, width // 2, 1])
    t1 = tf.transpose(t1, perm=[1, 0, 2, 3, 4])

    t2 = tf.cast(tf.range(batch_size), tf.int64)
    t2 = tf.tile(t2, [channels * (width // 2) * (height // 2)])
    t2 = tf.reshape(t2, [-1, batch_size])
    t2 = tf.transpose(t2, perm=[1, 0])
    t2 = tf.reshape(t2, [batch_size, channels, height // 2, width // 2, 1])

    t3 = tf.transpose(argmax, perm=[1, 4, 2, 3, 0])

    t = tf.concat([t2, t3, t1], 4)
    indices = tf.reshape(t, [(height // 2) * (width // 2) * channels * batch_size, 4])

    x1 = tf.transpose(bottom, perm=[0, 3, 1, 2])
    values = tf.reshape(x1, [-1])
    return indices, values, top_shape


def unpool_layer2x2_batch_sparse(bottom, argmax):
    """The seed's first ``unpool_layer2x2_batch`` (SparseTensor + sparse_to_dense)."""
    indices, values, top_shape = _indices_2x2(bottom, argmax)
    delta = tf.SparseTensor(indices, values, tf.cast(top_shape, tf.int64))
    return tf.sparse.to_dense(tf.sparse.reorder(delta))


def unpool_layer2x2_batch(bottom, argmax):
    """The seed's second ``unpool_layer2x2_batch`` ("much faster": scatter_nd)."""
    indices, values, top_shape = _indices_2x2(bottom, argmax)
    return tf.scatter_nd(indices, values, tf.cast(top_shape, tf.int64))


def unpool_2d(pool, ind, stride=[1, 2, 2, 1], scope="unpool_2d"):  # noqa: B006 - the seed's signature
    """The seed's ``unpool_2d`` ("in documentation"); ``scope`` is accepted and ignored."""
    input_shape = tf.shape(pool)
    output_shape = [input_shape[0], input_shape[1] * stride[1], input_shape[2] * stride[2], input_shape[3]]

    flat_input_size = tf.reduce_prod(input_shape)
    flat_output_shape = [output_shape[0], output_shape[1] * output_shape[2] * output_shape[3]]

    pool_ = tf.reshape(pool, [flat_input_size])
    batch_range = tf.reshape(tf.range(tf.cast(output_shape[0], tf.int64), dtype=ind.dtype),
                             shape=[input_shape[0], 1, 1, 1])
    b = tf.ones_like(ind) * batch_range
    b1 = tf.reshape(b, [flat_input_size, 1])
    ind_ = tf.reshape(ind, [flat_input_size, 1])
    ind_ = tf.concat([b1, ind_], 1)

    ret = tf.scatter_nd(ind_, pool_, shape=tf.cast(flat_output_shape, tf.int64))
    ret = tf.reshape(ret, output_shape)

    set_input_shape = pool.get_shape()
    set_output_shape = [set_input_shape[0], set_input_shape[1] * stride[1], set_input_shape[2] * stride[2],
                        set_input_shape[3]]
    ret.set_shape(set_output_shape)
    return ret
