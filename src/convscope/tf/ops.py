"""Max pooling with switches, and unpooling, for TensorFlow (NHWC).

``unpool`` is the exact inverse-in-position of ``tf.nn.max_pool_with_argmax``: every pooled value
goes back to the input position its switch (argmax) names, and values that land on the same
position are added (windows may overlap):

    out.flat[b*H*W*C + argmax[b, i, j, c]] += pool[b, i, j, c]   (include_batch_in_index=False)
    out.flat[argmax[b, i, j, c]]           += pool[b, i, j, c]   (include_batch_in_index=True)

This equals the gradient of max pooling with ``pool`` as the upstream signal. Unlike the old
recipes built on ``2 * pooled_size`` it is right for odd sizes, SAME and VALID padding,
overlapping windows, either index layout, and unknown batch/height/width.

Switch storage: ``tf.nn.max_pool_with_argmax`` stores one int64 per pooled element (8 bytes);
int32 switches (4 bytes) are accepted too.

Example::

    pooled, argmax = max_pool_with_switches(x, 2)                 # x: [N, H, W, C]
    restored = unpool(pooled, argmax, tf.shape(x))                # [N, H, W, C], zeros elsewhere
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import tensorflow as tf

from convscope.errors import ConvscopeError

ShapeLike = Union[tf.Tensor, tf.TensorShape, Sequence[Union[int, tf.Tensor]], np.ndarray]

_FLOATS = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
_LAYOUT_HINT = ("argmax must come from tf.nn.max_pool_with_argmax (or max_pool_with_switches) on an input of "
                "shape input_shape, with the same include_batch_in_index")


@tf.autograph.experimental.do_not_convert
def max_pool_with_switches(x: tf.Tensor, ksize: int | Sequence[int], strides: int | Sequence[int] | None = None,
                           padding: str = "VALID") -> tuple[tf.Tensor, tf.Tensor]:
    """Max-pool an NHWC tensor and keep the switches: ``(pooled, argmax)``.

    ``argmax`` is int64 (8 bytes per pooled element) in the per-image layout
    ``((y * W) + x) * C + c`` (``include_batch_in_index=False``); ``strides`` defaults to ``ksize``.
    Ties go to the first position in row-major order, as in ``tf.nn.max_pool2d``'s gradient.

    Example: ``pooled, argmax = max_pool_with_switches(x, 3, 2, "SAME")``, then
    ``unpool(pooled, argmax, tf.shape(x))``.
    """
    x = _as_tensor(x, "x")
    _require_float(x, "x")
    _require_rank4(x, "x")
    window = _pair(ksize, "ksize")
    step = window if strides is None else _pair(strides, "strides")
    mode = str(padding).upper()
    if mode not in ("SAME", "VALID"):
        raise ConvscopeError(f"padding must be 'SAME' or 'VALID', got {padding!r}",
                             "TensorFlow pooling pads either to keep ceil(size / stride) outputs (SAME) or not at all.")
    if mode == "VALID":
        for axis, k in zip((1, 2), window):
            size = x.shape[axis]
            if size is not None and size < k:
                raise ConvscopeError(f"a {window[0]}x{window[1]} VALID window does not fit input of shape {x.shape}",
                                     "Use a smaller ksize or padding='SAME'.")
    return tf.nn.max_pool_with_argmax(x, list(window), list(step), mode, include_batch_in_index=False)


@tf.autograph.experimental.do_not_convert
def unpool(pool: tf.Tensor, argmax: tf.Tensor, input_shape: ShapeLike,
           include_batch_in_index: bool = False) -> tf.Tensor:
    """Scatter-add pooled values back to their switch positions: the [N, H, W, C] input shape.

    ``pool`` and ``argmax`` are the outputs of ``tf.nn.max_pool_with_argmax`` (or values of the
    same shape, e.g. a top-down signal); ``input_shape`` is the pooled input's shape, as a list,
    a ``TensorShape`` or ``tf.shape(x)``. Works eagerly and inside ``tf.function``, including
    unknown batch, height and width. Every switch is checked to lie inside its own image, so a
    bad index is an error, never an out-of-range write (eagerly a ConvscopeError; inside a
    ``tf.function`` the same message from a ``tf.debugging`` assertion at run time).

    Example::

        pooled, argmax = tf.nn.max_pool_with_argmax(x, 3, 2, "SAME")
        restored = unpool(pooled, argmax, tf.shape(x))   # the gradient of sum(pooled ** 2) / 2
    """
    pool = _as_tensor(pool, "pool")
    argmax = _as_tensor(argmax, "argmax")
    _require_float(pool, "pool")
    if argmax.dtype not in (tf.int32, tf.int64):
        raise ConvscopeError(f"argmax must hold int32 or int64 switches, got {argmax.dtype.name}",
                             "Pass the second output of tf.nn.max_pool_with_argmax unchanged.")
    _require_rank4(pool, "pool")
    _require_rank4(argmax, "argmax")
    if not pool.shape.is_compatible_with(argmax.shape):
        raise ConvscopeError(f"pool {pool.shape} and argmax {argmax.shape} differ in shape",
                             "They must be the two outputs of one tf.nn.max_pool_with_argmax call.")
    dims, known = _input_dims(input_shape, pool)
    _check_static_shapes(pool, known)

    pool_dims = tf.shape(pool, out_type=tf.int64)
    image_size = dims[1] * dims[2] * dims[3]
    offsets = tf.range(pool_dims[0])[:, None, None, None] * image_size
    argmax = tf.cast(argmax, tf.int64)
    local = argmax - offsets if include_batch_in_index else argmax
    checks = _runtime_checks(pool, argmax, dims, known, local, image_size, include_batch_in_index)
    with tf.control_dependencies(checks):
        if _fast_path(pool, known):
            out = _scatter_with_grad_kernel(pool, local, dims, known)
        else:
            flat = argmax if include_batch_in_index else local + offsets
            out = tf.scatter_nd(tf.reshape(flat, [-1, 1]), tf.reshape(pool, [-1]),
                                tf.reshape(tf.reduce_prod(dims), [1]))
            out = tf.reshape(out, dims)
    out.set_shape([pool.shape[0], known[1], known[2], pool.shape[3]])
    return out


def _scatter_with_grad_kernel(pool: tf.Tensor, local: tf.Tensor, dims: tf.Tensor, known: list[int | None]) -> tf.Tensor:
    """The scatter-add done by TF's MaxPoolGradWithArgmax kernel (3-5x faster than scatter_nd on CPU).

    That kernel zeroes its output and adds ``grad[k]`` at ``image_offset + argmax[k]``: the result
    depends on argmax alone, and ksize/strides/padding only check shapes. The VALID, stride-1
    window ``(H - Ho + 1, W - Wo + 1)`` maps [H, W] to [Ho, Wo], so it passes those checks for any
    pooling that produced ``pool``. Its ``input`` is read for its shape only, so an uninitialised
    tensor (``Empty``, no fill) serves, and the kernel may reuse its buffer for the output.
    Needs static H, W, Ho, Wo (attributes), hence the scatter_nd path for unknown ones.
    """
    height, width = known[1], known[2]
    window = [1, height - pool.shape[1] + 1, width - pool.shape[2] + 1, 1]  # type: ignore[operator]
    shape_only = tf.raw_ops.Empty(shape=tf.cast(dims, tf.int32), dtype=pool.dtype, init=False)
    return tf.raw_ops.MaxPoolGradWithArgmax(input=shape_only, grad=pool, argmax=local, ksize=window,
                                            strides=[1, 1, 1, 1], padding="VALID", include_batch_in_index=False)


def _fast_path(pool: tf.Tensor, known: list[int | None]) -> bool:
    """The kernel's window is an attribute, so H, W, Ho and Wo must be known while tracing."""
    return None not in (known[1], known[2], pool.shape[1], pool.shape[2])


