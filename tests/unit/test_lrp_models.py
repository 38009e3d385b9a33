"""LRP on torchvision CNNs: equal to Zennit 0.5.1 on VGG-16 and ResNet-18, conservation on 24 constructors.

Models are built on the meta device where they can be and filled with seeded He-normal weights
(torchvision's own initialisation of VGG-16's 138M parameters alone takes seconds), and run at
32 px (AlexNet 64 px, Inception v3 75 px).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from convscope.methods.lrp import LRP, Composite, Epsilon, Norm, ZPlus, composite

torchvision = pytest.importorskip("torchvision")
zennit = pytest.importorskip("zennit")

from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import MergeBatchNorm, SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlusFlat  # noqa: E402
from zennit.torchvision import ResNetCanonizer, VGGCanonizer  # noqa: E402


def build(name: str, bias_free: bool = False, seed: int = 0) -> nn.Module:
    """torchvision's ``name`` with seeded random weights, in eval mode. ``bias_free``: every bias,
    batch-norm shift and running mean is zero, so each layer is linear without offset (batch norms
    keep random scales)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                model = getattr(torchvision.models, name)(weights=None)
        except NotImplementedError:  # RegNet computes its widths with tensors: built on the CPU
            model = getattr(torchvision.models, name)(weights=None)
    model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("weight") and p.dim() > 1:
                p.normal_(0, (2 / p[0].numel()) ** 0.5, generator=g)
            elif pname.endswith("bias"):
                p.zero_() if bias_free else p.normal_(0, 0.1, generator=g)
            elif pname.endswith("layer_scale"):  # ConvNeXt's (1e-6 at initialisation)
                p.uniform_(0.05, 0.15, generator=g)
            else:  # norm scales
                p.uniform_(0.5, 1.5, generator=g)
        for bname, b in model.named_buffers():
            if bname.endswith("running_var"):
                b.uniform_(0.5, 2.0, generator=g)
            elif bname.endswith("running_mean") and not bias_free:
                b.normal_(0, 0.1, generator=g)
            else:
                b.zero_()
    return model.eval()


class _ExactMerge(SequentialMergeBatchNorm):
    """Zennit's merge, but the merged batch norm left as the exact identity: Zennit leaves it
    computing ``x / sqrt(1 + eps)``, so its canonized ResNet is not quite the model (see below)."""

    @staticmethod
    def merge_batch_norm(modules: list[nn.Module], batch_norm: nn.Module) -> None:
        MergeBatchNorm.merge_batch_norm(modules, batch_norm)
        batch_norm.running_var.data.fill_(1.0 - batch_norm.eps)


class _ExactResNetCanonizer(ResNetCanonizer):
    def __init__(self) -> None:
        super().__init__()
        self.canonizers = (_ExactMerge(), *self.canonizers[1:])


ZENNIT = {"epsilon_plus_flat": EpsilonPlusFlat, "epsilon_gamma_box": EpsilonGammaBox,
          "epsilon_alpha2_beta1_flat": EpsilonAlpha2Beta1Flat}
BOX = {"low": -3.0, "high": 3.0}


@pytest.fixture(scope="module")
def nets() -> dict[str, tuple[nn.Module, type]]:
    return {"vgg16": (build("vgg16"), VGGCanonizer), "resnet18": (build("resnet18"), _ExactResNetCanonizer)}


