"""HOG of maps and the "hog" randomisation similarity against scikit-image, one map at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convscope.errors import ConvscopeError
from convscope.evaluate.hog import hog, hog_similarity
from convscope.evaluate.randomisation import SIMILARITIES, compare

skimage_feature = pytest.importorskip("skimage.feature")


def reference_hog(m: np.ndarray, orientations: int, cell: tuple[int, int], block: tuple[int, int]) -> np.ndarray:
    return skimage_feature.hog(m, orientations=orientations, pixels_per_cell=cell, cells_per_block=block,
                               block_norm="L2-Hys", feature_vector=True)


def maps(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Random maps, smooth blobs and a map with exact axis-aligned and diagonal edges."""
    g = torch.Generator().manual_seed(seed)
    rough = torch.rand(n, h, w, generator=g, dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    centre = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([h, w])
    blobs = torch.exp(-((yy - centre[:, :1, None]) ** 2 + (xx - centre[:, 1:, None]) ** 2) / 20)
    edges = torch.zeros(1, h, w, dtype=torch.float64)
    edges[0, h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1.0
    edges[0] += torch.triu(torch.ones(h, w, dtype=torch.float64))
    return torch.cat([rough, blobs, edges])


@pytest.mark.parametrize("orientations,cell,block,size", [
    (9, (8, 8), (2, 2), (32, 40)),     # Adebayo-style parameters, a border left over by the cells
    (9, (4, 4), (2, 2), (18, 21)),     # small maps: small cells
    (8, (5, 3), (3, 2), (23, 17)),     # odd, unequal cells and blocks
    (6, (1, 1), (1, 1), (6, 7)),
])
def test_hog_equals_scikit_image(orientations, cell, block, size):
    m = maps(3, *size, seed=orientations)
    ours = hog(m, orientations, cell, block)
    want = np.stack([reference_hog(one.numpy(), orientations, cell, block) for one in m])
    assert ours.shape == want.shape
    assert np.abs(ours.numpy() - want).max() < 1e-6


def test_hog_takes_one_channel_maps_and_default_cells():
    m = maps(2, 12, 14, seed=1)
    want = np.stack([reference_hog(one.numpy(), 9, (6, 6), (2, 2)) for one in m])  # min(12, 14) // 2
    assert np.abs(hog(m[:, None].float()).numpy() - want).max() < 1e-5


def test_hog_similarity_is_pearson_of_scikit_image_vectors():
    a, b = maps(2, 24, 24, seed=2), maps(2, 24, 24, seed=3)
    want = [np.corrcoef(reference_hog(x.numpy(), 9, (8, 8), (2, 2)), reference_hog(y.numpy(), 9, (8, 8), (2, 2)))[0, 1]
            for x, y in zip(a, b)]
    assert np.abs(hog_similarity(a, b).numpy() - np.array(want)).max() < 1e-6
    assert torch.allclose(hog_similarity(a, a), torch.ones(len(a)))


def test_compare_hog_uses_the_normalised_absolute_maps():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(3, 2, 20, 20, generator=g), torch.randn(3, 2, 20, 20, generator=g)
    assert "hog" in SIMILARITIES
    got = compare(a, b, ["hog"])["hog"]
    want = []
    for x, y in zip(a.abs().sum(1), b.abs().sum(1)):
        hx = reference_hog((x / x.max()).double().numpy(), 9, (8, 8), (2, 2))
        hy = reference_hog((y / y.max()).double().numpy(), 9, (8, 8), (2, 2))
        want.append(np.corrcoef(hx, hy)[0, 1])
    assert np.abs(got.numpy() - np.array(want)).max() < 1e-5


def test_hog_bad_input_is_a_clear_error():
    with pytest.raises(ConvscopeError, match="too small|no block"):
        hog(torch.rand(1, 5, 5), pixels_per_cell=(4, 4))
    with pytest.raises(ConvscopeError, match="2-D maps"):
        hog(torch.rand(1, 3, 8, 8))
    with pytest.raises(ConvscopeError, match="cannot be compared"):
        hog_similarity(torch.rand(1, 8, 8), torch.rand(1, 8, 9))
    with pytest.raises(ConvscopeError, match="pixels_per_cell"):
        hog(torch.rand(1, 8, 8), pixels_per_cell=(0, 2))
