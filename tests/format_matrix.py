"""Every README command on one model format, run in-process, with what must come of it.

The table is the README's "Model formats" table: each cell either works (exit 0, its files
written and printed) or is refused before any work (exit 2, nothing written, the first line of
stderr given here); no cell ends in an internal error. The PyTorch formats run in
``tests/unit/test_formats.py``, the Keras ones in ``tests/tf/test_formats_keras.py`` (torchvision
after TensorFlow crashes a process). Sizes are tiny: 2 optimisation steps, ``shapes:8``, ``k=2``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convscope.cli import main

VERBS = ("layers", "explain", "project", "visualize", "dream", "atlas")
HIDDEN = "cannot be used on a TorchScript model"


@dataclass(frozen=True)
class Format:
    """A model argument (``spec`` and ``extra`` options such as ``--weights``) and two of its layers."""

    spec: str
    layer: str  # a convolution, for project, visualize and dream
    atlas_layer: str  # a small early layer, for the atlas
    extra: tuple[str, ...] = ()


def write_image(path: Path, size: int = 40, seed: int = 0) -> Path:
    """A random RGB PNG of ``size`` pixels (the preprocessing resizes it to the model's input)."""
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def argv(verb: str, fmt: Format, image: Path, out: Path) -> list[str]:
    """The command line of ``verb`` on ``fmt``, as small as it goes."""
    model = [fmt.spec, *fmt.extra]
    return {
        "layers": ["layers", *model],
        "explain": ["explain", *model, str(image), "--out", str(out)],
        "project": ["project", *model, str(image), "--layer", fmt.layer, "--channel", "1", "--out", str(out)],
        "visualize": ["visualize", *model, "--layer", fmt.layer, "--channels", "0-1", "--steps", "2", "--quiet",
                      "--out", str(out)],
        "dream": ["dream", *model, str(image), "--layer", fmt.layer, "--steps", "2", "--octaves", "1", "--quiet",
                  "--out", str(out / "dream.png")],
        "atlas": ["atlas", *model, "shapes:8", "--layers", fmt.atlas_layer, "--k", "2", "--batch-size", "8",
                  "--quiet", "--out", str(out)],
    }[verb]


def run(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    """``convscope ARGS`` in this process: exit code, stdout, stderr."""
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def check_works(verb: str, fmt: Format, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                extra: tuple[str, ...] = ()) -> str:
    """Run the cell; assert exit 0 and the files each verb promises; return stderr."""
    out = tmp_path / f"out-{verb}"
    code, printed, err = run(capsys, argv(verb, fmt, write_image(tmp_path / "a.png"), out) + list(extra))
    assert code == 0, err
    assert "internal error" not in err and "Traceback" not in err
    if verb == "layers":
        names = [line.split()[0] for line in printed.splitlines()[2:]]
        assert fmt.layer in names and fmt.atlas_layer in names, printed
        return err
    paths = [Path(p) for p in printed.split()]
    assert paths and all(p.is_file() and p.stat().st_size > 0 for p in paths), printed
    if verb == "explain":
        assert paths[-1].name == "maps.json" and json.loads(paths[-1].read_text())["images"]["a.png"]
    elif verb == "visualize":
        assert [p.name for p in paths] == [f"{fmt.layer}-grid.png", f"{fmt.layer}-c0.png", f"{fmt.layer}-c1.png"]
        height, width, _ = np.asarray(Image.open(paths[1])).shape
        assert height == width >= 16  # the model's crop size
    elif verb == "dream":
        assert paths == [out / "dream.png"]
    elif verb == "atlas":
        assert paths == [out / "pages" / "index.html"]
    return err


def check_refused(verb: str, fmt: Format, first_line: str, fix: str, tmp_path: Path,
                  capsys: pytest.CaptureFixture[str], extra: tuple[str, ...] = ()) -> None:
    """Run the cell; assert exit 2, stderr's first line starting with ``first_line``, ``fix`` in the
    message, and that nothing was written."""
    out = tmp_path / "-".join(["refused", verb, *extra])
    code, printed, err = run(capsys, argv(verb, fmt, write_image(tmp_path / "a.png"), out) + list(extra))
    assert code == 2, err
    assert printed == "" and "internal error" not in err and "Traceback" not in err
    assert err.splitlines()[0].startswith(first_line), err
    assert fix in " ".join(err.split()), err
    assert not out.exists()
