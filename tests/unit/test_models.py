"""Model and layer addressing: every spec kind, and the error a user gets for each mistake."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from convscope.errors import ConvscopeError
from convscope.layers import layer_names, layer_table, resolve_layer
from convscope.models import load_model

FACTORY_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn

    def tiny():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def other():
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))

    not_a_model = 42
    """
)


@pytest.fixture()
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "cs_test_models.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "cs_test_models"
    sys.modules.pop("cs_test_models", None)


def test_zoo_spec(shapes_vgg: nn.Module) -> None:
    loaded = load_model("zoo:shapes-vgg")
    assert loaded.preprocess.crop == 64 and loaded.class_names and len(loaded.class_names) == 6
    assert not loaded.model.training


def test_torchvision_spec_without_weights() -> None:
    loaded = load_model("torchvision:resnet18")
    assert type(loaded.model).__name__ == "ResNet" and loaded.preprocess.crop == 224


def test_torchvision_weights_use_the_real_weights_api(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []

    def offline(url: str, *a: object, **k: object) -> None:
        asked.append(url)
        raise OSError("network is unreachable")

    import torchvision.models._api as tv_api  # where torchvision's WeightsEnum fetches its file

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    with pytest.raises(ConvscopeError, match="--weights"):
        load_model("torchvision:resnet18?weights=DEFAULT")
    assert asked and asked[0].endswith(".pth")  # torchvision asked for the real weights file


def test_unknown_torchvision_model_and_weights() -> None:
    with pytest.raises(ConvscopeError, match="resnet18"):
        load_model("torchvision:resnt18")
    with pytest.raises(ConvscopeError, match="IMAGENET1K_V1"):
        load_model("torchvision:resnet18?weights=BEST")


def test_torchscript_file(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()).eval()
    path = tmp_path / "net.pt"
    torch.jit.script(net).save(str(path))
    loaded = load_model(str(path))
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(loaded.model(x), net(x))


def test_state_dict_file_given_as_a_model_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(ConvscopeError, match="factory"):
        load_model(str(path))


def test_factory_with_weights(factory_module: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = load_model(f"{factory_module}:tiny").model
    path = tmp_path / "w.pt"
    torch.save(reference.state_dict(), path)
    loaded = load_model(f"{factory_module}:tiny", weights=path)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded.model(x), reference(x))


def test_weights_of_the_wrong_architecture(factory_module: str, tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(load_model(f"{factory_module}:other").model.state_dict(), path)
    with pytest.raises(ConvscopeError, match=r"do not fit this architecture.*wrong shape.*0\.weight"):
        load_model(f"{factory_module}:tiny", weights=path)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("resnet18", "cannot tell what kind of model"),
        ("no_such_pkg_xyz:make", "cannot import"),
        ("cs_test_models:tinny", "Did you mean 'tiny'"),
        ("cs_test_models:not_a_model", "not a torch.nn.Module"),
        ("zoo:shapes-vgg?colour=red", "unknown model options"),
        ("missing-file.pt", "no such model file"),
    ],
)
def test_bad_specs_name_the_problem(spec: str, match: str, factory_module: str) -> None:
    with pytest.raises(ConvscopeError, match=match):
        load_model(spec)


def test_size_option_overrides_preprocessing() -> None:
    assert load_model("torchvision:resnet18?size=160&crop=128").preprocess.crop == 128


def test_layer_addressing_and_close_names() -> None:
    net = nn.Sequential()
    net.add_module("features", nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    assert resolve_layer(net, "features.0") is net.features[0]
    with pytest.raises(ConvscopeError) as err:
        resolve_layer(net, "feature.0")
    assert "'features.0'" in str(err.value) and "convscope layers" in str(err.value)
    with pytest.raises(ConvscopeError):
        resolve_layer(net, nn.ReLU())  # a module from elsewhere
    assert layer_names(net) == ["features", "features.0", "features.1"]


def test_layer_table_shapes_restores_mode_and_removes_hooks(shapes_resnet: nn.Module) -> None:
    shapes_resnet.train()
    try:
        rows = {r.name: r for r in layer_table(shapes_resnet, torch.zeros(2, 3, 64, 64))}
        assert shapes_resnet.training
    finally:
        shapes_resnet.eval()
    assert rows["layer2"].output_shape == (2, 32, 16, 16)
    assert rows["layer1.relu"].calls == 2
    assert all(not m._forward_hooks for m in shapes_resnet.modules())
