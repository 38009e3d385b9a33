"""convscope.tf.ops: unpool and max_pool_with_switches against TensorFlow's own max-pool gradient.

Oracle: unpooling ``values`` with the switches of a max pool equals the gradient of that max pool
with ``values`` as the upstream signal, ``tape.gradient(pooled, x, output_gradients=values)``.

Tolerance: none, equality is exact. The upstream values are small integers (|v| <= 8) and at most
16 windows overlap one position here, so every partial sum, in any order, is an integer of size
<= 128: exact in bfloat16 (exact to 256), float16, float32 and float64. Overlapping windows add
several values at one position; exactness makes the check independent of the addition order.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from convscope.errors import ConvscopeError  # noqa: E402
from convscope.tf.ops import max_pool_with_switches, unpool  # noqa: E402

DTYPES = {"bfloat16": tf.bfloat16, "float16": tf.float16, "float32": tf.float32, "float64": tf.float64}


def pool_grad(x: tf.Tensor, values: tf.Tensor, ksize, strides, padding: str, via_argmax: bool = False) -> tf.Tensor:
    """d<pooled, values>/dx by autograd, through tf.nn.max_pool2d or max_pool_with_argmax."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        if via_argmax:
            pooled = tf.nn.max_pool_with_argmax(x, ksize, strides, padding)[0]
        else:
            pooled = tf.nn.max_pool2d(x, ksize, strides, padding)
    return tape.gradient(pooled, x, output_gradients=values)


_UNKNOWN_HW: dict[tuple[str, bool], object] = {}


def unpool_unknown_hw(pool, argmax, shape, dtype_name: str, batch_index: bool):
    """unpool traced once with unknown batch, height, width and channels (the scatter_nd path)."""
    key = (dtype_name, batch_index)
    if key not in _UNKNOWN_HW:
        spec = [tf.TensorSpec([None] * 4, DTYPES[dtype_name]), tf.TensorSpec([None] * 4, tf.int64),
                tf.TensorSpec([4], tf.int32)]
        _UNKNOWN_HW[key] = tf.function(lambda p, a, s: unpool(p, a, s, include_batch_in_index=batch_index),
                                       input_signature=spec)
    return _UNKNOWN_HW[key](pool, argmax, shape)


@st.composite
def pool_cases(draw):
    n, h, w, c = draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.integers(1, 3))
    padding = draw(st.sampled_from(["SAME", "VALID"]))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    if padding == "VALID":
        kh, kw = min(kh, h), min(kw, w)
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    ties = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return (n, h, w, c), (kh, kw), strides, padding, dtype, ties, draw(st.booleans()), seed


@settings(max_examples=60, deadline=None)
@given(pool_cases())
def test_unpool_equals_max_pool_gradient(case):
    shape, ksize, strides, padding, dtype_name, ties, batch_index, seed = case
    rng = np.random.default_rng(seed)
    # with ties: few distinct values, so windows often hold several maxima (TF picks the first)
    raw = rng.integers(0, 3, shape) if ties else rng.permutation(np.prod(shape)).reshape(shape)
    x = tf.constant(raw, DTYPES[dtype_name])
    pooled, argmax = tf.nn.max_pool_with_argmax(x, ksize, strides, padding, include_batch_in_index=batch_index)
    values = tf.constant(rng.integers(-8, 9, pooled.shape), DTYPES[dtype_name])
    expected = pool_grad(x, values, ksize, strides, padding).numpy()
    np.testing.assert_array_equal(pool_grad(x, values, ksize, strides, padding, via_argmax=True).numpy(), expected)

    eager = unpool(values, argmax, x.shape, include_batch_in_index=batch_index)
    assert eager.dtype == x.dtype and eager.shape == x.shape
    np.testing.assert_array_equal(eager.numpy(), expected)
    traced = unpool_unknown_hw(values, argmax, tf.shape(x), dtype_name, batch_index)
    np.testing.assert_array_equal(traced.numpy(), expected)


def test_hand_computed_overlapping_windows():
    # 1x3x3x1, 2x2 windows with stride 1: the centre (value 9) is the max of all four windows.
    x = tf.constant([[1, 2, 3], [4, 9, 5], [6, 7, 8]], tf.float32)[None, :, :, None]
    pooled, argmax = max_pool_with_switches(x, 2, 1)
    assert argmax.numpy().ravel().tolist() == [4, 4, 4, 4]
    out = unpool(tf.reshape([1.0, 10.0, 100.0, 1000.0], [1, 2, 2, 1]), argmax, x.shape)
    expected = np.zeros([3, 3], np.float32)
    expected[1, 1] = 1111.0  # scatter-add: every window adds its value at the shared switch
    np.testing.assert_array_equal(out.numpy()[0, :, :, 0], expected)
    np.testing.assert_array_equal(pooled.numpy().ravel(), [9, 9, 9, 9])


