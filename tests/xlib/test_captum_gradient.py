"""Captum as an anchor: agreement where Captum is right, and what Captum does where it is not.

Captum attaches its rules to ``nn.ReLU`` modules. With module ReLUs it agrees with us to 1e-5
(Captum 0.9 also handles in-place and reused ReLU modules, which these tests record). It never
sees ``F.relu``, ``torch.relu``, ``Tensor.relu(_)``: there its guided backprop and deconvolution
silently return the plain gradient, while ours equals the naive reference. On a reused module
its neuron variants silently pick the module's last call; we refuse the ambiguous layer.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from nets import SPELLINGS, make, sample, torchvision_model
from reference.naive_backprop import naive_attribution

from convscope.errors import ConvscopeError
from convscope.methods import DeconvNet, GuidedBackprop, InputXGradient, Saliency
from convscope.targets import Neuron

captum_attr = pytest.importorskip("captum.attr")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PAIRS = {  # ours -> Captum's class and its extra arguments
    "saliency": (Saliency, captum_attr.Saliency, {"abs": False}),
    "input_x_gradient": (InputXGradient, captum_attr.InputXGradient, {}),
    "guided": (GuidedBackprop, captum_attr.GuidedBackprop, {}),
    "deconv": (DeconvNet, captum_attr.Deconvolution, {}),
}
MODULE_RELU_MODELS = ["tiny_vgg", "spelling:module", "spelling:module_inplace"]
FUNCTIONAL = [s for s in SPELLINGS if not s.startswith(("module", "shared"))]


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return bool((a - b).abs().max() <= tol * max(float(b.abs().max()), 1e-12))


def captum(kind: str, model: torch.nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    _, cls, extra = PAIRS[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(model).attribute(x.clone(), target=target, **extra)


@pytest.mark.parametrize("model_name", MODULE_RELU_MODELS)
@pytest.mark.parametrize("kind", list(PAIRS))
def test_agrees_with_captum_on_module_relus(kind: str, model_name: str) -> None:
    model, x = make(model_name).eval(), sample(model_name)
    ours = PAIRS[kind][0](model).attribute(x, 2)
    assert close(ours, captum(kind, model, x, 2))


@pytest.mark.parametrize("ours, theirs", [(GuidedBackprop, "NeuronGuidedBackprop"), (DeconvNet, "NeuronDeconvolution")])
def test_neuron_variants_agree_with_captum(ours: type, theirs: str) -> None:
    model, x = make("tiny_vgg").eval(), sample("tiny_vgg")
    expected = getattr(captum_attr, theirs)(model, model.features[3]).attribute(x.clone(), neuron_selector=(5, 2, 6))
    assert close(ours(model).attribute(x, Neuron("features.3", 5, 2, 6)), expected)


def test_agrees_with_captum_guided_backprop_on_torchvision_vgg16() -> None:
    model = torchvision_model("vgg16")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert close(GuidedBackprop(model).attribute(x, 7), captum("guided", model, x, 7))


@pytest.mark.parametrize("spelling", FUNCTIONAL)
@pytest.mark.parametrize("kind, rule", [("guided", "guided"), ("deconv", "deconv")])
def test_functional_relus_captum_returns_the_plain_gradient_we_return_the_rule(spelling: str, kind: str,
                                                                               rule: str) -> None:
    name = f"spelling:{spelling}"
    model, x = make(name).eval(), sample(name)
    reference = naive_attribution(model, x, lambda m, t: m(t)[:, 1], rule)
    gradient = naive_attribution(model, x, lambda m, t: m(t)[:, 1], "gradient")
    theirs = captum(kind, model, x, 1)
    assert close(theirs, gradient) and not close(theirs, reference, 1e-2)  # Captum: silently wrong
    assert close(PAIRS[kind][0](model).attribute(x, 1), reference)       # ours: right


@pytest.mark.parametrize("model_name", ["spelling:shared_inplace", "tiny_residual"])
@pytest.mark.parametrize("kind, rule", [("guided", "guided"), ("deconv", "deconv")])
def test_reused_inplace_relu_module_both_match_the_naive_reference(model_name: str, kind: str, rule: str) -> None:
    model, x = make(model_name).eval(), sample(model_name)
    reference = naive_attribution(model, x, lambda m, t: m(t)[:, 3], rule)
    assert close(PAIRS[kind][0](model).attribute(x, 3), reference)
    assert close(captum(kind, model, x, 3), reference)  # Captum 0.9 gets this case right too


def test_neuron_on_a_reused_module_captum_picks_the_last_call_we_refuse() -> None:
    model, x = make("tiny_residual").eval(), sample("tiny_residual")
    theirs = captum_attr.NeuronGuidedBackprop(model, model.layer1.relu).attribute(x.clone(), neuron_selector=(1, 3, 3))

    def stem(m: torch.nn.Module, t: torch.Tensor) -> torch.Tensor:
        return m.relu(m.bn1(m.conv1(t)))

    first_call = naive_attribution(model, x, lambda m, t: m.layer1.relu(m.layer1.bn1(m.layer1.conv1(stem(m, t))))[
        :, 1, 3, 3], "guided")
    last_call = naive_attribution(model, x, lambda m, t: m.layer1(stem(m, t))[:, 1, 3, 3], "guided")
    assert close(theirs, last_call) and not close(theirs, first_call, 1e-2)
    with pytest.raises(ConvscopeError, match="ran 2 times"):
        GuidedBackprop(model).attribute(x, Neuron("layer1.relu", 1, 3, 3))
    assert close(GuidedBackprop(model).attribute(x, Neuron("layer1", 1, 3, 3)), last_call)