def _runtime_checks(pool: tf.Tensor, argmax: tf.Tensor, dims: tf.Tensor, known: list[int | None], local: tf.Tensor,
                    image_size: tf.Tensor, include_batch_in_index: bool) -> list[tf.Operation]:
    """Check what static shapes could not, and that every switch lies inside its own image."""
    checks: list[tf.Operation] = []
    pool_dims = tf.shape(pool, out_type=tf.int64)
    if not (pool.shape.is_fully_defined() and argmax.shape.is_fully_defined()):
        checks += _require(tf.reduce_all(tf.equal(pool_dims, tf.shape(argmax, out_type=tf.int64))),
                           "pool and argmax differ in shape", "They must be the two outputs of one max-pool call.",
                           pool_shape=pool_dims, argmax_shape=tf.shape(argmax, out_type=tf.int64))
    if None in known or not pool.shape.is_fully_defined():
        checks += _require(tf.reduce_all(tf.equal(tf.gather(dims, [0, 3]), tf.gather(pool_dims, [0, 3]))),
                           "input_shape and pool disagree in batch size or channel count", _NHWC_HINT,
                           input_shape=dims, pool_shape=pool_dims)
        checks += _require(tf.reduce_all(tf.greater_equal(dims[1:3], pool_dims[1:3])),
                           "input_shape is smaller than the pooled tensor",
                           "Pass the shape of the tensor that was pooled.",
                           input_shape=dims, pool_shape=pool_dims)
    # One pass: a negative index becomes huge as uint64, so `max < H*W*C` bounds both ends.
    largest = tf.reduce_max(tf.bitcast(tf.reshape(local, [-1]), tf.uint64))
    where = ("inside its own image (offending switch shown minus b*H*W*C)" if include_batch_in_index
             else "in [0, H*W*C)")
    with tf.control_dependencies(checks):  # report shape problems before the index check
        checks += _require(tf.less(largest, tf.cast(image_size, tf.uint64)),
                           f"argmax holds a switch that is not {where} for input_shape", _LAYOUT_HINT,
                           offending_switch=tf.bitcast(largest, tf.int64), H_W_C=image_size)
    return checks


