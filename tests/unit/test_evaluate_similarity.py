"""Similarity, complexity and the new localisation scores against independent oracles:
scikit-image's ``structural_similarity``, ``scipy.stats`` correlations, and per-sample loops of
the published formulas written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from skimage.metrics import structural_similarity

from convscope.errors import ConvscopeError
from convscope.evaluate import (centre_maps, class_mean, complexity, pearson, pointing_game, rank_inside, sparseness,
                                spearman, ssim, standard_tolerance)


@pytest.fixture(scope="module")
def pairs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 13, 11, generator=g)
    b = a + 0.7 * torch.randn(4, 13, 11, generator=g)
    a[0], b[0] = torch.relu(a[0]), torch.relu(b[0]).round()  # many ties, as ReLU'd CAMs have
    return a, b


def test_ssim_equals_scikit_image_with_the_joint_range(pairs) -> None:  # noqa: ANN001
    a, b = pairs
    expected = [structural_similarity(x.double().numpy(), y.double().numpy(),
                                      data_range=float(max(x.max(), y.max()) - min(x.min(), y.min())))
                for x, y in zip(a, b)]
    np.testing.assert_allclose(ssim(a, b).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(ssim(a[:, None], b[:, None]).numpy(), expected, atol=1e-6)  # [N, 1, H, W]


def test_ssim_of_a_map_with_itself_is_one_and_small_maps_shrink_the_window() -> None:
    a = torch.rand(2, 5, 6)
    assert torch.allclose(ssim(a, a), torch.ones(2))
    expected = structural_similarity(a[0].double().numpy(), (a[0] ** 2).double().numpy(), win_size=5,
                                     data_range=float(max(a[0].max(), (a[0] ** 2).max()) - min(a[0].min(), (a[0] ** 2).min())))
    assert float(ssim(a, a ** 2)[0]) == pytest.approx(expected, abs=1e-6)
    assert torch.equal(ssim(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8)), torch.ones(1))  # two blanks agree


def test_rank_correlations_equal_scipy_with_ties(pairs) -> None:  # noqa: ANN001
    a, b = pairs
    np.testing.assert_allclose(spearman(a, b).numpy(), [spearmanr(x.ravel(), y.ravel()).statistic
                                                        for x, y in zip(a.numpy(), b.numpy())], atol=1e-6)
    np.testing.assert_allclose(pearson(a, b).numpy(), [pearsonr(x.ravel(), y.ravel()).statistic
                                                       for x, y in zip(a.numpy(), b.numpy())], atol=1e-6)
    assert math.isnan(float(spearman(torch.zeros(1, 9), torch.rand(1, 9))[0]))  # a constant map has no ranks


def test_similarity_errors_name_the_shapes() -> None:
    with pytest.raises(ConvscopeError, match=r"shapes \[2, 4, 4\] and \[2, 4, 5\]"):
        ssim(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))
    with pytest.raises(ConvscopeError, match="SSIM compares 2-D maps"):
        ssim(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4))


def _gini(values: list[float]) -> float:
    """Chalasani et al.'s Gini index of |values| (+1e-7, as Quantus), by its definition."""
    v = sorted(abs(x) + 1e-7 for x in values)
    n = len(v)
    return sum((2 * (i + 1) - n - 1) * x for i, x in enumerate(v)) / (n * sum(v))


def _entropy(values: list[float]) -> float:
    total = sum(abs(x) for x in values)
    return -sum(abs(x) / total * math.log(abs(x) / total + 1e-12) for x in values)


def test_sparseness_and_complexity_follow_their_formulas(pairs) -> None:  # noqa: ANN001
    a, _ = pairs
    rows = a.flatten(1).tolist()
    np.testing.assert_allclose(sparseness(a).numpy(), [_gini(r) for r in rows], atol=1e-5)
    np.testing.assert_allclose(complexity(a).numpy(), [_entropy(r) for r in rows], atol=1e-5)
    one_hot = torch.zeros(1, 100)
    one_hot[0, 7] = 1.0
    assert float(sparseness(one_hot)[0]) > 0.98 and float(complexity(one_hot)[0]) < 1e-6
    assert float(sparseness(torch.ones(1, 100))[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(complexity(torch.ones(1, 100))[0]) == pytest.approx(math.log(100), abs=1e-5)


def test_rank_inside_counts_the_top_k_positions() -> None:
    maps = torch.tensor([[[5.0, 4.0, 3.0], [2.0, 1.0, 0.0]]])
    mask = torch.tensor([[[True, False, True], [False, True, False]]])  # K = 3: top 3 = 5, 4, 3 -> 2 inside
    assert float(rank_inside(maps, mask)[0]) == pytest.approx(2 / 3)
    assert math.isnan(float(rank_inside(maps, torch.zeros_like(mask))[0]))
    g = torch.Generator().manual_seed(1)
    m, k = torch.randn(5, 7, 6, generator=g), torch.rand(5, 7, 6, generator=g) > 0.6
    for n in range(5):
        values, inside = m[n].flatten().tolist(), k[n].flatten().tolist()
        top = sorted(range(len(values)), key=lambda i: -values[i])[:sum(inside)]
        assert float(rank_inside(m, k)[n]) == pytest.approx(sum(inside[i] for i in top) / sum(inside))


def test_the_standard_tolerance_is_15_px_at_224() -> None:
    assert standard_tolerance(224, 300) == 15.0
    assert standard_tolerance(64, 64) == pytest.approx(15 * 64 / 224)
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, 30:34, 30:34] = True
    peak_4_away = torch.zeros(1, 64, 64)
    peak_4_away[0, 37, 31] = 1.0  # 4 px below the mask: within 4.29 px
    assert bool(pointing_game(peak_4_away, mask, tolerance="standard")[0])
    assert not bool(pointing_game(peak_4_away, mask)[0])
    with pytest.raises(ConvscopeError, match="'standard'"):
        pointing_game(peak_4_away, mask, tolerance="wide")


def test_the_centre_baseline_points_at_the_middle() -> None:
    odd = centre_maps(2, 5, 7)
    assert odd.shape == (2, 1, 5, 7) and odd[0, 0].argmax() == 2 * 7 + 3
    even = centre_maps(1, 4, 4)[0, 0]
    assert (even == even.max()).sum() == 4  # the middle 2 x 2 tie
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 1:3, 1:3] = True
    assert bool(pointing_game(centre_maps(1, 4, 4), mask)[0])


def test_class_mean_averages_each_class_first() -> None:
    hits = torch.tensor([1.0, 1.0, 1.0, 0.0, float("nan")])
    classes = torch.tensor([0, 0, 0, 1, 2])
    assert class_mean(hits, classes) == pytest.approx((1.0 + 0.0) / 2)  # class 2 has no value
    assert math.isnan(class_mean(torch.tensor([float("nan")]), torch.tensor([0])))
