"""The tensor operations of the backend protocol (:class:`convscope.backends.protocol.Ops`) in
TensorFlow, channels-last: a batch is ``[N, *space, C]``. Python numbers mixed with tensors take
the tensor's dtype. ``relu`` is ``tf.maximum`` (``tf.nn.relu`` may be patched by backward rules
while a model runs).

Example::

    from convscope.backends.tf import tensors as ops
    ops.mean(grads, ops.space(grads))           # [n, K] Grad-CAM weights
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

channel_axis = -1


def _axes(axes: Sequence[int] | int) -> list[int] | int:
    return axes if isinstance(axes, int) else list(axes)


def _like(value: Any, other: Any) -> Any:
    """A Python number as a tensor of ``other``'s dtype (tensors pass unchanged)."""
    if tf.is_tensor(value) or not tf.is_tensor(other):
        return value
    return tf.constant(value, other.dtype)


def rank(t: tf.Tensor) -> int:
    return int(t.shape.rank)


def space(t: tf.Tensor) -> tuple[int, ...]:
    return tuple(range(1, rank(t) - 1))


def spatial_shape(t: tf.Tensor) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape[1:-1])


def per_channel(w: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    for _ in range(rank(like) - 2):
        w = tf.expand_dims(w, 1)
    return w


def per_row(v: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    return tf.reshape(tf.cast(v, like.dtype), [-1] + [1] * (rank(like) - 1))


def channel_maps(acts: tf.Tensor, samples: tf.Tensor, channels: tf.Tensor) -> tf.Tensor:
    first = tf.transpose(acts, [0, rank(acts) - 1, *range(1, rank(acts) - 1)])  # [n, K, *space]
    return tf.gather_nd(first, tf.stack([samples, channels], 1))[..., None]


def mirror(t: tf.Tensor) -> tf.Tensor:
    return tf.reverse(t, axis=[rank(t) - 2])


def sum(t: tf.Tensor, axes: Sequence[int] | int, keepdims: bool = False) -> tf.Tensor:  # noqa: A001 - the op's name
    return tf.reduce_sum(t, _axes(axes), keepdims=keepdims)


def mean(t: tf.Tensor, axes: Sequence[int] | int, keepdims: bool = False) -> tf.Tensor:
    return tf.reduce_mean(t, _axes(axes), keepdims=keepdims)


def amax(t: tf.Tensor, axes: Sequence[int] | int, keepdims: bool = False) -> tf.Tensor:
    return tf.reduce_max(t, _axes(axes), keepdims=keepdims)


def amin(t: tf.Tensor, axes: Sequence[int] | int, keepdims: bool = False) -> tf.Tensor:
    return tf.reduce_min(t, _axes(axes), keepdims=keepdims)


def relu(t: tf.Tensor) -> tf.Tensor:
    return tf.maximum(t, tf.constant(0, t.dtype))


def where(cond: tf.Tensor, a: Any, b: Any) -> tf.Tensor:
    a, b = _like(a, b), _like(b, a)
    if not tf.is_tensor(a):
        a, b = tf.constant(a, tf.float32), tf.constant(b, tf.float32)
    return tf.where(cond, a, b)


def divide(num: tf.Tensor, den: tf.Tensor) -> tf.Tensor:
    nonzero = tf.not_equal(den, 0)
    safe = tf.where(nonzero, den, tf.ones_like(den))
    return tf.where(nonzero, num / safe, tf.zeros_like(num * safe))


def softmax(t: tf.Tensor, axis: int) -> tf.Tensor:
    return tf.nn.softmax(t, axis=axis)


def zeros_like(t: tf.Tensor) -> tf.Tensor:
    return tf.zeros_like(t)


def zeros(shape: Sequence[int], like: tf.Tensor) -> tf.Tensor:
    return tf.zeros(shape, like.dtype)


def full(shape: Sequence[int], value: float, like: tf.Tensor) -> tf.Tensor:
    return tf.fill([int(d) for d in shape], tf.constant(float(value), like.dtype))


def cat(parts: Sequence[tf.Tensor], axis: int = 0) -> tf.Tensor:
    return parts[0] if len(parts) == 1 else tf.concat(list(parts), axis)


def stack(parts: Sequence[tf.Tensor], axis: int = 0) -> tf.Tensor:
    return tf.stack(list(parts), axis)


def take(t: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    return tf.gather(t, index)


def channel(t: tf.Tensor, c: int) -> tf.Tensor:
    return t[..., c]


def flat(t: tf.Tensor) -> tf.Tensor:
    rest = t.shape[1:]
    return tf.reshape(t, [-1, rest.num_elements()] if rest.is_fully_defined() else [tf.shape(t)[0], -1])


def vector(t: tf.Tensor) -> tf.Tensor:
    return tf.reshape(t, [-1])


def fill_rows(like: tf.Tensor, value: float) -> tf.Tensor:
    return tf.fill([tf.shape(like)[0]], tf.constant(float(value), like.dtype))


def is_tensor(value: Any) -> bool:
    return tf.is_tensor(value)


def pick(t: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    index = tf.clip_by_value(tf.cast(index, tf.int32), 0, tf.shape(t)[1] - 1)  # graphs cannot raise: Target.check
    if index.shape.rank == 0:
        return tf.gather(t, index, axis=1)
    if index.shape.rank == 1:
        return tf.gather(t, index[:, None], batch_dims=1)[:, 0]
    return tf.gather(t, index, batch_dims=1)


def top_k(t: tf.Tensor, k: int) -> tf.Tensor:
    return tf.math.top_k(t, k=k, sorted=True).indices  # stable: ties keep the lower index first


def detach(t: tf.Tensor) -> tf.Tensor:
    return tf.stop_gradient(t)


def _bilinear(maps: tf.Tensor, size: Sequence[int], align_corners: bool) -> tf.Tensor:
    return tf.raw_ops.ResizeBilinear(images=maps, size=tf.constant(list(size), tf.int32),
                                     align_corners=align_corners, half_pixel_centers=not align_corners)


def resize(maps: tf.Tensor, size: Sequence[int], align_corners: bool = False) -> tf.Tensor:
    """Bilinear; linear for signals ``[N, l, C]`` (a height-1 image) and trilinear for volumes
    ``[N, d, h, w, C]``, which are separable: bilinear over ``(h, w)`` per slice, then linear over
    ``d`` (an axis resized to its own size stays exactly as it is)."""
    if spatial_shape(maps) == tuple(size):
        return maps
    if rank(maps) == 3:
        return _bilinear(maps[:, None], (1, *size), align_corners)[:, 0]
    if rank(maps) == 5:
        n, d, h, w, c = (tf.shape(maps)[i] for i in range(5))
        planes = _bilinear(tf.reshape(maps, [n * d, h, w, c]), size[1:], align_corners)
        columns = tf.reshape(planes, [n, d, size[1] * size[2], c])
        return tf.reshape(_bilinear(columns, (size[0], size[1] * size[2]), align_corners), [n, *size, c])
    return _bilinear(maps, size, align_corners)


def principal_direction(t: tf.Tensor) -> tf.Tensor:
    return tf.linalg.svd(tf.reshape(t, [tf.shape(t)[0], -1, t.shape[-1]]), full_matrices=False)[2][:, :, 0]


def nonzero(mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    pairs = tf.cast(tf.where(mask), tf.int32)  # row-major, like torch's nonzero
    return pairs[:, 0], pairs[:, 1]


def scatter(t: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
    return tf.tensor_scatter_nd_update(t, tf.stack([rows, cols], 1), tf.cast(values, t.dtype))


def index_add(total: tf.Tensor, index: tf.Tensor, part: tf.Tensor) -> tf.Tensor:
    return tf.tensor_scatter_nd_add(total, tf.reshape(tf.cast(index, tf.int32), [-1, 1]), part)


def abs(t: tf.Tensor) -> tf.Tensor:  # noqa: A001 - the op's name
    return tf.abs(t)


def one_hot(index: tf.Tensor, depth: int, like: tf.Tensor) -> tf.Tensor:
    return tf.one_hot(index, depth, dtype=like.dtype)


def outer(channels: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
    combine = tf.logical_and if channels.dtype == tf.bool else tf.multiply
    return combine(combine(rows[:, :, None, None], cols[:, None, :, None]), channels[:, None, None, :])


def gaussian_blur(x: tf.Tensor, sigma: float) -> tf.Tensor:
    radius = max(1, min(math.ceil(3 * sigma), min(spatial_shape(x)) - 1))
    t = tf.range(-radius, radius + 1, dtype=x.dtype)
    kernel = tf.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / tf.reduce_sum(kernel)
    c = x.shape[-1]
    out = tf.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    out = tf.nn.depthwise_conv2d(out, tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, c, 1]), [1] * 4, "VALID")
    return tf.nn.depthwise_conv2d(out, tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, c, 1]), [1] * 4, "VALID")


def convert(value: Any, like: tf.Tensor) -> tf.Tensor | None:
    if not (tf.is_tensor(value) or isinstance(value, np.ndarray)):
        return None
    return tf.cast(tf.convert_to_tensor(value), like.dtype)


def constant(a: np.ndarray, like: tf.Tensor) -> tf.Tensor:
    t = tf.constant(a)
    return tf.cast(t, like.dtype) if t.dtype.is_floating else tf.cast(t, tf.int32) if t.dtype == tf.int64 else t


def numpy(t: tf.Tensor) -> np.ndarray:
    return np.asarray(t)
