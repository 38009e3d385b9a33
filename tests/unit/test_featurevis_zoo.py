"""Behaviour on the trained zoo model shapes-vgg: class visualizations that the model classifies
as their class, feature inversion at an early layer, DeepDream. Distances and probabilities are
recomputed here with plain PyTorch (model slices and softmax), not with convscope's helpers."""

from __future__ import annotations

import pytest
import torch
from test_featurevis_render import one_thread  # noqa: F401 - the module's autouse fixture
from torch import nn

from convscope import zoo
from convscope.data import CLASSES, Shapes
from convscope.featurevis import DeepDream, class_visualizations, dream, invert

PRE = zoo.preset("shapes-vgg")
MEAN = torch.tensor(PRE.mean).view(1, 3, 1, 1)
STD = torch.tensor(PRE.std).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def pictures() -> torch.Tensor:
    return torch.stack([Shapes(2, seed=0)[i][0] for i in range(2)])


def test_class_visualizations_are_classified_as_their_class(shapes_vgg: nn.Module) -> None:
    images, probs = class_visualizations(shapes_vgg, PRE, steps=128, seed=0, progress=False)
    assert images.shape == (6, 3, 64, 64) and float(images.min()) >= 0 and float(images.max()) <= 1
    with torch.no_grad():  # the oracle: the model's own softmax on the returned images
        mine = shapes_vgg((images - MEAN) / STD).softmax(1)
    torch.testing.assert_close(probs, mine, rtol=1e-4, atol=1e-5)
    table = {name: round(float(mine[k, k]), 4) for k, name in enumerate(CLASSES)}
    print("class visualization probabilities:", table)
    assert all(p >= 0.9 for p in table.values()), table


def test_inversion_at_an_early_layer(shapes_vgg: nn.Module, pictures: torch.Tensor) -> None:
    result = invert(shapes_vgg, pictures, "features.1", steps=200, seed=0, preprocess=PRE, progress=False)
    phi = shapes_vgg.features[:2]  # conv + ReLU: the output of "features.1"
    with torch.no_grad():
        ref = phi((pictures - MEAN) / STD)
        got = phi((result.images - MEAN) / STD)
    distance = (got - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)
    torch.testing.assert_close(result.distance, distance, rtol=1e-4, atol=1e-6)
    print("inversion distance / start distance:", (distance / result.start_distance).tolist())
    assert bool((distance < 0.1 * result.start_distance).all())
    assert bool((result.start_distance > 0.5).all())  # a random start is far from the target


def test_dream_amplifies_the_layer_and_leaves_the_input_alone(shapes_vgg: nn.Module, pictures: torch.Tensor) -> None:
    before = pictures.clone()
    dreamt = dream(shapes_vgg, pictures, "features.4", octaves=3, steps=10, input_size=64, preprocess=PRE,
                   progress=False)
    assert torch.equal(pictures, before)
    assert dreamt.shape == pictures.shape and float(dreamt.min()) >= 0 and float(dreamt.max()) <= 1
    energy = shapes_vgg.features[:5]
    with torch.no_grad():
        start = energy((pictures - MEAN) / STD).pow(2).flatten(1).mean(1)
        end = energy((dreamt - MEAN) / STD).pow(2).flatten(1).mean(1)
    assert bool((end > 2 * start).all()), (start, end)
    one = dream(shapes_vgg, pictures[0], DeepDream("features.4"), octaves=1, steps=3, preprocess=PRE, progress=False)
    assert one.shape == pictures[0].shape
