"""`convscope check`: results.json against the metrics called directly on the same images, a
resumed run equal to an uninterrupted one, the report, and clear errors that lose nothing."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import convscope.check.run as check_run
from convscope import evaluate, zoo
from convscope.check import cli
from convscope.data import Shapes
from convscope.errors import ConvscopeError
from convscope.methods import GradCAM, Saliency


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cli.configure(p)
    return p.parse_args(argv)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, shapes_vgg: torch.nn.Module) -> Path:  # noqa: ARG001
    out = tmp_path_factory.mktemp("check")
    assert cli.run(parse(["zoo:shapes-vgg", "shapes:6", "--methods", "saliency,grad_cam", "--out", str(out),
                          "--batch-size", "4", "--quiet"])) == 0
    return out


def test_results_equal_the_metrics_called_directly(full_run: Path, shapes_vgg: torch.nn.Module) -> None:
    state = json.loads((full_run / "results.json").read_text())
    assert state["complete"] and state["images"]["done"] == 6 and state["version"] == 1
    images, masks, _ = Shapes(6).arrays()
    x = zoo.preset("shapes-vgg").to_tensor(images)
    with torch.no_grad():
        classes = shapes_vgg(x).argmax(1)
    assert state["images"]["classes"] == classes.tolist()
    for name, method in (("saliency", Saliency(shapes_vgg)), ("grad_cam", GradCAM(shapes_vgg))):
        maps = method.attribute(x, classes.tolist())
        per = state["per_image"][name]
        expected = {
            "deletion": evaluate.deletion(shapes_vgg, x, classes, maps, steps=50).auc(),
            "insertion": evaluate.insertion(shapes_vgg, x, classes, maps, steps=50).auc(),
            "pointing_game_strict": evaluate.pointing_game(maps.sum(1, keepdim=True), masks).float(),
            "sparseness": evaluate.sparseness(maps.abs().sum(1)),
            "randomisation": evaluate.model_randomisation(method, x, classes).similarity["ssim"].nanmean(0),
        }
        for metric, values in expected.items():
            np.testing.assert_allclose(per[metric], values.numpy(), atol=1e-4, err_msg=f"{name} {metric}")
        for metric, values in per.items():  # the ranking is the mean of the per-image values
            kept = [v for v in values if v is not None]
            assert state["methods"][name][metric] == pytest.approx(sum(kept) / len(kept))
    centre = evaluate.pointing_game(evaluate.centre_maps(6, 64, 64), masks, tolerance="standard").float().mean()
    assert state["baselines"]["pointing_game"] == pytest.approx(float(centre))
    assert state["randomisation"]["layers"] == ["classifier.4", "classifier.1", "features.6", "features.3", "features.0"]


def test_the_report_shows_the_ranking_curves_and_randomisation(full_run: Path) -> None:
    page = (full_run / "report.html").read_text()
    for text in ("Which map to trust", "Deletion AUC", "centre baseline", "Sanity check: model randomisation",
                 "<svg", "data:image/png;base64"):
        assert text in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained


def test_a_killed_run_resumes_to_the_same_results(tmp_path: Path, full_run: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["zoo:shapes-vgg", "shapes:6", "--methods", "saliency,grad_cam", "--out", str(tmp_path), "--batch-size",
            "4", "--quiet", "--metrics", "deletion,random_logit,relevance_rank"]
    real, calls = check_run._score_batch, []

    def dies_on_the_second_batch(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(check_run, "_score_batch", dies_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        cli.run(parse(argv))
    partial = json.loads((tmp_path / "results.json").read_text())
    assert not partial["complete"] and partial["images"]["done"] == 4
    with pytest.raises(ConvscopeError, match="--resume"):
        cli.run(parse(argv))  # never overwritten without --resume
    assert json.loads((tmp_path / "results.json").read_text()) == partial
    monkeypatch.setattr(check_run, "_score_batch", real)
    assert cli.run(parse([*argv, "--resume"])) == 0
    resumed = json.loads((tmp_path / "results.json").read_text())
    straight = json.loads((full_run / "results.json").read_text())
    assert resumed["complete"] and resumed["images"] == straight["images"]
    for name, per in resumed["per_image"].items():
        for metric, values in per.items():
            np.testing.assert_allclose(np.array(values, dtype=float),
                                       np.array(straight["per_image"][name][metric], dtype=float), atol=1e-6)
    with pytest.raises(ConvscopeError, match="another model, data, method list"):
        cli.run(parse([*argv[:3], "saliency", *argv[4:], "--resume"]))


def test_the_command_says_what_is_wrong_in_one_line_and_exits_2(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "convscope.cli", "check", "zoo:shapes-vgg", "shapes:4", "--methods",
                           "saliency", "--metrics", "delition", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stderr
    assert "unknown metric 'delition'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()  # checked before any work


@pytest.mark.parametrize(("args", "message"), [
    (["shapes:4", "--methods", "salience"], "unknown method 'salience'"),
    (["{empty}", "--methods", "saliency"], "holds no images"),
    (["shapes:4", "--methods", "saliency,saliency"], "named twice"),
    (["shapes:4", "--methods", ","], "no method to check"),
])
def test_mistakes_get_clear_errors(tmp_path: Path, shapes_vgg: torch.nn.Module, args: list[str],  # noqa: ARG001
                                   message: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    argv = ["zoo:shapes-vgg", *[a.format(empty=tmp_path / "empty") for a in args], "--out", str(tmp_path / "out")]
    with pytest.raises(ConvscopeError, match=message):
        cli.run(parse(argv))


def test_data_without_masks_skips_the_localisation_metrics(tmp_path: Path, shapes_vgg: torch.nn.Module) -> None:  # noqa: ARG001
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    images, _, _ = Shapes(3).arrays()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    (folder / "broken.png").write_text("not an image")
    out = tmp_path / "out"
    assert cli.run(parse(["zoo:shapes-vgg", str(folder), "--methods", "saliency", "--metrics",
                          "deletion,pointing_game,sparseness", "--out", str(out), "--quiet"])) == 0
    state = json.loads((out / "results.json").read_text())
    assert state["skipped"] == {"pointing_game": "needs object masks: only the built-in data (shapes:N, scenes:N, ...) has them"}
    assert state["images"]["done"] == 4 and len(state["per_image"]["saliency"]["deletion"]) == 3
    assert state["images"]["unreadable"] == ["broken.png"]
    assert not math.isnan(state["methods"]["saliency"]["sparseness"])


SHARDED = dict(methods=["saliency", "grad_cam"], metrics=["deletion", "random_logit", "pointing_game", "randomisation"],
               batch_size=2)


def _shard_worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from convscope.check import check
    from convscope.models import load_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        check(load_model("zoo:shapes-vgg"), "shapes:5", SHARDED["methods"], SHARDED["metrics"], out,
              batch_size=SHARDED["batch_size"], progress=False)
    finally:
        dist.destroy_process_group()


def test_two_shards_merge_to_the_one_process_run(tmp_path: Path, shapes_vgg: torch.nn.Module) -> None:  # noqa: ARG001
    import torch.multiprocessing as mp

    from convscope.check import check
    from convscope.models import load_model

    mp.spawn(_shard_worker, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path / "sharded")), nprocs=2, join=True)
    single = tmp_path / "single"
    check(load_model("zoo:shapes-vgg"), "shapes:5", SHARDED["methods"], SHARDED["metrics"], single,
          batch_size=SHARDED["batch_size"], progress=False)
    merged = json.loads((tmp_path / "sharded" / "results.json").read_text())
    whole = json.loads((single / "results.json").read_text())
    assert (tmp_path / "sharded" / "results-r0.json").exists() and (tmp_path / "sharded" / "results-r1.json").exists()
    assert merged["complete"] and merged["images"]["index"] == [0, 1, 2, 3, 4]
    for key in ("names", "classes", "done"):
        assert merged["images"][key] == whole["images"][key]
    for method, per in whole["per_image"].items():
        for metric, values in per.items():
            np.testing.assert_allclose(np.array(merged["per_image"][method][metric], dtype=float),
                                       np.array(values, dtype=float), atol=1e-6, err_msg=f"{method} {metric}")
    assert merged["baselines"] == whole["baselines"]
    np.testing.assert_allclose(merged["curves"]["deletion"]["grad_cam"], whole["curves"]["deletion"]["grad_cam"],
                               atol=1e-6)
    assert (tmp_path / "sharded" / "report.html").is_file()


def test_a_method_that_cannot_run_on_the_model_is_refused_before_any_work(tmp_path: Path,
                                                                           shapes_vgg: torch.nn.Module) -> None:
    scripted = tmp_path / "vgg.pt"
    torch.jit.trace(shapes_vgg, torch.zeros(1, 3, 64, 64)).save(str(scripted))
    with pytest.raises(ConvscopeError, match="--method grad_cam"):
        cli.run(parse([str(scripted), "shapes:2", "--methods", "saliency,grad_cam", "--out", str(tmp_path / "out")]))
    assert not (tmp_path / "out").exists()


def test_road_infidelity_and_sensitivity_run_in_check(tmp_path: Path, shapes_vgg: torch.nn.Module) -> None:
    from convscope.check import check
    from convscope.models import load_model

    path = check(load_model("zoo:shapes-vgg"), "shapes:3", ["saliency"], ["road_morf", "infidelity", "max_sensitivity"],
                 tmp_path, progress=False)
    per = json.loads(path.read_text())["per_image"]["saliency"]
    images, _, _ = Shapes(3).arrays()
    x = zoo.preset("shapes-vgg").to_tensor(images)
    with torch.no_grad():
        classes = shapes_vgg(x).argmax(1)
    maps = Saliency(shapes_vgg).attribute(x, classes.tolist())
    np.testing.assert_allclose(per["road_morf"], evaluate.road(shapes_vgg, x, classes, maps).values.mean(1).numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(per["infidelity"], evaluate.infidelity(shapes_vgg, x, classes, maps,
                                                                      normalize=True).numpy(), rtol=1e-4)
    np.testing.assert_allclose(per["max_sensitivity"], evaluate.max_sensitivity(Saliency(shapes_vgg), x,
                                                                                classes).numpy(), rtol=1e-4)
