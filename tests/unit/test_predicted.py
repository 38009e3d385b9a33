"""``Predicted()``: each sample's top class, picked in the pass that scores it.

Oracles: the same method with the classes predicted by a separate ``model(x).argmax(1)`` pass
(maps equal exactly, classes equal), a counted forward pass (one per chunk, not two), and the
registry's declaration of which methods score changed copies (those refuse it).
"""

from __future__ import annotations

import pytest
import torch
from nets import TinyVGG, convnet_methods

from convscope import Class, ConvscopeError, Predicted
from convscope.methods.registry import get_method

SMALL = {"integrated_gradients": {"steps": 3}, "gradient_shap": {"samples": 2}, "occlusion": {"window": 8},
         "rise": {"masks": 4}, "smooth_grad": {"samples": 2}, "smooth_grad_squared": {"samples": 2},
         "var_grad": {"samples": 2}}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return TinyVGG().eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name", convnet_methods())
def test_every_method_that_scores_the_input_explains_its_prediction_and_the_others_refuse(
        model: torch.nn.Module, x: torch.Tensor, name: str) -> None:
    method = get_method(name)(model, max_batch=2, **SMALL.get(name, {}))
    with torch.no_grad():
        predicted = model(x).argmax(1).tolist()
    target = Predicted()
    if not method.scores_input:
        with pytest.raises(ConvscopeError, match="cannot follow Predicted"):
            method.attribute(x, target)
        return
    maps = method.attribute(x, target)
    assert torch.equal(maps, method.attribute(x, Class(predicted)))
    assert target.classes() == predicted  # picked over chunks of two rows, in row order


def test_the_prediction_comes_from_the_attribution_pass(model: torch.nn.Module, x: torch.Tensor) -> None:
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        target = Predicted()
        get_method("grad_cam")(model, max_batch=2).attribute(x, target)
    finally:
        handle.remove()
    assert len(calls) == 3  # chunks of 2 + 2 + 1 rows, no prediction pass besides them
    assert len(target.classes()) == 5


def test_a_combination_following_the_pass_is_refused_by_a_noise_tunnel(model: torch.nn.Module,
                                                                        x: torch.Tensor) -> None:
    with pytest.raises(ConvscopeError, match="target=model\\(x\\).argmax"):
        get_method("smooth_grad")(model, samples=2).attribute(x, Predicted() - 0.5 * Class(1))


def test_a_new_call_replaces_the_picks_and_an_unscored_target_says_so(model: torch.nn.Module,
                                                                       x: torch.Tensor) -> None:
    target = Predicted()
    with pytest.raises(ConvscopeError, match="nothing to report"):
        target.classes()
    saliency = get_method("saliency")(model)
    saliency.attribute(x, target)
    saliency.attribute(x[:2], target)
    with torch.no_grad():
        assert target.classes() == model(x[:2]).argmax(1).tolist()


def test_ties_go_to_the_first_class() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    target = Predicted()
    grads = get_method("saliency")(model).attribute(torch.tensor([[[[2.0, 1.0], [0.0, 0.0]]]]), target)
    assert target.classes() == [0]
    assert grads.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
