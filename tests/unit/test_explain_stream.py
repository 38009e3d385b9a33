"""``convscope explain`` over many images: streamed in batches, an index that is true after Ctrl-C,
maps drawn on the whole picture, blank maps named, progress, and one ``--max-batch`` on every verb.

Oracles: the Python API run on all images at once (streaming changes no map), the files on disk
(the index lists exactly them), hand-computed crop boxes of non-square pictures and the picture's
own pixels outside them, Grad-CAM computed directly (all zero on a Shapes ring), and PIL's resize.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convscope import images, render
from convscope.cli import build_parser, main
from convscope.cliargs import parse_max_batch
from convscope.data import Shapes
from convscope.explain import blank_reason, explain
from convscope.images import CropBox, ImageStream, Preprocess, load_images
from convscope.methods import GradCAM, Method, Occlusion
from convscope.models import load_model

RING = 8  # Shapes(200, seed=0)[8]: a ring whose default Grad-CAM on zoo:shapes-vgg is all zero


def shapes(folder: Path, n: int, seed: int = 9) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"s{i}.png")
        Image.fromarray(Shapes(n, seed=seed).sample(i).image).save(paths[-1])
    return paths


def listed(index: dict) -> set[str]:
    """Every PNG the index names: the maps, LRP's conservation charts, the sheets."""
    entries = [e for found in index["images"].values() for e in found]
    return ({e["png"] for e in entries} | {e["conservation"]["png"] for e in entries if "conservation" in e}
            | set(index["sheets"].values()))