def _require(ok: tf.Tensor, problem: str, hint: str, **values: tf.Tensor) -> list[tf.Operation]:
    """Eagerly raise a ConvscopeError when ``ok`` is false; in a graph, add an assertion op.

    ``values`` (name=tensor) are reported with the problem, e.g. ``offending switch 1078``.
    """
    if tf.executing_eagerly():
        if not bool(ok):
            shown = ", ".join(f"{_label(k)} {v.numpy().tolist()}" for k, v in values.items())
            raise ConvscopeError(f"{problem} ({shown})" if values else problem, hint)
        return []
    data: list[object] = [f"ConvscopeError: {problem}. {hint}."]
    for key, value in values.items():
        data += [f"{_label(key)}:", value]
    return [tf.debugging.Assert(ok, data, summarize=8)]


def _label(key: str) -> str:
    return key.replace("H_W_C", "H*W*C").replace("_", " ")


_NHWC_HINT = ("The TF ops work on NHWC tensors, and input_shape must be [N, H, W, C] of the pooled input; "
              "for NCHW data transpose with tf.transpose(x, [0, 2, 3, 1]) or use convscope.ops (PyTorch)")


def _check_static_shapes(pool: tf.Tensor, known: list[int | None]) -> None:
    n, ho, wo, c = pool.shape
    if known[0] is not None and n is not None and known[0] != n:
        raise ConvscopeError(f"input_shape {known} has batch {known[0]} but pool {pool.shape} has batch {n}",
                             "Pass the shape of the tensor that was pooled.")
    if known[3] is not None and c is not None and known[3] != c:
        raise ConvscopeError(f"input_shape {known} ends in {known[3]} channels but pool {pool.shape} has {c}",
                             _NHWC_HINT)
    for axis, pooled in ((1, ho), (2, wo)):
        size = known[axis]
        if size is not None and (size < 1 or (pooled is not None and pooled > size)):
            raise ConvscopeError(f"input_shape {known} cannot have been pooled to {pool.shape}",
                                 "Pass the shape of the tensor that was pooled, in NHWC order.")