def _zennit(model: nn.Module, canonizer: type, name: str, x: torch.Tensor) -> torch.Tensor:
    bounds = BOX if "box" in name else {}
    with Gradient(model=model, composite=ZENNIT[name](canonizers=[canonizer()], **bounds)) as attributor:
        _, theirs = attributor(x, lambda out: out * torch.eye(1000, dtype=x.dtype)[[3]])
    return theirs


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg16", "resnet18"])
@pytest.mark.parametrize("name", list(ZENNIT))
def test_equal_to_zennit_with_its_own_canonizers(nets: dict[str, tuple[nn.Module, type]], arch: str,
                                                 name: str) -> None:
    """VGG-16: the same float32 numbers (1e-6 of the largest value). ResNet-18: the two libraries
    round differently in float32 (a batch norm after its convolution vs merged weights, then sums
    of many shares; up to 1.5e-5 measured, 1e-4 asserted), so the identity is checked in float64
    (1e-10)."""
    model, canonizer = nets[arch]
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    lrp_composite = composite(name, **(BOX if "box" in name else {}))
    ours, theirs = LRP(model, composite=lrp_composite).attribute(x, 3), _zennit(model, canonizer, name, x)
    assert (ours - theirs).abs().max() / theirs.abs().max() < (1e-6 if arch == "vgg16" else 1e-4)
    if arch == "vgg16":
        return
    wide = model.double()
    try:
        ours, theirs = LRP(wide, composite=lrp_composite).attribute(x.double(), 3), _zennit(wide, canonizer, name,
                                                                                             x.double())
    finally:
        model.float()
    assert (ours - theirs).abs().max() / theirs.abs().max() < 1e-10


@pytest.mark.slow
def test_zennits_resnet_canonizer_changes_the_models_function(nets: dict[str, tuple[nn.Module, type]]) -> None:
    """Where the anchor is wrong: the merged batch norms stay in the model as ``x / sqrt(1 + eps)``,
    so Zennit explains a slightly different network (the logit moves by ~1e-5 relative per block)."""
    model, _ = nets["resnet18"]
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logit = model(x)[0, 3]
    with Gradient(model=model, composite=EpsilonPlusFlat(canonizers=[ResNetCanonizer()])) as attributor:
        theirs_out, _ = attributor(x, lambda out: out * torch.eye(1000)[[3]])
    with Gradient(model=model, composite=EpsilonPlusFlat(canonizers=[_ExactResNetCanonizer()])) as attributor:
        exact_out, _ = attributor(x, lambda out: out * torch.eye(1000)[[3]])
    assert abs(exact_out[0, 3] - logit) / logit.abs() < 1e-5 < abs(theirs_out[0, 3] - logit) / logit.abs()


# 20 constructors from 15 families held to 1e-4 (ConvNeXt below); the input size each needs
CONSERVING = {
    "alexnet": 64, "vgg11": 32, "vgg13_bn": 32, "resnet18": 32, "resnet50": 32, "resnext50_32x4d": 32,
    "wide_resnet50_2": 32, "densenet121": 32, "mobilenet_v2": 32, "mobilenet_v3_small": 32,
    "efficientnet_b0": 32, "regnet_x_400mf": 32, "regnet_y_400mf": 32, "shufflenet_v2_x0_5": 32,
    "squeezenet1_0": 32, "squeezenet1_1": 32, "mnasnet0_5": 32, "googlenet": 32, "inception_v3": 75,
    "resnet34": 32, "convnext_tiny": 32,
}
LRP0 = Composite(conv=Epsilon(1e-12), linear=Epsilon(1e-12), pool=Norm(1e-12), sum=Norm(1e-12), name="lrp0")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONSERVING))
def test_input_relevance_equals_the_score_without_biases_and_stabilisers(name: str) -> None:
    """Bias-free (every bias, batch-norm shift and running mean zero) and stabiliser-free (1e-12):
    LRP-0 at every layer is then exactly conservative, so the input's relevance sums to the logit
    (of the top class: a tiny logit would measure float32's rounding, not the rules); batch norms
    are folded, sums split, poolings linear, activations pass - whatever the family. ConvNeXt is
    held to 1e-3: its layer norms pass relevance that is large beside the values before them, and
    float32 rounds the shares to a 4e-4 drift (float64: 1e-11, too slow here for its depthwise
    convolutions)."""
    model = build(name, bias_free=True)
    size = CONSERVING[name]
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(x)
    top = int(logits.argmax())
    method = LRP(model, composite=LRP0)
    r = method.attribute(x, top)
    assert ((r.sum() - logits[0, top]).abs() / logits[0, top].abs()) < (1e-3 if name == "convnext_tiny" else 1e-4)
    assert method.last_report is not None and method.last_report.traced and not method.last_report.unhandled


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg11"])
def test_z_plus_conserves_on_relu_networks_and_biases_break_it(name: str) -> None:
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    plus = Composite(conv=ZPlus(1e-12), linear=Epsilon(1e-12), pool=Norm(1e-12), sum=Norm(1e-12))
    for bias_free in (True, False):
        model = build(name, bias_free=bias_free)
        r = LRP(model, composite=plus).attribute(x, 1)
        with torch.no_grad():
            logit = model(x)[:, 1]
        drift = ((r.sum((1, 2, 3)) - logit).abs() / logit.abs()).max()
        assert (drift < 1e-4) if bias_free else (drift > 1e-3)


