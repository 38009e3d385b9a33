"""Where the seed's three TF unpooling recipes are right, where each breaks, and that ours is
right in every one of those cases.

The recipes are faithful TF2 ports (tests/reference/seed_unpool_tf.py). The oracle is autograd:
``tape.gradient(max_pool2d(x), x, output_gradients=pooled)``. Findings, on CPU:

| case                                      | sparse        | scatter 4-D   | unpool_2d     |
|-------------------------------------------|---------------|---------------|---------------|
| even H, W, 2x2/2, per-image indices       | right         | right         | right         |
| odd H (VALID)                             | wrong shape   | wrong shape   | wrong shape   |
| odd W (VALID)                             | out-of-range  | out-of-range  | out-of-range  |
| odd H, W (SAME): ceil -> 2*Ho = H + 1     | wrong shape   | wrong shape   | wrong shape   |
| overlapping 3x3/2 windows sharing a max   | fails (dups)  | right         | right         |
| include_batch_in_index=True, batch 2      | out-of-range  | out-of-range  | out-of-range  |
| include_batch_in_index=True, batch 1      | right         | right         | right         |
| unknown H/W under tf.function             | right*        | right*        | TypeError     |

(*) right values, but every static dimension is lost. Out-of-range indices raise on CPU only:
``tf.scatter_nd`` on a GPU silently drops them, so there the failures would be wrong answers.
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

from reference import seed_unpool_tf as seed  # noqa: E402

from convscope.tf.ops import unpool  # noqa: E402

SPARSE, SCATTER, UNPOOL_2D = "sparse", "scatter_4d", "unpool_2d"
RECIPES = {
    SPARSE: seed.unpool_layer2x2_batch_sparse,
    SCATTER: seed.unpool_layer2x2_batch,
    UNPOOL_2D: lambda pool, ind: seed.unpool_2d(pool, ind),
}
RIGHT, WRONG_SHAPE, RAISES = "right", "wrong shape", "raises"

# name: (x shape, ksize, padding, include_batch_in_index, {recipe: outcome})
CASES = {
    "even": ([2, 6, 8, 3], 2, "VALID", False, dict.fromkeys(RECIPES, RIGHT)),
    "even_same": ([2, 6, 8, 3], 2, "SAME", False, dict.fromkeys(RECIPES, RIGHT)),
    "odd_height_valid": ([2, 5, 8, 3], 2, "VALID", False, dict.fromkeys(RECIPES, WRONG_SHAPE)),
    "odd_width_valid": ([2, 6, 7, 3], 2, "VALID", False, dict.fromkeys(RECIPES, RAISES)),
    "odd_same": ([2, 5, 7, 3], 2, "SAME", False, dict.fromkeys(RECIPES, WRONG_SHAPE)),
    "overlap_3x3_stride2": ([2, 8, 8, 3], 3, "SAME", False, {SPARSE: RAISES, SCATTER: RIGHT, UNPOOL_2D: RIGHT}),
    "batch_in_index_b2": ([2, 6, 8, 3], 2, "VALID", True, dict.fromkeys(RECIPES, RAISES)),
    "batch_in_index_b1": ([1, 6, 8, 3], 2, "VALID", True, dict.fromkeys(RECIPES, RIGHT)),
}


def make_case(name: str):
    shape, ksize, padding, batch_index, outcomes = CASES[name]
    x = tf.random.stateless_normal(shape, seed=[11, 12], dtype=tf.float64)
    if name.startswith("overlap"):  # a spike at (2, 2), inside four overlapping windows: the max of each
        x = tf.tensor_scatter_nd_update(x, [[0, 2, 2, 0]], tf.constant([100.0], tf.float64))
    pooled, argmax = tf.nn.max_pool_with_argmax(x, ksize, 2, padding, include_batch_in_index=batch_index)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.nn.max_pool2d(x, ksize, 2, padding)
    expected = tape.gradient(y, x, output_gradients=pooled)
    return x, pooled, argmax, batch_index, expected, outcomes


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("name", list(CASES))
def test_seed_recipe_outcome(name, recipe):
    x, pooled, argmax, _, expected, outcomes = make_case(name)
    outcome = outcomes[recipe]
    if outcome == RAISES:
        with pytest.raises(tf.errors.InvalidArgumentError):
            RECIPES[recipe](pooled, argmax)
        return
    out = RECIPES[recipe](pooled, argmax)
    if outcome == WRONG_SHAPE:
        assert out.shape != x.shape
        return
    assert out.shape == x.shape
    np.testing.assert_array_equal(out.numpy(), expected.numpy())


def test_overlap_case_really_has_shared_switches():
    _, _, argmax, _, _, _ = make_case("overlap_3x3_stride2")
    flat = argmax.numpy()[0, :, :, 0].ravel()
    assert len(flat) > len(set(flat.tolist()))  # a position named by two windows: a duplicate index


@pytest.mark.parametrize("name", list(CASES))
def test_ours_is_right_in_every_case(name):
    x, pooled, argmax, batch_index, expected, _ = make_case(name)
    out = unpool(pooled, argmax, x.shape, include_batch_in_index=batch_index)
    assert out.shape == x.shape
    np.testing.assert_array_equal(out.numpy(), expected.numpy())


def test_unknown_height_width_under_tf_function():
    x, pooled, argmax, _, expected, _ = make_case("even")
    spec = [tf.TensorSpec([None, None, None, 3], tf.float64), tf.TensorSpec([None, None, None, 3], tf.int64)]
    with pytest.raises(TypeError):  # None * stride while setting the static shape
        tf.function(RECIPES[UNPOOL_2D], input_signature=spec)(pooled, argmax)
    for recipe in (SPARSE, SCATTER):
        traced = tf.function(RECIPES[recipe], input_signature=spec)
        np.testing.assert_array_equal(traced(pooled, argmax).numpy(), expected.numpy())
        static = traced.get_concrete_function().structured_outputs.shape
        assert static[1] is None and static[2] is None  # values right, static shape lost

    ours = tf.function(lambda p, a, s: unpool(p, a, s), input_signature=[*spec, tf.TensorSpec([4], tf.int32)])
    np.testing.assert_array_equal(ours(pooled, argmax, tf.shape(x)).numpy(), expected.numpy())
    assert ours.get_concrete_function().structured_outputs.shape.as_list() == [None, None, None, 3]
