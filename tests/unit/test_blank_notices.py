"""A unit that never fires is named as such, never shown as an unexplained blank: in ``project``'s
sheet labels and on stderr, in ``visualize``'s grid labels and on stderr, and on the atlas pages.

Oracle: a hand-built network whose channel 1 has weight 0 and bias -1 after a ReLU, so it is 0 on
every input by construction, beside channel 0 (weight 1, bias 1), which fires everywhere.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from convscope.atlas import build_atlas, write_pages
from convscope.featurevis import cli as featurevis_cli
from convscope.featurevis.render import Rendered
from convscope.images import Preprocess
from convscope.loaded import LoadedModel
from convscope.project import project_images


def half_dead() -> nn.Sequential:
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0] = 1.0
        conv.bias.copy_(torch.tensor([1.0, -1.0]))
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3)).eval()


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), np.uint8)).save(path)
    return path


def loaded() -> LoadedModel:
    return LoadedModel(half_dead(), Preprocess(size=16, crop=16), "half-dead", weights="set by hand")


def test_project_names_a_unit_that_never_fires(image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                               ) -> None:
    project_images(loaded(), [image], "1", 1, out=tmp_path / "dead")
    assert capsys.readouterr().err.strip() == (
        "convscope: photo.png: channel 1 of 1 never fires on this image (its strongest unit is 0): its projections "
        "are blank")
    project_images(loaded(), [image], "1", 0, out=tmp_path / "alive")
    assert capsys.readouterr().err == ""


def test_rendered_images_whose_objective_never_moved_are_stuck() -> None:
    history = torch.tensor([[0.0, 1.0, 2.0], [0.0, 1.5, 2.0], [0.0, 2.0, 2.0 + 1e-9]])  # steps x images
    assert Rendered(torch.zeros(3, 3, 4, 4), history).stuck() == [True, False, True]


def test_visualize_names_a_channel_that_did_not_move(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(featurevis_cli, "_load", lambda args, verb: loaded())
    args = argparse.Namespace(channels="0,1", layer="1", steps=4, size=16, lr=0.05, seed=0, max_batch=None,
                              no_transforms=True, quiet=True, out=str(tmp_path / "vis"), model="half-dead",
                              weights=None)
    assert featurevis_cli.visualize_command(args) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["convscope: 1 channel 1: the optimization did not move (the channel never fired on the starting "
                   "images, so it gave no gradient): its picture is blank"]


def test_atlas_pages_say_which_channels_never_fire(tmp_path: Path) -> None:
    data = torch.utils.data.TensorDataset(torch.rand(6, 3, 8, 8))
    atlas = build_atlas(half_dead(), data, ["1"], tmp_path, k=2, batch_size=3)
    index = write_pages(atlas).read_text()
    assert "(2 channels, 1 never fire)" in index
    page = (tmp_path / "pages" / "layer-0.html").read_text()
    assert page.count("never fires on these 6 images") == 1
    assert "<b>channel 1</b>: <i>never fires" in page and "<b>channel 0</b>: <i>" not in page
