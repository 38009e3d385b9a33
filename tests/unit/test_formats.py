"""Every README command on every PyTorch model format (the README's "Model formats" table):
``zoo:shapes-vgg``, ``torchvision:resnet18`` (no weights), a TorchScript file (scripted and
traced) and ``package.module:factory --weights state_dict.pt``. The Keras rows are in
``tests/tf/test_formats_keras.py``.

Oracles: the table itself (each cell works, or is refused before any work with the given first
line); for TorchScript, the same network as a plain module (``saliency`` maps equal, the layer
names and parameter counts listed alike), and the silent wrong answer this guards against
(deconvnet and guided backprop on a script would return the plain gradient: see the last test).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from format_matrix import HIDDEN, VERBS, Format, check_refused, check_works, run
from torch import nn

from convscope.errors import ConvscopeError
from convscope.formats import FROM_PYTHON, is_torchscript
from convscope.methods import DeconvNet, GradCAM, GuidedBackprop, Saliency
from convscope.methods.registry import methods, supported
from convscope.rules import DeconvReLU
from convscope.targets import Channel

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")

FACTORY = '''
from torch import nn


def tiny():
    """A small CNN: two conv-ReLU blocks and a linear head (3 classes)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 3))
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A factory module on sys.path, its state dict, and the same network scripted and traced."""
    root = tmp_path_factory.mktemp("formats")
    (root / "formatnets").mkdir()
    (root / "formatnets" / "__init__.py").write_text("")
    (root / "formatnets" / "nets.py").write_text(textwrap.dedent(FACTORY))
    sys.path.insert(0, str(root))
    try:
        from formatnets.nets import tiny

        torch.manual_seed(0)
        model = tiny().eval()
        torch.save(model.state_dict(), root / "tiny_state.pt")
        torch.jit.script(model).save(str(root / "scripted.pt"))
        torch.jit.trace(model, torch.zeros(1, 3, 32, 32)).save(str(root / "traced.pt"))
        yield {"root": root, "weights": root / "tiny_state.pt", "scripted": root / "scripted.pt",
               "traced": root / "traced.pt"}
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("formatnets.nets", None)
        sys.modules.pop("formatnets", None)


def formats(files: dict[str, Path]) -> dict[str, Format]:
    return {
        "zoo": Format("zoo:shapes-vgg", "features.3", "features.0"),
        "torchvision": Format("torchvision:resnet18", "layer1.0.conv1", "conv1"),
        "factory": Format("formatnets.nets:tiny", "3", "0", ("--weights", str(files["weights"]))),
        "scripted": Format(str(files["scripted"]), "3", "0"),
        "traced": Format(str(files["traced"]), "3", "0"),
    }


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("name", ["zoo", "torchvision", "factory"])
def test_python_models_run_every_command(name: str, verb: str, files: dict[str, Path], zoo_cache: Path,
                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check_works(verb, formats(files)[name], tmp_path, capsys)


@pytest.mark.parametrize("name", ["scripted", "traced"])
def test_torchscript_rows(name: str, files: dict[str, Path], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    """layers and explain work; project, visualize, dream and atlas are refused before any work."""
    fmt = formats(files)[name]
    check_works("layers", fmt, tmp_path, capsys)
    err = check_works("explain", fmt, tmp_path, capsys)
    assert err.splitlines()[0] == f"convscope: {Path(fmt.spec).name} is a TorchScript model, whose layers take no " \
                                  "hooks: explaining with saliency"
    assert (tmp_path / "out-explain" / "a-saliency.png").is_file()
    for verb in ("project", "visualize", "dream"):
        check_refused(verb, fmt, f"convscope: error: `convscope {verb}` {HIDDEN}", FROM_PYTHON, tmp_path, capsys)
    check_refused("atlas", fmt, f"convscope: error: the dataset atlas {HIDDEN}", FROM_PYTHON, tmp_path, capsys)
    for method in ("grad_cam", "deconvnet"):  # the default CAM, and a rule the script's ReLUs never see
        check_refused("explain", fmt, f"convscope: error: --method {method} {HIDDEN}", "Use --method saliency,",
                      tmp_path, capsys, extra=("--method", method))


def test_torchscript_explain_all_runs_every_method_that_needs_no_layer(files: dict[str, Path], tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    fmt = formats(files)["traced"]
    fmt = Format(f"{fmt.spec}?size=16&crop=16", fmt.layer, fmt.atlas_layer)  # 16 x 16 pixels: quick occlusion
    err = check_works("explain", fmt, tmp_path, capsys, extra=("--method", "all"))
    written = sorted(p.stem.removeprefix("a-") for p in (tmp_path / "out-explain").glob("a-*.png"))
    runs = supported("torchscript")
    assert sorted([*runs, "all"]) == written
    left = [name for name in methods() if name not in runs]
    assert err.splitlines()[0].endswith("leaving out " + ", ".join(left))
    # every CAM method, and the rule methods, are left out; the rest run
    assert {"grad_cam", "score_cam", "guided_grad_cam", "deconvnet", "guided_backprop"} <= set(left)
    assert {"saliency", "integrated_gradients", "smooth_grad", "occlusion", "rise"} <= set(runs)


def test_torchscript_layers_match_the_python_model(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """The listing has the Python model's names, types and parameter counts, and says why no shapes."""
    from formatnets.nets import tiny

    model = tiny()
    for path in (files["scripted"], files["traced"]):
        code, out, _ = run(capsys, ["layers", str(path)])
        lines = out.splitlines()
        assert code == 0 and lines[0] == f"{path.name}  (no output shapes: a TorchScript model's layers take no hooks)"
        rows = [line.split() for line in lines[2:]]
        assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
            (name, type(m).__name__, "-", f"{sum(p.numel() for p in m.parameters()):,}")
            for name, m in model.named_modules() if name]


