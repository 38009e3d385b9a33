"""What a model's weights are: every loader says (``LoadedModel.weights``), the command line
announces random weights once on stderr, and ``explain`` records them in ``maps.json``. Importers
of the library get no output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convscope.cli import main
from convscope.loaded import RANDOM_WEIGHTS
from convscope.models import load_model

NOTE = ("convscope: note: the weights of torchvision:resnet18 are random (untrained); the predictions and maps of an "
        "untrained model show no learned features. For trained weights add ?weights=DEFAULT (downloaded once) or "
        "pass --weights FILE (a state dict).")


def test_each_loader_says_what_its_weights_are(shapes_vgg: nn.Module, tmp_path: Path) -> None:
    from convscope import zoo

    accuracy = zoo.info("shapes-vgg")["val_accuracy"]
    assert load_model("zoo:shapes-vgg").weights == f"zoo: trained on Shapes, held-out accuracy {100 * accuracy:.1f}%"
    untrained = load_model("torchvision:resnet18")
    assert untrained.weights == "random (untrained)" == RANDOM_WEIGHTS and untrained.random_weights
    factory = load_model("torch.nn:Identity")
    assert factory.weights == "random (untrained) unless the factory loads trained ones" and factory.random_weights
    torch.save({}, tmp_path / "identity.pt")
    given = load_model("torch.nn:Identity", weights=tmp_path / "identity.pt")
    assert given.weights == "state dict identity.pt" and not given.random_weights
    torch.jit.script(nn.ReLU()).save(str(tmp_path / "relu.pt"))
    scripted = load_model(str(tmp_path / "relu.pt"))
    assert scripted.weights == "saved in relu.pt" and not scripted.random_weights


def test_the_library_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    load_model("torchvision:resnet18")
    assert capsys.readouterr() == ("", "")


def test_the_command_line_announces_random_weights_once(shapes_vgg: nn.Module,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layers", "torchvision:resnet18"]) == 0
    assert capsys.readouterr().err == NOTE + "\n"
    assert main(["layers", "zoo:shapes-vgg"]) == 0  # trained: nothing to say
    assert capsys.readouterr().err == ""


def test_explain_records_the_weights_in_maps_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)).save(tmp_path / "photo.png")
    assert main(["explain", "torchvision:resnet18", str(tmp_path / "photo.png"), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().err.count("random (untrained)") == 1
    meta = json.loads((tmp_path / "out" / "maps.json").read_text())
    assert meta["model"] == {"name": "torchvision:resnet18", "weights": "random (untrained)"}
    assert list(meta["images"]) == ["photo.png"] and meta["images"]["photo.png"][0]["method"] == "grad_cam"


def test_weights_given_on_the_command_line_are_not_announced(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from torchvision.models import resnet18

    torch.save(resnet18().state_dict(), tmp_path / "resnet18.pt")
    assert main(["layers", "torchvision:resnet18", "--weights", str(tmp_path / "resnet18.pt")]) == 0
    assert capsys.readouterr().err == ""


def test_project_sheets_and_atlas_pages_say_the_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The project sheet's picture label says "random weights" (the labels handed to the grid, for
    random and for trained weights), and the atlas index names the weights."""
    import convscope.render as render
    from convscope.atlas import build_atlas, write_pages
    from convscope.images import Preprocess
    from convscope.loaded import LoadedModel
    from convscope.project import project_images

    labels: list[str] = []
    grid = render.grid

    def recording_grid(tiles: list[np.ndarray], labels_: list[str], **kw: object) -> np.ndarray:
        labels.append(labels_[0])
        return grid(tiles, labels=labels_, **kw)

    monkeypatch.setattr(render, "grid", lambda tiles, labels=None, **kw: recording_grid(tiles, labels, **kw))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), np.uint8)).save(tmp_path / "p.png")
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3)).eval()
    pre = Preprocess(size=16, crop=16)
    for weights, out in ((RANDOM_WEIGHTS, "a"), ("state dict net.pt", "b")):
        project_images(LoadedModel(net, pre, "net", weights=weights), [tmp_path / "p.png"], "1", 0, out=tmp_path / out)
    assert labels == ["p.png (random weights)", "p.png"]
    atlas = build_atlas(net, torch.utils.data.TensorDataset(torch.rand(4, 3, 8, 8)), ["1"], tmp_path / "atlas", k=1)
    assert f"weights: {RANDOM_WEIGHTS}" in write_pages(atlas, weights=RANDOM_WEIGHTS).read_text()