def test_hand_computed_odd_size_same_padding():
    # 1x3x3x1, 2x2 stride 2 SAME -> 2x2 pooled; TF pads at the bottom/right only.
    x = tf.constant([[1, 5, 2], [3, 4, 6], [9, 0, 7]], tf.float32)[None, :, :, None]
    pooled, argmax = max_pool_with_switches(x, 2, 2, "SAME")
    np.testing.assert_array_equal(pooled.numpy()[0, :, :, 0], [[5, 6], [9, 7]])
    out = unpool(pooled, argmax, tf.shape(x))
    np.testing.assert_array_equal(out.numpy()[0, :, :, 0], [[0, 5, 0], [0, 0, 6], [9, 0, 7]])


def test_max_pool_with_switches_matches_tf_and_accepts_shorthands():
    x = tf.random.stateless_normal([2, 7, 6, 3], seed=[3, 4])
    configs = [(2, None, "VALID"), ((3, 2), (2, 1), "same"), ([1, 3, 3, 1], [1, 2, 2, 1], "VALID")]
    for ksize, strides, padding in configs:
        pooled, argmax = max_pool_with_switches(x, ksize, strides, padding)
        step = ksize if strides is None else strides
        ref_pooled, ref_argmax = tf.nn.max_pool_with_argmax(x, ksize, step, padding.upper())
        np.testing.assert_array_equal(pooled.numpy(), ref_pooled.numpy())
        np.testing.assert_array_equal(argmax.numpy(), ref_argmax.numpy())
        assert argmax.dtype == tf.int64  # 8 bytes of switch per pooled element


@pytest.mark.parametrize("shape_form", ["list", "tuple_of_tensors", "TensorShape", "tf.shape", "numpy"])
def test_input_shape_forms(shape_form):
    x = tf.random.stateless_normal([2, 5, 7, 3], seed=[5, 6])
    pooled, argmax = max_pool_with_switches(x, 3, 2, "SAME")
    expected = pool_grad(x, pooled, 3, 2, "SAME").numpy()
    forms = {"list": [2, 5, 7, 3], "tuple_of_tensors": tuple(tf.unstack(tf.shape(x))), "TensorShape": x.shape,
             "tf.shape": tf.shape(x), "numpy": np.array([2, 5, 7, 3])}
    np.testing.assert_array_equal(unpool(pooled, argmax, forms[shape_form]).numpy(), expected)


def test_int32_switches_and_numpy_inputs_are_accepted_and_not_modified():
    x = np.random.default_rng(0).standard_normal([1, 6, 6, 2]).astype(np.float32)
    pooled, argmax = tf.nn.max_pool_with_argmax(x, 2, 2, "VALID", output_dtype=tf.int32)
    values, switches = pooled.numpy(), argmax.numpy()
    before = values.copy(), switches.copy()
    out = unpool(values, switches, x.shape)
    np.testing.assert_array_equal(out.numpy(), pool_grad(tf.constant(x), pooled, 2, 2, "VALID").numpy())
    np.testing.assert_array_equal(values, before[0])
    np.testing.assert_array_equal(switches, before[1])


def test_unknown_batch_height_width_under_tf_function():
    # Static H and W with unknown batch use the fast kernel; unknown H/W the scatter_nd path.
    x = tf.random.stateless_normal([3, 9, 5, 4], seed=[7, 8])
    pooled, argmax = max_pool_with_switches(x, 3, 2, "SAME")
    expected = pool_grad(x, pooled, 3, 2, "SAME").numpy()
    for spatial in ([9, 5], [None, None]):
        spec = tf.TensorSpec([None, *spatial, 4], tf.float32)

        @tf.function(input_signature=[spec])
        def roundtrip(images):
            p, a = max_pool_with_switches(images, 3, 2, "SAME")
            return unpool(p, a, tf.shape(images))

        out = roundtrip(x)
        np.testing.assert_array_equal(out.numpy(), expected)
        assert roundtrip.get_concrete_function().structured_outputs.shape.as_list() == [None, *spatial, 4]


def test_import_convscope_does_not_import_tensorflow():
    code = "import sys, convscope; convscope.errors; assert 'tensorflow' not in sys.modules, 'tf imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---- bad input: a ConvscopeError (eager) or a failing assertion (graph), never a wrong answer ----