def _input_dims(input_shape: ShapeLike, pool: tf.Tensor) -> tuple[tf.Tensor, list[int | None]]:
    """``input_shape`` as an int64 [4] tensor, plus what is known of it while tracing.

    Batch and channels, when unknown, are taken from ``pool`` (they must equal them anyway).
    """
    if isinstance(input_shape, tf.TensorShape):
        if input_shape.rank != 4:
            raise ConvscopeError(f"input_shape must have 4 entries (N, H, W, C), got {input_shape}", _NHWC_HINT)
        entries: list[int | tf.Tensor | None] = list(input_shape.as_list())
    elif isinstance(input_shape, (list, tuple)):
        entries = list(input_shape)
    else:
        tensor = _as_tensor(input_shape, "input_shape")
        if tensor.dtype not in (tf.int32, tf.int64) or tensor.shape.rank != 1 or tensor.shape[0] not in (4, None):
            raise ConvscopeError(f"input_shape must be 4 integers (N, H, W, C), got a {tensor.dtype.name} tensor "
                                 f"of shape {tensor.shape}", "Pass tf.shape(x) or x.shape of the pooled input.")
        entries = [tensor[i] for i in range(4)]
        static = _static_shape_of(tensor)
        entries = [s if s is not None else e for s, e in zip(static, entries)]
    if len(entries) != 4:
        raise ConvscopeError(f"input_shape must have 4 entries (N, H, W, C), got {len(entries)}: {input_shape}",
                             _NHWC_HINT)
    pool_dims = tf.shape(pool, out_type=tf.int64)
    known: list[int | None] = []
    parts: list[tf.Tensor] = []
    for axis, entry in enumerate(entries):
        value = _static_int(entry)
        if entry is None:
            if axis in (1, 2):
                raise ConvscopeError(f"input_shape {input_shape} leaves height or width unknown",
                                     "Inside tf.function pass tf.shape(x), which is known when the function runs.")
            known.append(pool.shape[axis])
            parts.append(pool_dims[axis])
        elif value is not None:
            known.append(value)
            parts.append(tf.constant(value, tf.int64))
        else:
            known.append(None)
            parts.append(tf.cast(entry, tf.int64))
    return tf.stack(parts), known


def _static_shape_of(shape_tensor: tf.Tensor) -> list[int | None]:
    """What is known of a shape tensor while tracing (``tf.shape(x)`` gives x's static shape)."""
    value = tf.get_static_value(shape_tensor)
    if value is not None:
        return [int(v) for v in value]
    if not tf.executing_eagerly() and getattr(shape_tensor, "op", None) is not None and shape_tensor.op.type == "Shape":
        source = shape_tensor.op.inputs[0].shape
        if source.rank == 4:
            return list(source.as_list())
    return [None] * 4


def _static_int(entry: object) -> int | None:
    if isinstance(entry, (bool, np.bool_)):
        raise ConvscopeError(f"input_shape entries must be integers, got {entry!r}", _NHWC_HINT)
    if isinstance(entry, (int, np.integer)):
        return int(entry)
    if entry is None:
        return None
    if isinstance(entry, tf.Tensor):
        if not entry.dtype.is_integer or entry.shape.rank != 0:
            raise ConvscopeError(f"input_shape entries must be integer scalars, got {entry!r}", _NHWC_HINT)
        value = tf.get_static_value(entry)
        return None if value is None else int(value)
    raise ConvscopeError(f"input_shape entries must be integers, got {type(entry).__name__} {entry!r}", _NHWC_HINT)


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    """``k`` or ``(kh, kw)`` or ``[1, kh, kw, 1]`` as ``(kh, kw)``, all >= 1."""
    items = [value] if isinstance(value, (int, np.integer)) else list(value)
    if len(items) == 4 and items[0] == 1 and items[3] == 1:
        items = items[1:3]
    if len(items) == 1:
        items = items * 2
    positive = all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i >= 1 for i in items)
    if len(items) != 2 or not positive:
        raise ConvscopeError(f"{what} must be a positive int or a pair (h, w) of them, got {value!r}",
                             "Example: ksize=2 or ksize=(3, 3).")
    return int(items[0]), int(items[1])


def _as_tensor(value: object, what: str) -> tf.Tensor:
    if isinstance(value, tf.Tensor):
        return value
    try:
        return tf.convert_to_tensor(value)
    except (TypeError, ValueError) as err:
        raise ConvscopeError(f"{what} cannot be converted to a tensor: {err}",
                             "Pass a tf.Tensor or a numpy array.") from None


def _require_float(tensor: tf.Tensor, what: str) -> None:
    if tensor.dtype not in _FLOATS:
        raise ConvscopeError(f"{what} must be a floating tensor (float16, bfloat16, float32 or float64), got "
                             f"{tensor.dtype.name}", f"Cast it first, e.g. tf.cast({what}, tf.float32).")


def _require_rank4(tensor: tf.Tensor, what: str) -> None:
    if tensor.shape.rank != 4:
        raise ConvscopeError(f"{what} must be a rank-4 NHWC tensor [N, H, W, C], got shape {tensor.shape}",
                             "Add a batch axis with x[None] for one image; transpose NCHW data to NHWC.")