def test_the_readme_lrp_example_runs() -> None:
    from pathlib import Path
    import re

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "from convscope import lrp" in b]
    model = build("resnet18")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    scope = {"model": model, "x": x}
    exec(compile(block, "README.md", "exec"), scope)
    assert scope["maps"].shape == x.shape


def test_each_layer_rule_runs_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A convolution folded into the batch norm after it passes its relevance on through the fold: its
    own rule must not run as well (on zero relevance: twice the work of every ResNet convolution)."""
    seen: list[tuple[int, ...]] = []
    relevance = ZPlus.relevance

    def counted(self: ZPlus, layer, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        seen.append(tuple(layer.weight.shape))
        return relevance(self, layer, x, r)

    monkeypatch.setattr(ZPlus, "relevance", counted)
    model = build("resnet18")
    LRP(model, composite="epsilon_plus_flat").attribute(torch.randn(1, 3, 32, 32), 3)
    convs = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Conv2d)][1:]  # the first: Flat
    assert sorted(seen) == sorted(convs)


def test_conservation_report_in_one_pass_matches_the_maps_and_folds() -> None:
    """The report's input row is the sum of LRP's own maps, per sample and target; the score is the
    logit; the convolution folded into ``bn1`` holds no relevance of its own (NaN), ``bn1`` does; the
    default layers are the cuts, written out here for torchvision's ResNet-18."""
    from convscope.methods.lrp import conservation, cuts

    model = build("resnet18")
    assert cuts(model) == ["conv1", "bn1", "maxpool", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0",
                           "layer3.1", "layer4.0", "layer4.1", "avgpool", "fc"]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    report = conservation(model, x, [3, 7], composite="epsilon_plus")
    maps = LRP(model, composite="epsilon_plus").attribute(x, [3, 7])
    torch.testing.assert_close(report.sums[-1], maps.sum((1, 2, 3)), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(report.score, logits[[0, 1], [3, 7]])
    torch.testing.assert_close(report.sums[report.layers.index("fc")], report.score)  # the seed: R = logit
    assert report.sums[0].isnan().all() and report.sums[1].isfinite().all()
    picture = report.picture(1)
    assert picture.ndim == 3 and picture.shape[0] > 14 * len(report.layers)


def test_explain_writes_the_conservation_picture_and_numbers(tmp_path) -> None:  # noqa: ANN001
    import json

    import numpy as np
    from PIL import Image

    from convscope.explain import explain
    from convscope.images import Preprocess, load_images
    from convscope.loaded import LoadedModel

    model = build("resnet18")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    loaded = LoadedModel(model, Preprocess(size=32, crop=32), "resnet18")
    explain(loaded, [tmp_path / "a.png"], method="lrp", target=5, out=tmp_path / "out")
    (entry,) = json.loads((tmp_path / "out" / "maps.json").read_text())["images"]["a.png"]
    found = entry["conservation"]
    assert (tmp_path / "out" / found["png"]).is_file() and found["png"] == "a-lrp-conservation.png"
    x = load_images([tmp_path / "a.png"], loaded.preprocess).tensor
    with torch.no_grad():
        assert found["score"] == pytest.approx(float(model(x)[0, 5]), rel=1e-5)
    rows = {row["layer"]: row for row in found["layers"]}
    expected = float(LRP(model).attribute(x, 5).sum())
    assert rows["input"]["relevance"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert rows["conv1"]["relevance"] is None and rows["input"]["drift"] == pytest.approx(expected / found["score"] - 1,
                                                                                            rel=1e-3, abs=1e-6)
