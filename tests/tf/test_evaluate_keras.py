"""convscope.evaluate on a Keras model: every metric that scores the model or a method gives the
PyTorch twin's values, with the Keras model's own channels-last inputs and maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nets import TinyVGG
from twin import keras_twin, to_nhwc

from convscope import evaluate
from convscope.methods import GradCAM, Saliency


@pytest.fixture(scope="module")
def pair():  # noqa: ANN201
    torch.manual_seed(0)
    model = TinyVGG().eval()
    kmodel, names = keras_twin(model, input_hw=(16, 16))
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    return model, kmodel, names, x


def test_perturbation_curves_equal_the_pytorch_twin(pair) -> None:  # noqa: ANN001
    model, kmodel, _, x = pair
    maps = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    for metric in (evaluate.deletion, evaluate.insertion):
        ours = metric(model, x, [0, 1, 2], maps, steps=8, max_batch=5).values
        theirs = metric(kmodel, to_nhwc(x), [0, 1, 2], to_nhwc(maps), steps=8, max_batch=5).values
        np.testing.assert_allclose(theirs.numpy(), ours.numpy(), atol=1e-5)
    curve, reference = evaluate.region_perturbation(kmodel, to_nhwc(x), [0, 1, 2], to_nhwc(maps), patch=4, regions=5)
    expected, expected_reference = evaluate.region_perturbation(model, x, [0, 1, 2], maps, patch=4, regions=5)
    np.testing.assert_allclose(curve.values.numpy(), expected.values.numpy(), atol=1e-5)
    np.testing.assert_allclose(reference.numpy(), expected_reference.numpy(), atol=1e-5)


def test_random_logit_equals_the_pytorch_twin(pair) -> None:  # noqa: ANN001
    model, kmodel, names, x = pair
    ours, other = evaluate.random_logit(GradCAM(model, layer="features.3"), x, [0, 1, 2], seed=2)
    theirs, their_other = evaluate.random_logit(GradCAM(kmodel, layer=names["features.3"]), to_nhwc(x), [0, 1, 2],
                                                seed=2)
    assert torch.equal(other, their_other)
    np.testing.assert_allclose(theirs.numpy(), ours.numpy(), atol=1e-4)


def test_randomisation_says_it_needs_a_pytorch_model(pair) -> None:  # noqa: ANN001
    _, kmodel, _, x = pair
    from convscope.errors import ConvscopeError

    with pytest.raises(ConvscopeError, match="not a torch.nn.Module"):
        evaluate.model_randomisation(Saliency(kmodel), to_nhwc(x), 0)