def test_torchscript_gradient_methods_equal_the_python_model_and_layer_methods_refuse(files: dict[str, Path]) -> None:
    from formatnets.nets import tiny

    model = tiny().eval()
    model.load_state_dict(torch.load(files["weights"], weights_only=True))
    script = torch.jit.load(str(files["scripted"]))
    assert is_torchscript(script) and not is_torchscript(model)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(Saliency(script).attribute(x, [0, 2]), Saliency(model).attribute(x, [0, 2]))
    # deconvnet and guided backprop differ from the gradient on the Python model...
    plain = Saliency(model).attribute(x, [0, 2])
    assert not torch.allclose(DeconvNet(model).attribute(x, [0, 2]), plain)
    # ...so on a script, whose ReLUs no rule reaches, they refuse instead of returning the gradient
    for build in (lambda: DeconvNet(script), lambda: GuidedBackprop(script), lambda: GradCAM(script)):
        with pytest.raises(ConvscopeError, match="cannot be used on a TorchScript model"):
            build()
    with pytest.raises(ConvscopeError, match="the backward rule DeconvReLU.. cannot be used on a TorchScript"):
        Saliency(script, rules=DeconvReLU()).attribute(x, 0)
    with pytest.raises(ConvscopeError, match="the layer '3' cannot be used on a TorchScript model"):
        Saliency(script).attribute(x, Channel("3", 1))


def test_explain_default_method_is_grad_cam_on_a_python_model(files: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    fmt = formats(files)["factory"]
    err = check_works("explain", fmt, tmp_path, capsys)
    assert err == "" and (tmp_path / "out-explain" / "a-grad_cam.png").is_file()


def test_atlas_refuses_a_model_it_cannot_hook(tmp_path: Path) -> None:
    """The library entry point refuses before it writes anything."""
    from convscope.atlas.build import build_atlas

    script = torch.jit.script(nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()))
    with pytest.raises(ConvscopeError, match=f"the dataset atlas {HIDDEN}"):
        build_atlas(script, "shapes:4", ["0"], tmp_path / "atlas", k=1)
    with pytest.raises(ConvscopeError, match="the dataset atlas runs on PyTorch models only, and this is a list"):
        build_atlas([], "shapes:4", ["0"], tmp_path / "atlas", k=1)
    assert not (tmp_path / "atlas").exists()
