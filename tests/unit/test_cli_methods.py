"""``convscope methods`` lists every registered method with its CLI name, class, options,
frameworks and description; ``explain --help``, the unknown-method error and the README point to
it. Oracle: the registry itself (names, classes, the ``options`` and ``frameworks`` ClassVars)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from convscope.cli import build_parser, main
from convscope.methods import methods

ROOT = Path(__file__).resolve().parents[2]


def test_methods_lists_every_registered_method(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["method", "class", "options", "runs", "on", "description"]
    rows = {line.split()[0]: line for line in lines[1:len(methods()) + 1]}
    assert list(rows) == list(methods())  # registration order, every one
    framework_names = {"torch": "PyTorch", "torchscript": "TorchScript", "tf": "Keras"}
    for name, info in methods().items():
        row = rows[name]
        assert row.split()[1] == info.cls.__name__
        assert row.endswith("  " + info.description)
        options = ", ".join(sorted("--" + o.replace("_", "-") for o in info.cls.options)) or "-"
        frameworks = ", ".join(framework_names[f] for f in info.cls.frameworks)
        assert f"  {options}  " in row and f"  {frameworks}  " in row, row
    assert rows["grad_cam"].split()[2:4] == ["--eigen-smooth,", "--layer"]  # by hand: the CAM options
    assert rows["saliency"].split()[2] == "-"
    assert any("--method all" in line for line in lines[len(methods()) + 1:])


def test_explain_help_points_to_methods() -> None:
    explain = build_parser()._subparsers._group_actions[0].choices["explain"]  # noqa: SLF001
    method = next(a for a in explain._actions if a.dest == "method")  # noqa: SLF001
    assert "`convscope methods`" in method.help


def test_unknown_method_lists_close_names_and_points_to_methods(shapes_vgg: torch.nn.Module, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    import numpy as np

    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    assert main(["explain", "zoo:shapes-vgg", str(image), "--method", "gradcamm"]) == 2
    text = " ".join(capsys.readouterr().err.split())
    assert "Did you mean 'grad_cam'," in text and "`convscope methods` lists every method" in text
    # nothing close: every name, not the first 12
    assert main(["explain", "zoo:shapes-vgg", str(image), "--method", "xyzzy"]) == 2
    text = " ".join(capsys.readouterr().err.split())
    assert all(f"'{name}'" in text for name in methods()) and "`convscope methods`" in text


def test_readme_shows_every_cli_name() -> None:
    text = (ROOT / "README.md").read_text()
    assert "convscope methods" in text
    table = dict(re.findall(r"^\| `([a-z_]+)` \| `([A-Za-z]+)` \|", text, flags=re.M))
    assert table == {name: info.cls.__name__ for name, info in methods().items()}
