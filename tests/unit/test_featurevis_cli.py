"""`convscope visualize` and `convscope dream` through their configure/command pairs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_featurevis_render import one_thread  # noqa: F401 - the module's autouse fixture

from convscope.errors import ConvscopeError
from convscope.featurevis import cli


def parse(configure: Callable[[argparse.ArgumentParser], None], argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    configure(p)
    return p.parse_args(argv)


def test_visualize_writes_a_grid_and_one_png_per_channel(tmp_path: Path, shapes_vgg: torch.nn.Module,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vis"
    args = parse(cli.configure_visualize, ["zoo:shapes-vgg", "--layer", "features.3", "--channels", "0-2,5",
                                           "--out", str(out), "--steps", "4", "--quiet"])
    assert cli.visualize_command(args) == 0
    printed = [Path(line) for line in capsys.readouterr().out.split()]
    assert printed == [out / "features.3-grid.png", *(out / f"features.3-c{c}.png" for c in (0, 1, 2, 5))]
    for path in printed[1:]:
        assert np.asarray(Image.open(path)).shape == (64, 64, 3)
    grid = np.asarray(Image.open(printed[0]))
    assert grid.shape[0] > 2 * 128 and grid.shape[1] > 2 * 128  # 2 x 2 labelled tiles of 128 px


def test_dream_writes_the_dreamt_image(tmp_path: Path, shapes_vgg: torch.nn.Module,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from convscope.data import Shapes

    source = tmp_path / "in.png"
    Image.fromarray(Shapes(1, seed=0).arrays(0, 1)[0][0]).save(source)
    target = tmp_path / "out" / "dream.png"
    args = parse(cli.configure_dream, ["zoo:shapes-vgg", str(source), "--layer", "features.4", "--out", str(target),
                                       "--steps", "3", "--octaves", "2", "--quiet"])
    assert cli.dream_command(args) == 0
    assert Path(capsys.readouterr().out.strip()) == target
    dreamt, original = np.asarray(Image.open(target)), np.asarray(Image.open(source))
    assert dreamt.shape == original.shape and not np.array_equal(dreamt, original)


@pytest.mark.parametrize(("argv", "match"), [
    (["--layer", "features.33", "--channels", "0"], "Did you mean"),
    (["--layer", "features.3", "--channels", "0-99"], "out of range"),
    (["--layer", "features.3", "--channels", "3-1"], "channels"),
    (["--layer", "features.3", "--steps", "0"], "steps"),
])
def test_bad_visualize_arguments_are_clear(argv: list[str], match: str, tmp_path: Path,
                                           shapes_vgg: torch.nn.Module) -> None:
    args = parse(cli.configure_visualize, ["zoo:shapes-vgg", "--steps", "2", *argv, "--out", str(tmp_path), "--quiet"])
    with pytest.raises(ConvscopeError, match=match):
        cli.visualize_command(args)
    assert list(tmp_path.iterdir()) == []  # nothing written on failure


def test_bad_dream_output_is_clear(tmp_path: Path) -> None:
    args = parse(cli.configure_dream, ["zoo:shapes-vgg", "x.png", "--layer", "features.4", "--out", str(tmp_path / "a.jpg")])
    with pytest.raises(ConvscopeError, match="png"):
        cli.dream_command(args)
