"""The streaming top-k accumulator against a brute-force argsort of all activations."""

from __future__ import annotations

from unittest.mock import patch

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nets import TinyVGG

from convscope.atlas import TopK, mine
from convscope.atlas import topk as topk_module
from convscope.atlas.topk import EMPTY
from convscope.errors import ConvscopeError


def brute_force(acts: np.ndarray, k: int, per_image: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per channel, sort every (value, image, position) by value desc, image asc, position asc;
    ``per_image``: keep only each image's first entry in that order (its peak) before taking k."""
    n, c = acts.shape[:2]
    flat = acts.reshape(n, c, -1)
    out = [], [], []
    for ch in range(c):
        entries = [(-float(flat[i, ch, p]), i, p) for i in range(n) for p in range(flat.shape[2])]
        entries.sort()
        if per_image:
            seen: set[int] = set()
            entries = [e for e in entries if e[1] not in seen and not seen.add(e[1])]
        best = entries[:k]
        out[0].append([-v for v, _, _ in best])
        out[1].append([i for _, i, _ in best])
        out[2].append([p for _, _, p in best])
    return tuple(np.asarray(a) for a in out)  # type: ignore[return-value]


def feed(acts: torch.Tensor, k: int, cuts: list[int], per_image: bool = False) -> TopK:
    acc = TopK(acts.shape[1], k, tuple(acts.shape[2:]), per_image=per_image)
    edges = [0, *sorted(set(cuts)), acts.shape[0]]
    for lo, hi in zip(edges, edges[1:]):
        if hi > lo:
            acc.update(acts[lo:hi], lo)
    return acc


@pytest.mark.parametrize("per_image", [True, False])
def test_mining_equals_brute_force_argsort(per_image: bool) -> None:
    torch.manual_seed(0)
    model = TinyVGG().eval()
    x = torch.randn(13, 3, 16, 16)
    mined = mine(model, torch.utils.data.TensorDataset(x), ["features.0", "features.4"], k=5, batch_size=4,
                 per_image=per_image)
    with torch.no_grad():
        full = {"features.0": model.features[0](x), "features.4": model.features[:5](x)}
    for name, acts in full.items():
        values, images, positions = brute_force(acts.numpy(), 5, per_image)
        acc = mined.results[name]
        assert acc.per_image == per_image
        if per_image:
            assert all(len(set(row)) == 5 for row in acc.images.tolist())  # five different images per channel
        np.testing.assert_allclose(acc.values, values, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(acc.images, images)
        np.testing.assert_array_equal(acc.positions, positions)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.lists(st.integers(0, 11), max_size=4), st.integers(0, 2**16), st.booleans(),
       st.booleans())
def test_ties_and_batching_are_deterministic(k: int, cuts: list[int], seed: int, key_path: bool,
                                             per_image: bool) -> None:
    # small integer values: many exact ties, broken by image then position; both the threshold
    # fast path and the exact key path (forced by a negative candidate limit) are checked
    g = torch.Generator().manual_seed(seed)
    acts = torch.randint(-2, 3, (11, 3, 2, 3), generator=g).float()
    with patch.object(topk_module, "_FAST_LIMIT", -(10**9) if key_path else topk_module._FAST_LIMIT):
        acc = feed(acts, k, cuts, per_image)
    values, images, positions = brute_force(acts.numpy(), k, per_image)
    np.testing.assert_array_equal(acc.values, values)
    np.testing.assert_array_equal(acc.images, images)
    np.testing.assert_array_equal(acc.positions, positions)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 5), st.integers(0, 2**16), st.permutations([0, 1, 2]), st.booleans())