def test_streamed_batches_give_the_maps_of_one_big_batch(shapes_vgg: torch.nn.Module, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    paths = shapes(tmp_path / "in", 5)
    seen: list[int] = []
    attribute = GradCAM.attribute
    monkeypatch.setattr(GradCAM, "attribute", lambda self, x, *a, **k: seen.append(len(x)) or attribute(self, x, *a, **k))
    explain(load_model("zoo:shapes-vgg"), paths, target=2, out=tmp_path / "out", max_batch=2, crop=True)
    assert seen == [2, 2, 1]  # three batches of at most max_batch images
    index = json.loads((tmp_path / "out" / "maps.json").read_text())
    monkeypatch.undo()
    x = load_images(paths, load_model("zoo:shapes-vgg").preprocess).tensor
    want = GradCAM(shapes_vgg).attribute(x, 2)  # all five at once
    assert index["complete"] is True and list(index["images"]) == [p.name for p in paths]
    for i, p in enumerate(paths):
        entry = index["images"][p.name][0]
        assert entry["max"] == pytest.approx(float(want[i].max()), rel=1e-5, abs=1e-7)
    assert listed(index) == {p.name for p in (tmp_path / "out").glob("*.png")}


@pytest.mark.parametrize("method", ["grad_cam", "all"])
def test_ctrl_c_leaves_an_index_of_exactly_the_pngs_on_disk(method: str, shapes_vgg: torch.nn.Module, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Interrupted in the middle of the second batch: with ``all``, by a method (Occlusion, after the
    gradient and noise methods have written their PNGs); with one method, while writing PNGs."""
    every = method == "all"
    paths = shapes(tmp_path / "in", 3 if every else 5)
    out = tmp_path / "out"
    if not every:  # a complete earlier run in the same folder: its PNGs must not linger
        assert main(["explain", "zoo:shapes-vgg", str(tmp_path / "in"), "--method", "saliency", "--out", str(out)]) == 0
        assert len(list(out.glob("*.png"))) == 5
    monkeypatch.setattr(images, "IMAGES_PER_BATCH", 1 if every else 2)
    calls = []
    if every:
        attribute = Occlusion.attribute

        def interrupted(self: Method, *args: object, **kwargs: object) -> object:
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return attribute(self, *args, **kwargs)

        monkeypatch.setattr(Occlusion, "attribute", interrupted)
    else:
        save_png = render.save_png

        def interrupted_save(path: Path, image: np.ndarray) -> Path:
            calls.append(Path(path).name)
            if len(calls) == 4:  # s3, the second PNG of the second batch
                raise KeyboardInterrupt
            return save_png(path, image)

        monkeypatch.setattr(render, "save_png", interrupted_save)
    code = main(["explain", "zoo:shapes-vgg", str(tmp_path / "in"), "--method", method, "--out", str(out)])
    assert code == 130 and "interrupted" in capsys.readouterr().err
    index = json.loads((out / "maps.json").read_text())
    on_disk = {p.name for p in out.glob("*.png")}
    assert index["complete"] is False and listed(index) == on_disk
    assert not list(out.glob(".*.tmp"))  # no half-written file
    if every:  # the first image with its sheet; the second image's maps made before Occlusion
        assert index["sheets"] == {"s0.png": "s0-all.png"} and list(index["images"]) == ["s0.png", "s1.png"]
        assert len(index["images"]["s0.png"]) > 20 and "s1-saliency.png" in on_disk
        assert [e["method"] for e in index["images"]["s1.png"]][-1] == "gradient_shap"  # the one before occlusion
    else:  # the first batch and the first PNG of the second; the earlier run's PNGs are gone
        assert on_disk == {"s0-grad_cam.png", "s1-grad_cam.png", "s2-grad_cam.png"}


def test_maps_are_drawn_on_the_whole_picture(shapes_vgg: torch.nn.Module, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (48, 96, 3), dtype=np.uint8)  # 96 wide, 48 high
    Image.fromarray(picture).save(tmp_path / "wide.png")
    # hand-computed: shorter side 48 -> 64 (x 4/3), so 128 x 64, crop x = 32..96 = 24..72 in the picture
    assert Preprocess(size=64, crop=64).crop_box(96, 48) == CropBox(24.0, 0.0, 72.0, 48.0, 96, 48)
    explain(load_model("zoo:shapes-vgg"), [tmp_path / "wide.png"], method="saliency", out=tmp_path / "out")
    shown = np.asarray(Image.open(tmp_path / "out" / "wide-saliency.png"))
    assert shown.shape == picture.shape
    np.testing.assert_array_equal(shown[:, :24], picture[:, :24])  # outside the crop: the picture itself
    np.testing.assert_array_equal(shown[:, 72:], picture[:, 72:])
    assert (shown[:, 24:72] != picture[:, 24:72]).mean() > 0.5  # inside: the map
    index = json.loads((tmp_path / "out" / "maps.json").read_text())
    assert index["view"] == "picture" and index["crops"]["wide.png"] == [24.0, 0.0, 72.0, 48.0]
    explain(load_model("zoo:shapes-vgg"), [tmp_path / "wide.png"], method="saliency", out=tmp_path / "crop", crop=True)
    assert Image.open(tmp_path / "crop" / "wide-saliency.png").size == (64, 64)
    assert json.loads((tmp_path / "crop" / "maps.json").read_text())["view"] == "crop"


def test_crop_box_of_a_tall_picture_matches_the_pixels_the_model_sees(tmp_path: Path) -> None:
    # 256 wide, 512 high: resized to 64 x 128, crop rows 32..96 = rows 128..384 of the picture
    picture = np.zeros((512, 256, 3), np.uint8)
    picture[128:384] = 200
    Image.fromarray(picture).save(tmp_path / "tall.png")
    pre = Preprocess(size=64, crop=64)
    batch = load_images(tmp_path / "tall.png", pre)
    assert batch.boxes == [CropBox(0.0, 128.0, 256.0, 384.0, 256, 512)]
    crop = batch.pixels[0].astype(int)
    assert (crop[1:-1] == 200).all() and crop[0].min() > 150 and crop[-1].min() > 150  # edge rows: a little blur
    resized = np.asarray(Image.fromarray(picture).resize((64, 128), Image.BILINEAR)).astype(int)
    assert (resized[:30] < 50).all() and (resized[98:] < 50).all()  # what lies outside the box is dark


def test_a_blank_map_is_named_in_the_index_the_picture_and_on_stderr(shapes_vgg: torch.nn.Module, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    ring = Shapes(200, seed=0).sample(RING).image
    Image.fromarray(ring).save(tmp_path / "ring.png")
    x = load_images(tmp_path / "ring.png", load_model("zoo:shapes-vgg").preprocess).tensor
    predicted = int(shapes_vgg(x).argmax(1))
    assert float(GradCAM(shapes_vgg).attribute(x, predicted).abs().max()) == 0.0  # the oracle: blank
    code = main(["explain", "zoo:shapes-vgg", str(tmp_path / "ring.png"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 0
    entry = json.loads((tmp_path / "out" / "maps.json").read_text())["images"]["ring.png"][0]
    assert entry["blank"] == "all zero: nothing positive at this layer for this class"
    assert err.count("is blank") == 1 and "ring.png" in err and "at layer features" in err
    shown = np.asarray(Image.open(tmp_path / "out" / "ring-grad_cam.png"))
    assert shown.shape[0] > 64  # a caption band below the picture
    np.testing.assert_array_equal(shown[:64, :64], ring)  # no evidence: the plain picture


def test_blank_reason() -> None:
    assert blank_reason(torch.zeros(1, 4, 4), cam=False).startswith("all zero: the score does not respond")
    assert blank_reason(torch.full((3, 4, 4), 0.5), cam=True).startswith("constant (0.5 everywhere)")
    assert blank_reason(torch.eye(4)[None], cam=True) is None


def test_progress_counts_images(shapes_vgg: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = shapes(tmp_path / "in", 3)
    explain(load_model("zoo:shapes-vgg"), paths, out=tmp_path / "out", max_batch=2, progress=True)
    err = capsys.readouterr().err
    assert "explain" in err and "3/3" in err
    explain(load_model("zoo:shapes-vgg"), paths, out=tmp_path / "quiet", progress=False)
    assert "explain" not in capsys.readouterr().err


def test_image_stream_reads_a_batch_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = shapes(tmp_path, 5)
    (tmp_path / "zbad.png").write_bytes(b"not a png")
    opened: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda f, *a, **k: opened.append(Path(f).name) or real_open(f, *a, **k))
    stream = ImageStream(tmp_path, Preprocess(size=64, crop=64), batch_size=2, skip_bad=True)
    assert len(stream) == 6
    first = next(iter(stream))
    assert first.names == ["s0.png", "s1.png"] and opened == ["s0.png", "s1.png"]  # nothing read ahead
    names = [b.names for b in stream]
    assert names == [["s0.png", "s1.png"], ["s2.png", "s3.png"], ["s4.png"]]
    assert [Path(p).name for p, _ in stream.skipped] == ["zbad.png"]


@pytest.mark.parametrize("verb", [
    ["explain", "zoo:shapes-vgg", "a.png"], ["project", "zoo:shapes-vgg", "a.png", "--layer", "l", "--channel", "0"],
    ["atlas", "zoo:shapes-vgg", "shapes:4", "--layers", "l", "--out", "o"],
    ["visualize", "zoo:shapes-vgg", "--layer", "l", "--out", "o"], ["dream", "zoo:shapes-vgg", "a.png", "--layer",
                                                                    "l", "--out", "o.png"]])
def test_every_verb_takes_the_same_max_batch(verb: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(verb).max_batch == "auto"  # the default
    assert parser.parse_args([*verb, "--max-batch", "8"]).max_batch == 8
    assert parser.parse_args([*verb, "--max-batch", "AUTO"]).max_batch == "auto"
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([*verb, "--max-batch", "0"])
    assert exit_info.value.code == 2 and "neither a positive whole number nor 'auto'" in capsys.readouterr().err


def test_parse_max_batch() -> None:
    assert parse_max_batch("auto") == "auto" and parse_max_batch("16") == 16
    for bad in ("0", "-3", "1.5", "lots"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_max_batch(bad)


def test_dream_on_the_whole_picture(shapes_vgg: torch.nn.Module, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (48, 96, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    resized = np.asarray(Image.open(tmp_path / "wide.png").resize((128, 64), Image.BILINEAR))  # shorter side 64
    common = ["--layer", "features.4", "--steps", "2", "--octaves", "1", "--quiet"]
    # zoo:shapes-vgg takes 64 x 64 only: its crop (x = 32..96 of the resized picture) is dreamt and pasted back
    assert main(["dream", "zoo:shapes-vgg", str(tmp_path / "wide.png"), *common, "--out", str(tmp_path / "d.png")]) == 0
    dreamt = np.asarray(Image.open(tmp_path / "d.png"))
    assert dreamt.shape == (64, 128, 3)
    np.testing.assert_array_equal(dreamt[:, :32], resized[:, :32])
    np.testing.assert_array_equal(dreamt[:, 96:], resized[:, 96:])
    assert (dreamt[:, 32:96] != resized[:, 32:96]).any()
    assert main(["dream", "zoo:shapes-vgg", str(tmp_path / "wide.png"), *common, "--crop",
                 "--out", str(tmp_path / "c.png")]) == 0
    assert Image.open(tmp_path / "c.png").size == (64, 64)
    # a model with adaptive pooling takes the whole picture: every part of it is dreamt
    assert main(["dream", "nets:TinyResidual", str(tmp_path / "wide.png"), "--layer", "layer1", "--steps", "2",
                 "--octaves", "1", "--quiet", "--out", str(tmp_path / "r.png")]) == 0, capsys.readouterr().err
    whole = np.asarray(Image.open(tmp_path / "r.png"))
    assert whole.shape == (256, 512, 3)  # ImageNet preset: shorter side 256
    assert (whole[:, :64] != np.asarray(Image.open(tmp_path / "wide.png").resize((512, 256), Image.BILINEAR))[:, :64]).any()


def test_files_per_batch_follow_max_batch() -> None:
    from convscope.images import IMAGES_PER_BATCH, images_per_batch

    assert images_per_batch("auto") == IMAGES_PER_BATCH == images_per_batch(None) == 16
    assert images_per_batch(3) == 3 and images_per_batch(10_000) == 16


def test_atlas_projections_show_progress_and_auto_batches_change_nothing(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from nets import TinyVGG

    from convscope.atlas import build_atlas

    torch.manual_seed(0)
    model = TinyVGG().eval()
    data = torch.utils.data.TensorDataset(torch.randn(6, 3, 16, 16))
    auto = build_atlas(model, data, ["features.3"], tmp_path / "auto", k=2, batch_size=3, max_batch="auto",
                       progress=True)
    err = capsys.readouterr().err
    acc = auto.topk("features.3")
    steps = len({tuple(u) for u in acc.coords().reshape(-1, 2).tolist()}) + 8 * 2  # the units, then 8 channels x k
    assert "atlas features.3" in err and f"{steps}/{steps}" in err
    fixed = build_atlas(model, data, ["features.3"], tmp_path / "fixed", k=2, batch_size=3, max_batch=3)
    np.testing.assert_allclose(auto.projections("features.3"), fixed.projections("features.3"), rtol=1e-4, atol=1e-7)


def test_the_predicted_class_comes_from_the_attribution_pass(tmp_path: Path) -> None:
    """Without a target, Grad-CAM predicts and explains in one forward pass per batch; the
    classes recorded are the model's own argmax (oracle: a separate forward pass)."""
    loaded = load_model("zoo:shapes-vgg")
    images = Shapes(3, seed=4).arrays()[0]
    files = []
    for i, pixels in enumerate(images):
        files.append(tmp_path / f"s{i}.png")
        Image.fromarray(pixels).save(files[-1])
    with torch.no_grad():
        expected = loaded.model(loaded.preprocess.to_tensor(images)).argmax(1).tolist()
    calls: list[int] = []
    handle = loaded.model.register_forward_hook(lambda _m, inputs, _o: calls.append(int(inputs[0].shape[0])))
    try:
        # a given layer: no default-layer probe, so every pass the model sees is counted here
        explain(loaded, files, method="grad_cam", layer="features.7", out=tmp_path / "out", max_batch=None)
    finally:
        handle.remove()
    assert calls == [3]  # one pass for the batch: no separate prediction pass
    meta = json.loads((tmp_path / "out" / "maps.json").read_text())["images"]
    assert [meta[f.name][0]["target"] for f in files] == expected
