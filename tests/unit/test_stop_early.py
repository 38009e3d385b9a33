"""Forward passes that end at the last probed layer when the targets read no model output.

Oracles: a module after the probed layers that counts its calls (it must stop being called, and
only after one complete pass), and the same records, gradients and maps computed with the whole
forward pass."""

from __future__ import annotations

import pytest
import torch
from nets import TinyVGG, sample
from torch import Tensor, nn

from convscope import Channel, Class, ConvscopeError, Neuron
from convscope.backends.torch import Session
from convscope.featurevis import L2, TotalVariation, channels, render
from convscope.methods import GuidedBackprop, IntegratedGradients, Saliency
from convscope.targets import FunctionTarget

X = sample("tiny_vgg", n=3)


class Counted(nn.Module):
    """TinyVGG with a counter after ``features`` and a model-level ``except Exception``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inner = TinyVGG().eval()
        self.head_calls = 0

    def forward(self, x: Tensor) -> Tensor:
        feats = self.inner.features(x)
        try:  # a model that swallows errors must still let the early stop through
            self.head_calls += 1
            return self.inner.classifier(feats)
        except Exception:  # noqa: BLE001
            return feats.flatten(1)[:, :5]


def test_reads_output_says_which_targets_need_the_whole_pass() -> None:
    layer = Channel("features.3", 1)
    assert not layer.reads_output() and not Neuron("features.3", 0, 1, 1).reads_output()
    assert not (layer - 0.1 * TotalVariation() + 2 * L2()).reads_output()
    assert Class(2).reads_output() and (layer + Class(2)).reads_output()
    assert FunctionTarget(lambda out: out[:, 0]).reads_output()  # unknown code: assume it reads


def test_passes_end_at_the_last_probed_layer_after_one_whole_pass() -> None:
    model = Counted()
    with Session(model, layers=["inner.features.3", "inner.features.0"], stop_early=True) as session:
        first = session.forward(X, slice(0, 3)).record
        assert model.head_calls == 1 and first.output.shape == (3, 5)
        later = [session.forward(X, slice(0, 3)).record for _ in range(2)]
        assert model.head_calls == 1  # the head never ran again
    assert later[0].output.shape == (3, 0) and later[0].output.dtype == X.dtype
    for key in first.acts:
        assert torch.equal(later[1].acts[key], first.acts[key])
    assert not any(m._forward_hooks for m in model.modules())


def test_a_layer_that_runs_twice_is_still_an_error() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x: Tensor) -> Tensor:
            return self.conv(self.conv(x)).mean((2, 3))

    with Session(Twice(), layers=["conv"], stop_early=True) as session, \
            pytest.raises(ConvscopeError, match="ran 2 times"):
        session.forward(X, slice(0, 3))


@pytest.mark.parametrize("make", [lambda m: Saliency(m), lambda m: GuidedBackprop(m),
                                  lambda m: IntegratedGradients(m, steps=5, max_batch=4)])
def test_methods_with_layer_targets_skip_the_head_and_agree(make) -> None:
    model = Counted()
    target = Channel("inner.features.3", 2) - 0.5 * Channel("inner.features.0", 1)
    got = make(model).attribute(X, target)
    calls = model.head_calls
    full = make(model).attribute(X, target + 0.0 * Class(0))  # reads the output: whole passes
    assert torch.equal(got, full)
    assert calls <= 1 < model.head_calls  # only the first pass of the first call ran the head


def test_saliency_of_a_channel_is_the_autograd_gradient() -> None:
    model = Counted()
    got = Saliency(model).attribute(X, Channel("inner.features.3", 2))  # the channel's sum (default reduce)
    leaf = X.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model.inner.features[:4](leaf)[:, 2].sum(), leaf)
    torch.testing.assert_close(got, grad, rtol=1e-5, atol=1e-7)


def test_render_of_a_layer_objective_runs_the_head_once() -> None:
    model = Counted()
    out = render(model, channels("inner.features.3", range(2)), steps=4, size=16, transforms=None, progress=False)
    assert model.head_calls == 1 and out.history.shape == (4, 2)