def test_merge_is_associative_and_commutative(k: int, seed: int, perm: list[int], per_image: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    acts = torch.randint(-3, 4, (12, 2, 2, 2), generator=g).float()
    shards = []
    for lo, hi in [(0, 3), (3, 7), (7, 12)]:
        acc = TopK(2, k, (2, 2), per_image=per_image)
        acc.update(acts[lo:hi], lo)
        shards.append(acc)
    a, b, c = (shards[i] for i in perm)
    left = a.merge(b).merge(c)
    right = a.merge(b.merge(c))
    swapped = c.merge(a).merge(b)
    whole = feed(acts, k, [], per_image)
    assert left.equals(right) and left.equals(swapped) and left.equals(whole)


def test_negative_zero_counts_as_zero_and_unused_slots() -> None:
    acc = TopK(1, 4, (2,))
    acc.update(torch.tensor([[[-0.0, 0.0]]]), 0)  # one image, two positions, equal values
    assert acc.positions[0, :2].tolist() == [0, 1]
    assert acc.count() == 2 and acc.images[0, 2] == EMPTY
    assert acc.coords()[0, 3].tolist() == [-1]


def test_merge_refuses_mismatched_shapes() -> None:
    with pytest.raises(ConvscopeError, match="cannot merge"):
        TopK(2, 3, (4, 4)).merge(TopK(2, 4, (4, 4)))
    with pytest.raises(ConvscopeError, match="per_image"):
        TopK(2, 3, (4, 4)).merge(TopK(2, 3, (4, 4), per_image=True))


def test_per_image_survives_the_arrays_round_trip_and_old_arrays_read_as_all_positions() -> None:
    acc = feed(torch.randn(5, 2, 3, 3), 2, [2], per_image=True)
    back = TopK.from_arrays(acc.arrays("L0_"), "L0_")
    assert back.per_image and back.equals(acc)
    old = {k: v for k, v in acc.arrays("L0_").items() if not k.endswith("per_image")}
    assert not TopK.from_arrays(old, "L0_").per_image


def test_nan_activations_are_refused() -> None:
    with pytest.raises(ConvscopeError, match="NaN"):
        TopK(1, 2, (2,)).update(torch.tensor([[[float("nan"), 1.0]]]), 0)


@pytest.mark.parametrize("k", [0, -1, True, 2.5])
def test_bad_k_is_a_clear_error(k: object) -> None:
    with pytest.raises(ConvscopeError, match="k="):
        TopK(1, k, (2,))  # type: ignore[arg-type]


@pytest.mark.parametrize(("shape", "layout"), [((5, 16, 6, 6), "channels_last"), ((4, 3, 5, 7), "channels_last"),
                                               ((3, 40, 2, 3), "channels_last"), ((4, 16, 9), "channels_last"),
                                               ((4, 6, 5, 7), "contiguous"), ((4, 6, 5, 7), "transposed")])
def test_line_peaks_and_top_k_in_every_memory_layout(shape: tuple[int, ...], layout: str) -> None:
    g = torch.Generator().manual_seed(len(shape) + shape[1])
    dense = torch.randint(-4, 5, shape, generator=g).float()  # ties on purpose
    if layout == "channels_last":
        acts = dense.movedim(1, -1).contiguous().movedim(-1, 1)
    elif layout == "transposed":
        acts = dense.transpose(2, 3).contiguous().transpose(2, 3)
    else:
        acts = dense
    assert torch.equal(acts, dense) and acts.is_contiguous() == (layout == "contiguous")
    np.testing.assert_array_equal(topk_module._line_peaks(acts), dense.reshape(*shape[:2], -1, shape[-1]).amax(3).numpy())
    for per_image in (False, True):
        acc = feed(acts, 4, [2], per_image)
        values, images, positions = brute_force(dense.numpy(), 4, per_image)
        used = values.shape[1]  # per image, 3 images fill 3 of the 4 slots
        np.testing.assert_array_equal(acc.values[:, :used], values)
        np.testing.assert_array_equal(acc.images[:, :used], images)
        np.testing.assert_array_equal(acc.positions[:, :used], positions)
        assert (acc.images[:, used:] == EMPTY).all() and acc.count() == used
    acts = acts.clone()  # keeps the layout
    acts[(1, 2, *([0] * (acts.dim() - 2)))] = float("nan")
    peaks = topk_module._line_peaks(acts)
    assert np.isnan(peaks[1, 2, 0]) and not np.isnan(peaks[1, 2, 1:]).any() and not np.isnan(peaks[0]).any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_float_types(dtype: torch.dtype) -> None:
    # bfloat16 has no NumPy type: its candidate lines are gathered by torch instead
    g = torch.Generator().manual_seed(1)
    dense = torch.randint(-4, 5, (7, 3, 4, 5), generator=g).float()
    acc = feed(dense.to(dtype), 3, [3])
    values, images, positions = brute_force(dense.numpy(), 3)
    np.testing.assert_array_equal(acc.values, values)
    np.testing.assert_array_equal(acc.images, images)
    np.testing.assert_array_equal(acc.positions, positions)