@pytest.fixture(scope="module")
def pooled_pair():
    x = tf.random.stateless_normal([2, 6, 8, 3], seed=[9, 10])
    return x, *max_pool_with_switches(x, 2)


def test_switch_from_a_larger_image_is_rejected(pooled_pair):
    x, pooled, _ = pooled_pair
    _, big_argmax = max_pool_with_switches(tf.random.stateless_normal([2, 12, 16, 3], seed=[1, 1]), 4)
    with pytest.raises(ConvscopeError, match=r"not in \[0, H\*W\*C\).*offending switch \d+, H\*W\*C 144"):
        unpool(pooled, big_argmax, x.shape)


def test_negative_switch_is_rejected(pooled_pair):
    x, pooled, argmax = pooled_pair
    bad = tf.tensor_scatter_nd_update(argmax, [[1, 0, 0, 0]], tf.constant([-3], tf.int64))
    with pytest.raises(ConvscopeError, match="offending switch -3"):
        unpool(pooled, bad, x.shape)


def test_index_layout_mismatch_is_rejected(pooled_pair):
    x, pooled, argmax = pooled_pair
    _, with_batch = tf.nn.max_pool_with_argmax(x, 2, 2, "VALID", include_batch_in_index=True)
    with pytest.raises(ConvscopeError, match="include_batch_in_index"):
        unpool(pooled, with_batch, x.shape)  # batch-including indices read as per-image ones
    with pytest.raises(ConvscopeError, match="inside its own image"):
        unpool(pooled, argmax, x.shape, include_batch_in_index=True)  # the other way round


def test_bad_index_inside_tf_function_fails_at_run_time(pooled_pair):
    x, pooled, argmax = pooled_pair
    run = tf.function(lambda p, a: unpool(p, a, [2, 6, 8, 3]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="ConvscopeError: argmax holds a switch"):
        run(pooled, argmax + 1000)
    unknown = tf.function(lambda p, a, s: unpool(p, a, s), input_signature=[
        tf.TensorSpec([None] * 4, tf.float32), tf.TensorSpec([None] * 4, tf.int64), tf.TensorSpec([4], tf.int32)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="ConvscopeError: argmax holds a switch"):
        unknown(pooled, argmax + 1000, tf.shape(x))
    with pytest.raises(tf.errors.InvalidArgumentError, match="ConvscopeError: input_shape and pool disagree"):
        unknown(pooled, argmax, tf.constant([2, 6, 8, 4]))


@pytest.mark.parametrize("case, match", [
    ("nchw_shape", "ends in 8 channels.*NHWC"),
    ("float_argmax", "int32 or int64"),
    ("int_pool", "floating"),
    ("rank3_pool", "rank-4"),
    ("shape_mismatch", "differ in shape"),
    ("short_shape", "4 entries"),
    ("batch_mismatch", "batch 5"),
    ("too_small", "cannot have been pooled"),
    ("unknown_hw", "height or width unknown"),
])
def test_bad_arguments_raise_clear_errors(pooled_pair, case, match):
    x, pooled, argmax = pooled_pair
    calls = {
        "nchw_shape": lambda: unpool(pooled, argmax, [2, 3, 6, 8]),
        "float_argmax": lambda: unpool(pooled, tf.cast(argmax, tf.float32), x.shape),
        "int_pool": lambda: unpool(tf.cast(pooled, tf.int32), argmax, x.shape),
        "rank3_pool": lambda: unpool(pooled[0], argmax[0], x.shape),
        "shape_mismatch": lambda: unpool(pooled[:, :2], argmax, x.shape),
        "short_shape": lambda: unpool(pooled, argmax, [6, 8, 3]),
        "batch_mismatch": lambda: unpool(pooled, argmax, [5, 6, 8, 3]),
        "too_small": lambda: unpool(pooled, argmax, [2, 2, 8, 3]),
        "unknown_hw": lambda: unpool(pooled, argmax, tf.TensorShape([2, None, 8, 3])),
    }
    with pytest.raises(ConvscopeError, match=match):
        calls[case]()


@pytest.mark.parametrize("args, match", [
    (dict(ksize=0), "positive int"),
    (dict(ksize=2, padding="FULL"), "SAME' or 'VALID"),
    (dict(ksize=7), "does not fit"),
])
def test_max_pool_with_switches_rejects_bad_configurations(pooled_pair, args, match):
    x = pooled_pair[0]
    with pytest.raises(ConvscopeError, match=match):
        max_pool_with_switches(x, **args)
    with pytest.raises(ConvscopeError, match="rank-4"):
        max_pool_with_switches(x[0], 2)
