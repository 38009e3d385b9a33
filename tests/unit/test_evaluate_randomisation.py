"""Model-parameter randomisation and random logit: the protocol re-done by hand on copies made in
the test (each layer reset by its own ``reset_parameters`` under ``torch.manual_seed(seed + i)``),
the user's model and random state untouched, and Adebayo et al.'s finding as a behavioural test
on the zoo's trained shapes-vgg."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from convscope.errors import ConvscopeError
from convscope.evaluate import model_randomisation, random_logit, spearman, ssim
from convscope.evaluate.randomisation import randomisable_layers
from convscope.methods import GradCAM, GuidedBackprop, Saliency
from nets import TinyVGG


@pytest.fixture(scope="module")
def tiny() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return TinyVGG().eval(), torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _reset_by_hand(model: nn.Module, names: list[str], seed: int) -> nn.Module:
    twin = copy.deepcopy(model)
    modules = dict(twin.named_modules())
    for i, name in enumerate(names):
        torch.manual_seed(seed + i)
        modules[name].reset_parameters()
    return twin


def _absolute(maps: torch.Tensor) -> torch.Tensor:
    a = maps.abs().sum(1)
    return a / a.flatten(1).amax(1).view(-1, 1, 1)


def test_cascading_steps_equal_copies_reset_by_hand(tiny) -> None:  # noqa: ANN001
    model, x = tiny
    layers = randomisable_layers(model)
    result = model_randomisation(Saliency(model), x, [0, 1, 2], seed=5)
    assert result.layers == layers and len(result.maps) == len(layers) + 1
    original = Saliency(model).attribute(x, [0, 1, 2])
    for step in range(len(layers)):
        by_hand = Saliency(_reset_by_hand(model, layers[:step + 1], 5)).attribute(x, [0, 1, 2])
        assert torch.allclose(result.maps[step + 1], by_hand.sum(1, keepdim=True), atol=1e-6)
        np.testing.assert_allclose(result.similarity["ssim"][step].numpy(),
                                   ssim(_absolute(original), _absolute(by_hand)).numpy(), atol=1e-5)
        np.testing.assert_allclose(result.similarity["spearman"][step].numpy(),
                                   spearman(original.sum(1), by_hand.sum(1)).numpy(), atol=1e-5)


def test_independent_steps_randomise_one_layer_each(tiny) -> None:  # noqa: ANN001
    model, x = tiny
    layers = randomisable_layers(model)[:3]
    result = model_randomisation(Saliency(model), x, 1, order="independent", layers=layers)
    for step, name in enumerate(layers):
        twin = copy.deepcopy(model)
        torch.manual_seed(step)
        dict(twin.named_modules())[name].reset_parameters()
        assert torch.allclose(result.maps[step + 1], Saliency(twin).attribute(x, 1).sum(1, keepdim=True), atol=1e-6)


def test_the_model_and_the_random_state_are_untouched(tiny) -> None:  # noqa: ANN001
    model, x = tiny
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    model_randomisation(GradCAM(model, layer=model.features[3]), x, 0, layers=randomisable_layers(model)[:2])
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_layer_given_as_a_module_follows_the_copy(tiny) -> None:  # noqa: ANN001
    model, x = tiny
    name = randomisable_layers(model)[-1]  # the first convolution: the CAM layer after it changes
    # seed 11: TinyVGG itself was initialised right after torch.manual_seed(0), so seed 0 would
    # redraw its first convolution's very weights
    by_module = model_randomisation(GradCAM(model, layer=model.features[3]), x, 0, layers=[name], seed=11)
    by_name = model_randomisation(GradCAM(model, layer="features.3"), x, 0, layers=[name], seed=11)
    assert torch.allclose(by_module.maps[1], by_name.maps[1])
    assert not torch.allclose(by_module.maps[1], by_module.maps[0])


def test_random_logit_compares_with_a_drawn_other_class(tiny) -> None:  # noqa: ANN001
    model, x = tiny
    similarity, other = random_logit(Saliency(model), x, [0, 1, 2], seed=3)
    assert (other != torch.tensor([0, 1, 2])).all() and int(other.max()) < 10
    expected = ssim(_absolute(Saliency(model).attribute(x, [0, 1, 2])),
                    _absolute(Saliency(model).attribute(x, other.tolist())))
    assert torch.allclose(similarity, expected, atol=1e-6)
    again, same = random_logit(Saliency(model), x, [0, 1, 2], seed=3)
    assert torch.equal(same, other) and torch.equal(again, similarity)


def test_bad_requests_get_clear_errors(tiny) -> None:  # noqa: ANN001
    model, x = tiny
    with pytest.raises(ConvscopeError, match="'features.1' has no parameters to randomise"):
        model_randomisation(Saliency(model), x, 0, layers=["features.1"])
    with pytest.raises(ConvscopeError, match="order='top'"):
        model_randomisation(Saliency(model), x, 0, order="top")
    with pytest.raises(ConvscopeError, match="unknown similarity 'hogwarts'"):
        model_randomisation(Saliency(model), x, 0, similarities=["hogwarts"])
    with pytest.raises(ConvscopeError, match="at least 2 classes"):
        random_logit(Saliency(model), x, 0, classes=1)


@pytest.mark.slow
def test_guided_backprop_survives_randomisation_where_the_gradient_and_grad_cam_do_not(shapes_vgg) -> None:  # noqa: ANN001
    """Adebayo et al.'s finding on a trained model: randomising the classifier barely changes guided
    backprop, while the gradient's and Grad-CAM's maps move far from the originals."""
    from convscope import zoo
    from convscope.data import Shapes

    images, _, labels = Shapes(24, seed=7).arrays()
    x = zoo.preset("shapes-vgg").to_tensor(images)
    top = ["classifier.4", "classifier.1"]
    ssims = {cls.__name__: model_randomisation(cls(shapes_vgg), x, labels, layers=top).similarity["ssim"].nanmean(1)
             for cls in (GuidedBackprop, Saliency, GradCAM)}
    print({name: [round(float(v), 3) for v in values] for name, values in ssims.items()})
    guided = ssims["GuidedBackprop"]
    assert float(guided.min()) > 0.65
    for moved in ("Saliency", "GradCAM"):  # the whole classifier random: far below guided backprop
        assert float(ssims[moved][-1]) < float(guided[-1]) - 0.3
        assert float(ssims[moved].mean()) < float(guided.mean()) - 0.2
