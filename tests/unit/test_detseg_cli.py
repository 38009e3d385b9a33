"""``convscope explain --box`` (detectors) and ``--region`` (segmenters): the box moved from the
picture to the model's crop (hand-computed), the map equal to autograd of a hand-written score
on that crop, the boxes and regions drawn on the pictures, and one clear error per mistake.

The picture is 100x80; with ``?size=64&crop=64`` it is resized to 80x64 and cropped at x = 8..72,
so a picture pixel ``(x, y)`` is ``(x / 1.25 - 8, y / 1.25)`` of the model's input.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from vision_nets import deeplabv3, faster_rcnn

from convscope.cli import main
from convscope.images import Preprocess, load_images
from convscope.regions import to_crop, to_picture
from convscope.render import draw_box

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SPEC = "vision_nets:{}?size=64&crop=64"
WHITE, CYAN = (255, 255, 255), (0, 255, 255)


@pytest.fixture(scope="module", autouse=True)
def one_thread():  # tiny models: one thread is fastest, and immune to a busy machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((80, 100, 3)) * 255).astype(np.uint8)).save(folder / "a.png")
    mask = np.zeros((80, 100), np.uint8)
    mask[20:50, 30:70] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(mask[:40]).save(folder / "small-mask.png")
    return folder


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    _, err = capsys.readouterr()
    return code, " ".join(err.split())


def crop_tensor(files: Path) -> torch.Tensor:
    return load_images([files / "a.png"], Preprocess(size=64, crop=64)).tensor


def test_boxes_move_between_the_picture_and_the_crop_as_computed_by_hand() -> None:
    crop = Preprocess(size=64, crop=64).crop_box(100, 80)
    assert to_crop((51, 0, 79, 54), crop, 64) == pytest.approx((32.8, 0.0, 55.2, 43.2))
    assert to_picture((32.8, 0.0, 55.2, 43.2), crop, 64) == pytest.approx((51, 0, 79, 54))
    assert to_crop((0, 10, 20, 30), crop, 64) == pytest.approx((0.0, 8.0, 8.0, 24.0))  # clipped to the crop


def test_box_explains_the_matched_detection_and_draws_both_boxes(files: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    model = faster_rcnn()
    x = crop_tensor(files)
    with torch.no_grad():
        det = model(x)[0]
    label, found = int(det["labels"][0]), det["boxes"][0].tolist()
    crop = Preprocess(size=64, crop=64).crop_box(100, 80)
    asked = [round(v) for v in to_picture(tuple(found), crop, 64)]
    code, err = run(capsys, "explain", SPEC.format("faster_rcnn"), str(files / "a.png"), "--method", "saliency",
                    "--target", str(label), "--box", ",".join(map(str, asked)), "--out", str(tmp_path))
    assert code == 0, err
    entry = json.loads((tmp_path / "maps.json").read_text())["images"]["a.png"][0]
    assert entry["box"] == asked and entry["matched"]["box"] == pytest.approx(to_picture(tuple(found), crop, 64), abs=0.01)
    leaf = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(leaf)[0]["scores"][0], leaf)  # the best match: detection 0 itself
    assert entry["min"] == pytest.approx(float(grad.min()), rel=1e-5)
    assert entry["max"] == pytest.approx(float(grad.max()), rel=1e-5)
    shown = np.asarray(Image.open(tmp_path / "a-saliency.png").convert("RGB"))
    row = round((asked[1] + asked[3]) / 2)
    left = int(np.ceil(entry["matched"]["box"][0] - 0.5))  # the first column of pixel centres in the box
    assert tuple(shown[row, asked[0]]) == WHITE  # the asked box: one pixel deep, on top
    assert tuple(shown[row, left + 1]) == CYAN  # the matched box: two deep, under it


def test_region_box_is_the_hand_written_sum_of_logits(files: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "explain", SPEC.format("deeplabv3"), str(files / "a.png"), "--method", "saliency",
                    "--target", "2", "--region", "30,20,70,50", "--out", str(tmp_path), "--crop")
    assert code == 0, err
    entry = json.loads((tmp_path / "maps.json").read_text())["images"]["a.png"][0]
    assert entry["region"] == {"box": [30, 20, 70, 50]}
    leaf = crop_tensor(files).requires_grad_()
    # the picture's box 30..70 x 20..50 is 16..48 x 16..40 of the crop: those pixels' centres
    (grad,) = torch.autograd.grad(deeplabv3()(leaf)["out"][0, 2, 16:40, 16:48].sum(), leaf)
    assert entry["min"] == pytest.approx(float(grad.min()), rel=1e-5)
    assert entry["max"] == pytest.approx(float(grad.max()), rel=1e-5)
    shown = np.asarray(Image.open(tmp_path / "a-saliency.png").convert("RGB"))
    assert tuple(shown[16, 30]) == WHITE and tuple(shown[39, 47]) == WHITE  # corners of the box on the crop


def test_region_mask_file(files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "explain", SPEC.format("fcn"), str(files / "a.png"), "--method", "grad_cam",
                    "--target", "1", "--region", str(files / "mask.png"), "--out", str(tmp_path))
    assert code == 0, err
    entry = json.loads((tmp_path / "maps.json").read_text())["images"]["a.png"][0]
    assert entry["region"] == {"mask": "mask.png"} and entry["shape"] == [1, 64, 64]
    shown = np.asarray(Image.open(tmp_path / "a-grad_cam.png").convert("RGB"))
    assert tuple(shown[20, 30]) == WHITE and tuple(shown[49, 69]) == WHITE  # the mask's corners on the picture


@pytest.mark.parametrize(("model", "extra", "needle"), [
    ("faster_rcnn", ["--box", "1,1,20,20"], "--box needs --target CLASS"),
    ("fcn", ["--region", "1,1,20,20"], "--region needs --target CLASS"),
    ("faster_rcnn", ["--target", "1", "--box", "1,1,20,20", "--region", "1,1,20,20"], "exclude each other"),
    ("faster_rcnn", ["--target", "1", "--box", "1,1,20,20", "--aug-smooth"], "--aug-smooth mirrors the images"),
    ("faster_rcnn", ["--target", "1", "--box", "50,10,120,40"], "lies outside 'a.png' (100x80 pixels)"),
    ("faster_rcnn", ["--target", "1", "--box", "0,10,9,40"], "lies outside the part of 'a.png' the model sees"),
    ("faster_rcnn", ["--target", "1", "--box", "10,10,12,12"], "no detection of class 1 matches box"),
    ("fcn", ["--target", "1", "--region", "SMALL"], "is 100x40 pixels but the picture is 100x80"),
    ("coarse_segmenter", ["--target", "1", "--region", "1,1,20,20"],
     "the region mask is 64x64 pixels but the model's output is 16x16"),
    ("fcn", ["--target", "7", "--region", "1,1,20,20"], "class 7 is out of range for a segmenter of 4 classes"),
    ("fcn", ["--target", "1", "--box", "1,1,20,20"], "needs a detector's output, got a dict"),
])
def test_mistakes_are_one_clear_paragraph(model: str, extra: list[str], needle: str, files: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    extra = [str(files / "small-mask.png") if v == "SMALL" else v for v in extra]
    code, err = run(capsys, "explain", SPEC.format(model), str(files / "a.png"), "--method", "saliency", *extra,
                    "--out", str(tmp_path))
    assert code == 2 and needle in err and "Traceback" not in err, err


@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--box", "1,2,3", "is not a box x0,y0,x1,y1"),
    ("--box", "5,5,1,9", "is empty: it needs x0 < x1"),
    ("--region", "no-such-mask.png", "neither a box x0,y0,x1,y1 nor an existing mask file"),
])
def test_malformed_boxes_are_refused_by_the_parser(flag: str, value: str, needle: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["explain", "zoo:shapes-vgg", "a.png", "--target", "1", flag, value])
    assert exit_.value.code == 2 and needle in " ".join(capsys.readouterr().err.split())


def test_draw_box_paints_the_ring_of_pixel_centres_inside() -> None:
    image = np.zeros((6, 8, 3), np.uint8)
    shown = draw_box(image, (1, 1, 6, 5), colour=(9, 9, 9), width=1)
    painted = shown[..., 0] == 9
    expected = np.zeros((6, 8), bool)
    expected[1:5, 1:6] = True
    expected[2:4, 2:5] = False  # columns 1..5, rows 1..4: their ring
    assert (painted == expected).all() and not image.any()
