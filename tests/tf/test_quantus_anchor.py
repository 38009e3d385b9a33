"""convscope.evaluate against Quantus 0.6, where Quantus defines the same quantity (importing
Quantus imports TensorFlow, so these run in the TensorFlow process): pixel flipping and region
perturbation with the same deterministic baseline and order, sparseness, complexity, relevance
mass and rank, SSIM, and the pointing game, whose difference on tied maxima is shown."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import quantus  # noqa: E402  (after torch: conftest imports torch and torchvision first)
from convscope import evaluate


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 5)).eval()


@pytest.fixture(scope="module")
def case() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return _net(), torch.randn(4, 3, 12, 10, generator=g), torch.tensor([0, 1, 2, 3]), \
        torch.randn(4, 1, 12, 10, generator=g)


def _quantus(metric: object, model: nn.Module, x: torch.Tensor, y: torch.Tensor, maps: torch.Tensor,
             masks: np.ndarray | None = None) -> np.ndarray:
    return np.array(metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=maps.numpy(), s_batch=masks,
                           softmax=True, device="cpu"), dtype=float)


def test_pixel_flipping_equals_quantus(case) -> None:  # noqa: ANN001
    model, x, y, maps = case
    ours = evaluate.pixel_flipping(model, x, y, maps, pixels_in_step=8, max_batch=5)
    # Quantus flips channel elements: 3 channels x 8 pixels per step, with the map broadcast over them
    theirs = _quantus(quantus.PixelFlipping(features_in_step=24, perturb_baseline=0.0, abs=False, normalise=False,
                                            disable_warnings=True), model, x, y, maps)
    np.testing.assert_allclose(ours.values.numpy(), theirs, atol=1e-6)


def test_region_perturbation_equals_quantus_on_its_centred_grid(case) -> None:  # noqa: ANN001
    model, x, y, maps = case
    curve, reference = evaluate.region_perturbation(model, x, y, maps, patch=4, regions=6, max_batch=7)
    theirs = _quantus(quantus.RegionPerturbation(patch_size=4, regions_evaluation=6, perturb_baseline=0.0, abs=False,
                                                 normalise=False, disable_warnings=True), model, x, y, maps)
    np.testing.assert_allclose((reference[:, None] - curve.values).numpy(), theirs, atol=1e-6)


def test_complexity_scores_equal_quantus(case) -> None:  # noqa: ANN001
    model, x, y, maps = case
    positive = maps.abs()
    for ours, theirs in ((evaluate.sparseness, quantus.Sparseness), (evaluate.complexity, quantus.Complexity)):
        expected = _quantus(theirs(abs=True, normalise=False, disable_warnings=True), model, x, y, positive)
        np.testing.assert_allclose(ours(positive).numpy(), expected, rtol=1e-4)


def test_localisation_scores_equal_quantus_on_positive_maps(case) -> None:  # noqa: ANN001
    model, x, y, maps = case
    positive = maps.abs()
    masks = (torch.rand(4, 1, 12, 10, generator=torch.Generator().manual_seed(5)) > 0.6).numpy()
    mass = _quantus(quantus.RelevanceMassAccuracy(abs=False, normalise=False, disable_warnings=True), model, x, y,
                    positive, masks)
    rank = _quantus(quantus.RelevanceRankAccuracy(abs=False, normalise=False, disable_warnings=True), model, x, y,
                    positive, masks)
    np.testing.assert_allclose(evaluate.mass_inside(positive, masks).numpy(), mass, rtol=1e-5)
    np.testing.assert_allclose(evaluate.rank_inside(positive, masks).numpy(), rank, rtol=1e-5)
    hits = _quantus(quantus.PointingGame(abs=False, normalise=False, disable_warnings=True), model, x, y, positive, masks)
    np.testing.assert_array_equal(evaluate.pointing_game(positive, masks).numpy(), hits.astype(bool))


def test_the_pointing_games_differ_on_tied_maxima_only(case) -> None:  # noqa: ANN001
    """Quantus counts a hit when *any* maximum lies on the object; convscope when *every* one does
    (a blank map, all maxima, points nowhere). They agree when the maximum is unique."""
    model, x, y, _ = case
    masks = np.zeros((4, 1, 12, 10), dtype=bool)
    masks[:, :, :6] = True  # the top half
    flat = torch.zeros(4, 1, 12, 10)
    flat[:, :, 2, 3] = flat[:, :, 9, 3] = 1.0  # two tied maxima: one on the object, one off it
    theirs = _quantus(quantus.PointingGame(abs=False, normalise=False, disable_warnings=True), model, x, y, flat, masks)
    assert theirs.all() and not evaluate.pointing_game(flat, masks).any()


def test_ssim_equals_quantus_similarity(case) -> None:  # noqa: ANN001
    _, _, _, maps = case
    other = maps + 0.3 * torch.randn(maps.shape, generator=torch.Generator().manual_seed(9))
    theirs = [quantus.similarity_func.ssim(a[0].numpy().astype(np.float64), b[0].numpy().astype(np.float64))
              for a, b in zip(maps, other)]
    np.testing.assert_allclose(evaluate.ssim(maps, other).numpy(), theirs, atol=1e-6)
