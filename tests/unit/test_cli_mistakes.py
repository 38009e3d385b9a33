"""Ordinary command-line mistakes exit 2 with one paragraph that begins with the problem (never
"internal error"), an ``--out`` that cannot be written is refused before any work, ``--debug``
works before or after the command, and ``--version`` prints the package's version."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.cli import main
from convscope.errors import ConvscopeError

ROOT = Path(__file__).resolve().parents[2]


def png(path: Path) -> Path:
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(path)
    return path


def mistake(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run the command line; it must exit 2 with a paragraph and no traceback. Returns the
    paragraph unwrapped (one line)."""
    code = main(list(args))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err
    return " ".join(err.split())


def test_out_is_an_existing_file(shapes_vgg: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "report").write_text("keep me")
    text = mistake(capsys, "explain", "zoo:shapes-vgg", str(png(tmp_path / "a.png")), "--out", str(tmp_path / "report"))
    assert text.startswith(f"convscope: error: cannot write the folder '{tmp_path / 'report'}': a file of that name "
                           "is there.")
    assert (tmp_path / "report").read_text() == "keep me"


def test_out_under_a_file_is_refused_before_any_work(shapes_vgg: torch.nn.Module, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("")
    out = tmp_path / "notes.txt" / "dream.png"
    text = mistake(capsys, "dream", "zoo:shapes-vgg", str(png(tmp_path / "a.png")), "--layer", "features.4",
                   "--steps", "1", "--out", str(out))
    assert text.startswith(f"convscope: error: cannot write '{out}': '{tmp_path / 'notes.txt'}' is a file, not a folder.")
    assert "render" not in capsys.readouterr().err  # refused before the optimization's progress bar


def test_out_that_is_a_folder_where_a_file_goes(shapes_vgg: torch.nn.Module, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "d.png").mkdir()
    text = mistake(capsys, "dream", "zoo:shapes-vgg", str(png(tmp_path / "a.png")), "--layer", "features.4",
                   "--out", str(tmp_path / "d.png"))
    assert text.startswith(f"convscope: error: cannot write the file '{tmp_path / 'd.png'}': a folder of that name")


@pytest.mark.parametrize(("size", "first", "fix"), [
    ("4", "zoo:shapes-vgg cannot run on a 1x3x4x4 probe input (RuntimeError:",
     "The input is too small for the model: try --input-size 64"),
    ("96", "zoo:shapes-vgg cannot run on a 1x3x96x96 probe input (RuntimeError: mat1 and mat2",
     "Try --input-size 64"),
])
def test_a_probe_size_the_model_cannot_take(size: str, first: str, fix: str, shapes_vgg: torch.nn.Module,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    text = mistake(capsys, "layers", "zoo:shapes-vgg", "--input-size", size)
    assert text.startswith("convscope: error: " + first) and fix in text
    assert main(["layers", "zoo:shapes-vgg", "--input-size", "64"]) == 0  # the size it names works


@pytest.mark.parametrize("args", [["layers", "zoo:shapes-vgg", "--input-size", "0"],
                                  ["layers", "zoo:shapes-vgg", "--input-size", "-3"],
                                  ["demo", "--images", "0"]])
def test_counts_must_be_positive(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(rf"convscope {args[0]}: error: argument --[a-z-]+: '{args[-1]}' is not a positive whole "
                        r"number \(write e\.g\. 64\)", last), last


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_anywhere_on_the_line_shows_the_traceback(where: str) -> None:
    args = ["--debug", "layers", "nonsense"] if where == "before" else ["layers", "nonsense", "--debug"]
    with pytest.raises(ConvscopeError, match="cannot tell what kind of model"):
        main(args)


def test_without_debug_the_same_mistake_is_one_paragraph(capsys: pytest.CaptureFixture[str]) -> None:
    assert mistake(capsys, "layers", "nonsense").startswith("convscope: error: cannot tell what kind of model")


def test_version(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    import convscope

    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert declared and convscope.__version__ == declared[1]  # the checkout's version, where it is declared
    for installed in (True, False):
        if not installed:  # an uninstalled checkout: the package's own version
            def missing(name: str) -> str:
                raise importlib.metadata.PackageNotFoundError(name)

            monkeypatch.setattr(importlib.metadata, "version", missing)
        with pytest.raises(SystemExit) as exit_:
            main(["--version"])
        assert exit_.value.code == 0
        assert capsys.readouterr().out == f"convscope {declared[1]}\n"


def test_version_in_a_fresh_process_without_importing_torch() -> None:
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "convscope.cli", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and re.fullmatch(r"convscope \d+\.\d+\S*\n", proc.stdout), proc
    code = ("import sys\nfrom convscope.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("convscope "), proc.stderr


@pytest.mark.parametrize("option", ["size=abc", "crop=-5", "size=0"])
def test_a_bad_preprocessing_option(option: str, shapes_vgg: torch.nn.Module, capsys: pytest.CaptureFixture[str]) -> None:
    name, value = option.split("=")
    text = mistake(capsys, "layers", f"zoo:shapes-vgg?{option}")
    assert text == (f"convscope: error: {name}='{value}' in 'zoo:shapes-vgg?{option}' is not a positive number of "
                    "pixels. Write e.g. zoo:shapes-vgg?size=256&crop=224.")


def test_project_a_layer_without_positions(shapes_vgg: torch.nn.Module, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A logit has no (y, x): its projection is labelled with its value only."""
    code = main(["project", "zoo:shapes-vgg", str(png(tmp_path / "a.png")), "--layer", "classifier.4",
                 "--channel", "2", "--out", str(tmp_path / "p")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert Path(out.split()[-1]).is_file()


def test_a_cache_folder_that_cannot_be_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cache").write_text("")
    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path / "cache"))
    text = mistake(capsys, "layers", "zoo:shapes-vgg")
    assert text == (f"convscope: error: cannot use '{tmp_path / 'cache'}' as convscope's cache folder (a file is in "
                    "the way). Set CONVSCOPE_CACHE to a folder you can write to.")
