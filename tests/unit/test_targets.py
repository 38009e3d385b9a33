"""Targets: seeds checked on models whose gradients are known by hand, algebra, API-edge conversion,
many targets per forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nets import make, sample
from torch import nn

from convscope.errors import ConvscopeError
from convscope.methods import Saliency
from convscope.targets import Channel, Class, Direction, FunctionTarget, MaxNeuron, Neuron, as_target, as_targets


def identity_net() -> nn.Sequential:
    """Layer "0" is an Identity: its output is the input, so d score / d input is the seed itself."""
    return nn.Sequential(nn.Identity(), nn.Flatten(), nn.Linear(2 * 3 * 3, 4))


X = torch.tensor([[[[1.0, 5.0, 2.0], [5.0, 0.0, -1.0], [3.0, 4.0, 0.5]],
                   [[-2.0, -1.0, -3.0], [-1.5, -4.0, -1.0], [-5.0, -2.5, -6.0]]]])


def seed_of(target: object) -> torch.Tensor:
    return Saliency(identity_net()).attribute(X, target)


def test_class_seed_is_the_weight_row_of_a_linear_model() -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x = torch.randn(4, 5)
    torch.testing.assert_close(Saliency(model).attribute(x, 2), model.weight[2].detach().expand(4, 5))
    per_sample = Saliency(model).attribute(x, [0, 2, 1, 0])
    torch.testing.assert_close(per_sample, model.weight.detach()[[0, 2, 1, 0]])
    torch.testing.assert_close(Saliency(model, max_batch=3).attribute(x, [0, 2, 1, 0]), per_sample)


def test_channel_seeds() -> None:
    ones = torch.zeros_like(X)
    ones[0, 1] = 1.0
    assert torch.equal(seed_of(Channel("0", 1, "sum")), ones)
    torch.testing.assert_close(seed_of(Channel("0", 1, "mean")), ones / 9)
    first_max = torch.zeros_like(X)
    first_max[0, 0, 0, 1] = 1.0  # 5.0 appears at (0, 1) and (1, 0): the first in row-major order wins
    assert torch.equal(seed_of(Channel("0", 0, "max")), first_max)


def test_neuron_seed_is_one_hot() -> None:
    expected = torch.zeros_like(X)
    expected[0, 1, 2, 0] = 1.0
    assert torch.equal(seed_of(Neuron("0", 1, 2, 0)), expected)


def test_neuron_on_a_linear_layer_has_no_position() -> None:
    model = identity_net()
    torch.testing.assert_close(Saliency(model).attribute(X, Neuron("2", 3)),
                               model[2].weight[3].detach().reshape(1, 2, 3, 3))


@pytest.mark.parametrize("rank, where, value", [(0, (0, 0, 1), 5.0), (1, (0, 1, 0), 5.0), (2, (0, 2, 1), 4.0)])
def test_max_neuron_seed_is_the_activation_with_all_others_zero(rank: int, where: tuple, value: float) -> None:
    expected = torch.zeros_like(X)
    expected[(0, *where)] = value
    assert torch.equal(seed_of(MaxNeuron("0", 0, rank=rank)), expected)


def test_max_neuron_of_an_all_negative_map_keeps_its_sign() -> None:
    expected = torch.zeros_like(X)
    expected[0, 1, 0, 1] = -1.0  # channel 1's largest, -1.0, sits at (0, 1) and (1, 2): the first wins
    assert torch.equal(seed_of(MaxNeuron("0", 1)), expected)


def test_direction_seed_is_the_vector_broadcast() -> None:
    expected = torch.stack([torch.full((3, 3), 0.5), torch.full((3, 3), -2.0)])[None]
    assert torch.equal(seed_of(Direction("0", [0.5, -2.0])), expected)


def test_callable_target_sees_the_output() -> None:
    model = identity_net()
    w = model[2].weight.detach()
    got = Saliency(model).attribute(X, lambda out: 3 * out[:, 1] - out[:, 0])
    torch.testing.assert_close(got, (3 * w[1] - w[0]).reshape(1, 2, 3, 3))


LINEAR_MODEL, LINEAR_X = make("tiny_vgg").eval(), sample("tiny_vgg", n=2)


@settings(max_examples=30, deadline=None)
@given(a=st.floats(-3, 3), b=st.floats(-3, 3), c=st.floats(-5, 5))
def test_saliency_is_linear_in_the_target(a: float, b: float, c: float) -> None:
    model, x = LINEAR_MODEL, LINEAR_X
    t1, t2 = Class(1), Channel("features.3", 2, "mean")
    combined, g1, g2 = Saliency(model).attribute(x, targets=[a * t1 - t2 * b + c, t1, t2])
    torch.testing.assert_close(combined, a * g1 - b * g2, rtol=1e-4, atol=1e-6)


def test_product_of_targets_follows_the_product_rule() -> None:
    model, x = make("tiny_vgg").eval(), sample("tiny_vgg", n=2)
    got = Saliency(model).attribute(x, Class(0) * Class(3))
    leaf = x.clone().requires_grad_()
    out = model(leaf)
    (expected,) = torch.autograd.grad((out[:, 0] * out[:, 3]).sum(), leaf)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(Saliency(model).attribute(x, -Class(3)), -Saliency(model).attribute(x, 3))


def test_api_edge_conversion() -> None:
    assert isinstance(as_target(3), Class) and as_target(3).index.tolist() == 3
    assert as_target([3, 0]).index.tolist() == [3, 0]
    assert as_target(torch.tensor([1, 2])).index.tolist() == [1, 2]
    assert isinstance(as_target(lambda out: out[:, 0]), FunctionTarget)
    t = Channel("x", 0)
    assert as_target(t) is t
    # numpy labels, as Shapes.arrays() and np.argmax give them
    assert as_target(np.int64(4)).index.tolist() == 4
    assert as_target(np.array([2, 0], dtype=np.uint8)).index.tolist() == [2, 0]
    assert as_target([np.int64(1), np.int32(5)]).index.tolist() == [1, 5]
    for bad in ("3", 2.5, True, [1.5], None, np.bool_(True), np.array([0.5, 1.0]), [np.int64(1), True]):
        with pytest.raises(ConvscopeError):
            as_target(bad)  # type: ignore[arg-type]
    with pytest.raises(ConvscopeError, match="cannot combine"):
        Class(1) + "a"  # type: ignore[operator]
    assert repr(Class(1) - 2 * Neuron("f", 1, 2, 3)) == "(Class(1) - (2.0 * Neuron('f', 1, 2, 3)))"


def test_target_errors_name_the_problem() -> None:
    model, x = make("tiny_vgg"), sample("tiny_vgg", n=2)
    cases = [
        (Class(7), "out of range for 5 classes"),
        (Class([1, 2, 3]), "3 per-sample indices for a batch of 2"),
        (Channel("features.3", 8), "channel 8 is out of range"),
        (Neuron("features.3", 1, 9, 0), r"does not fit layer 'features.3' with spatial shape \[8, 8\]"),
        (Direction("features.3", [1.0, 2.0]), "Direction vector has 2 entries"),
        (Channel("feature.3", 1), "Did you mean 'features.3'"),
        (lambda out: out, "not one score per sample"),
    ]
    for target, message in cases:
        with pytest.raises(ConvscopeError, match=message):
            Saliency(model).attribute(x, target)
    with pytest.raises(ConvscopeError, match="exactly one of"):
        as_targets(3, [3], 2)
    with pytest.raises(ConvscopeError, match="non-empty list"):
        as_targets(None, [], 2)


def test_layer_run_twice_is_rejected_as_ambiguous() -> None:
    model, x = make("tiny_residual"), sample("tiny_residual", n=1)
    with pytest.raises(ConvscopeError, match=r"'layer1.relu' ran 2 times.*parent 'layer1'"):
        Saliency(model).attribute(x, MaxNeuron("layer1.relu", 0))


@pytest.mark.parametrize("max_batch, forwards", [(None, 1), (2, 3), (5, 1)])
def test_many_targets_cost_one_forward_per_chunk(max_batch: int | None, forwards: int) -> None:
    model, x = make("tiny_vgg"), sample("tiny_vgg", n=5)
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    targets = [0, [1, 2, 3, 4, 0], Channel("features.3", 1), MaxNeuron("features.5", 2),
               Direction("features.0", [1.0] * 6)]
    try:
        maps = Saliency(model, max_batch=max_batch).attribute(x, targets=targets)
    finally:
        handle.remove()
    assert len(calls) == forwards and len(maps) == len(targets)
    for target, got in zip(targets, maps):  # each equals its own single-target call
        torch.testing.assert_close(got, Saliency(model).attribute(x, target))


def test_class_scores_are_the_same_for_one_index_or_many() -> None:
    """The column shortcut (one class for the chunk) and the gather agree with plain indexing."""
    from convscope.targets import Class, Record

    out = torch.randn(4, 6)
    rows = torch.arange(4)
    for index in (3, [3, 3, 3, 3], [0, 5, 3, 3]):
        got = Class(index).score(Record(output=out, acts={}, rows=rows, input=None))
        want = out[torch.arange(4), torch.as_tensor(index).expand(4)]
        assert torch.equal(got, want)
