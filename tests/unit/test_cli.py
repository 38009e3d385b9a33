"""The command line: output of the simple commands, and one clear paragraph (no traceback,
exit code != 0) for each kind of bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from nets import convnet_methods
from PIL import Image

from convscope.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_layers_prints_the_tree_with_shapes(shapes_vgg: torch.nn.Module, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "layers", "zoo:shapes-vgg")
    assert code == 0
    line = next(row for row in out.splitlines() if row.strip().startswith("features.2 "))
    assert "MaxPool2d" in line and "1x16x32x32" in line


def test_zoo_list(shapes_vgg: torch.nn.Module, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "zoo", "list")
    assert code == 0 and "shapes-vgg" in out and "held-out accuracy" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["layers", "zoo:shapes-vggg"], "Did you mean 'shapes-vgg'"),
        (["layers", "nonsense"], "cannot tell what kind of model"),
        (["layers", "torchvision:resnet18", "--weights", "missing.pt"], "no such weights file"),
    ],
)
def test_bad_input_gives_one_paragraph_and_nonzero_exit(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert needle in " ".join(err.split()) and "Traceback" not in err
    assert err.startswith("convscope: error:")


def test_wrong_architecture_weights_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), path)
    code, _, err = run_cli(capsys, "layers", "torchvision:resnet18", "--weights", str(path))
    assert code == 2 and "do not fit this architecture" in " ".join(err.split()) and "Traceback" not in err


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    from convscope.errors import ConvscopeError

    with pytest.raises(ConvscopeError):
        main(["--debug", "layers", "nonsense"])


def test_console_script_runs_in_a_fresh_process(shapes_vgg: torch.nn.Module) -> None:
    proc = subprocess.run([sys.executable, "-m", "convscope.cli", "layers", "zoo:shapes-vgg"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "classifier.4" in proc.stdout


def test_import_convscope_imports_no_tensorflow_or_matplotlib() -> None:
    code = ("import sys, convscope, convscope.render, convscope.zoo, convscope.ops; "
            "bad = [m for m in ('tensorflow', 'matplotlib', 'keras', 'torchvision') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def _png(path: Path) -> Path:
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
    return path


def test_project_writes_pngs(shapes_vgg: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from convscope.data import Shapes

    img = tmp_path / "shape.png"
    Image.fromarray(Shapes(1, seed=5).sample(0).image).save(img)
    code, out, err = run_cli(capsys, "project", "zoo:shapes-vgg", str(img), "--layer", "features.4", "--channel", "3",
                             "--top", "2", "--out", str(tmp_path / "p"))
    assert code == 0, err
    written = Path(out.strip().splitlines()[-1])
    assert written.is_file() and Image.open(written).size[0] > 3 * 192


@pytest.mark.parametrize("problem", ["missing", "corrupt", "layer"])
def test_project_bad_input(problem: str, shapes_vgg: torch.nn.Module, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    img = _png(tmp_path / "ok.png")
    layer = "features.4"
    if problem == "missing":
        img = tmp_path / "nope.png"
    elif problem == "corrupt":
        img = tmp_path / "bad.png"
        img.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    else:
        layer = "feature.4"
    code, _, err = run_cli(capsys, "project", "zoo:shapes-vgg", str(img), "--layer", layer, "--channel", "0",
                           "--out", str(tmp_path / "p"))
    text = " ".join(err.split())
    assert code == 2 and "Traceback" not in err
    assert {"missing": "no such image file", "corrupt": "cannot read", "layer": "Did you mean 'features.4'"}[problem] in text


def test_explain_one_method_and_all(shapes_vgg: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from convscope.data import Shapes

    for i in range(2):
        Image.fromarray(Shapes(2, seed=9).sample(i).image).save(tmp_path / f"img{i}.png")
    code, out, err = run_cli(capsys, "explain", "zoo:shapes-vgg", str(tmp_path / "img0.png"), str(tmp_path / "img1.png"),
                             "--method", "grad-cam", "--target", "2", "--out", str(tmp_path / "one"))
    assert code == 0, err
    meta = json.loads((tmp_path / "one" / "maps.json").read_text())
    assert meta["model"]["name"] == "zoo:shapes-vgg" and meta["model"]["weights"].startswith("zoo: trained on Shapes")
    meta = meta["images"]
    assert sorted(meta) == ["img0.png", "img1.png"]
    assert meta["img0.png"][0]["method"] == "grad_cam" and meta["img0.png"][0]["target"] == 2
    assert meta["img0.png"][0]["shape"] == [1, 64, 64]
    assert (tmp_path / "one" / "img1-grad_cam.png").is_file()

    code, out, err = run_cli(capsys, "explain", "zoo:shapes-vgg", str(tmp_path / "img0.png"), "--method", "all",
                             "--out", str(tmp_path / "all"))
    assert code == 0, err
    meta = json.loads((tmp_path / "all" / "maps.json").read_text())["images"]
    assert [m["method"] for m in meta["img0.png"]] == convnet_methods()
    assert (tmp_path / "all" / "img0-all.png").is_file()


def test_explain_with_eigen_smooth_and_aug_smooth(shapes_vgg: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from convscope.data import Shapes
    from convscope.images import load_images
    from convscope.methods import AugSmooth, GradCAM
    from convscope.zoo import preset

    Image.fromarray(Shapes(1, seed=9).sample(0).image).save(tmp_path / "img0.png")
    code, _, err = run_cli(capsys, "explain", "zoo:shapes-vgg", str(tmp_path / "img0.png"), "--method", "grad_cam",
                           "--target", "2", "--eigen-smooth", "--out", str(tmp_path / "smooth"))
    assert code == 0, err
    entry = json.loads((tmp_path / "smooth" / "maps.json").read_text())["images"]["img0.png"][0]
    x = load_images([tmp_path / "img0.png"], preset("shapes-vgg")).tensor
    want = GradCAM(shapes_vgg, eigen_smooth=True).attribute(x, 2)
    assert entry["eigen_smooth"] is True and entry["aug_smooth"] is False
    assert entry["max"] == pytest.approx(float(want.max()), rel=1e-5)
    assert entry["max"] != pytest.approx(float(GradCAM(shapes_vgg).attribute(x, 2).max()), rel=1e-3)
    code, _, err = run_cli(capsys, "explain", "zoo:shapes-vgg", str(tmp_path / "img0.png"), "--method", "grad_cam",
                           "--target", "2", "--aug-smooth", "--eigen-smooth", "--out", str(tmp_path / "both"))
    entry = json.loads((tmp_path / "both" / "maps.json").read_text())["images"]["img0.png"][0]
    want = AugSmooth(GradCAM(shapes_vgg, eigen_smooth=True)).attribute(x, 2)
    assert code == 0 and entry["aug_smooth"] is True and entry["max"] == pytest.approx(float(want.max()), rel=1e-5)
    # a method without the option, asked for alone: a clear error, and nothing written
    code, _, err = run_cli(capsys, "explain", "zoo:shapes-vgg", str(tmp_path / "img0.png"), "--method", "saliency",
                           "--eigen-smooth", "--out", str(tmp_path / "no"))
    assert code == 2 and "--eigen-smooth applies to the CAM methods" in " ".join(err.split())
    assert "Traceback" not in err and not (tmp_path / "no").exists()


def test_explain_occlusion_adaptive(shapes_vgg: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from convscope.data import Shapes
    from convscope.images import load_images
    from convscope.methods import Occlusion
    from convscope.zoo import preset

    Image.fromarray(Shapes(1, seed=9).sample(0).image).save(tmp_path / "img0.png")
    code, _, err = run_cli(capsys, "explain", "zoo:shapes-vgg", str(tmp_path / "img0.png"), "--method", "occlusion",
                           "--target", "2", "--adaptive", "--out", str(tmp_path / "fast"))
    assert code == 0, err
    entry = json.loads((tmp_path / "fast" / "maps.json").read_text())["images"]["img0.png"][0]
    x = load_images([tmp_path / "img0.png"], preset("shapes-vgg")).tensor
    want = Occlusion(shapes_vgg, adaptive=True).attribute(x, 2)
    assert entry["adaptive"] is True and entry["eigen_smooth"] is False
    assert entry["max"] == pytest.approx(float(want.max()), rel=1e-5)
    assert entry["min"] == pytest.approx(float(want.min()), rel=1e-5, abs=1e-7)
    code, _, err = run_cli(capsys, "explain", "zoo:shapes-vgg", str(tmp_path / "img0.png"), "--method", "saliency",
                           "--adaptive", "--out", str(tmp_path / "no"))
    assert code == 2 and "--adaptive applies to occlusion" in " ".join(err.split())
    assert "Traceback" not in err and not (tmp_path / "no").exists()


def test_explain_unknown_method(shapes_vgg: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "explain", "zoo:shapes-vgg", str(_png(tmp_path / "a.png")), "--method", "gradcamm")
    assert code == 2 and "grad_cam" in err and "Traceback" not in err


def test_visualize_and_dream_are_commands(shapes_vgg: torch.nn.Module, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["visualize", "zoo:shapes-vgg", "--layer", "features.3", "--channels", "1", "--steps", "2",
                 "--quiet", "--out", str(tmp_path / "vis")])
    assert code == 0 and (tmp_path / "vis" / "features.3-c1.png").exists()
    code = main(["dream", "zoo:shapes-vgg", str(tmp_path / "vis" / "features.3-c1.png"), "--layer", "features.7",
                 "--steps", "2", "--quiet", "--out", str(tmp_path / "dream.png")])
    assert code == 0 and (tmp_path / "dream.png").exists()
    capsys.readouterr()
    assert main(["visualize", "zoo:shapes-vgg", "--layer", "features.3", "--channels", "99", "--steps", "2",
                 "--quiet", "--out", str(tmp_path / "bad")]) == 2
    assert "channel" in capsys.readouterr().err
