"""ROAD, infidelity and max-sensitivity on a Keras model (channels-last arrays) equal the same
metrics on its PyTorch twin (tests/tf/twin.py): the same draws, the same values."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import torch  # noqa: E402
from nets import TinyVGG  # noqa: E402
from twin_checks import Pair, make_pair  # noqa: E402

from convscope.evaluate.infidelity import SquareRemoval, infidelity  # noqa: E402
from convscope.evaluate.road import road  # noqa: E402
from convscope.evaluate.sensitivity import max_sensitivity  # noqa: E402
from convscope.methods.gradient import Saliency  # noqa: E402


@pytest.fixture(scope="module")
def pair() -> Pair:
    torch.manual_seed(0)
    return make_pair(TinyVGG(), (16, 16), "features.3", 8)


def maps_of(p: Pair) -> tuple[torch.Tensor, np.ndarray]:
    m = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    return m, m.permute(0, 2, 3, 1).numpy()


def test_road_and_infidelity_of_a_keras_model_equal_its_twins(pair: Pair) -> None:
    m, mk = maps_of(pair)
    labels = [1, 4]
    want = road(pair.model, pair.x, labels, m, percentages=[20, 60], output="logit", seed=2)
    got = road(pair.kmodel, pair.xk, labels, mk, percentages=[20, 60], output="logit", seed=2)
    assert np.abs(got.values.numpy() - want.values.numpy()).max() < 1e-4
    want = infidelity(pair.model, pair.x, labels, m, perturbation=SquareRemoval(4), n_perturb_samples=3, seed=1)
    got = infidelity(pair.kmodel, pair.xk, labels, mk, perturbation=SquareRemoval(4), n_perturb_samples=3, seed=1)
    assert np.abs(got.numpy() - want.numpy()).max() < 1e-4 * max(1.0, float(want.abs().max()))


def test_max_sensitivity_of_a_keras_model_equals_its_twins(pair: Pair) -> None:
    labels = [0, 2]
    want = max_sensitivity(Saliency(pair.model), pair.x, labels, radius=0.05, n_perturb_samples=3, seed=5)
    got = max_sensitivity(Saliency(pair.kmodel), pair.xk, labels, radius=0.05, n_perturb_samples=3, seed=5)
    assert float(want.min()) > 0
    assert np.abs(got.numpy() - want.numpy()).max() < 1e-4 * max(1.0, float(want.max()))
