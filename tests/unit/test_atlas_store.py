"""The atlas store: reopening, checksums, resuming after an interruption, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from nets import TinyVGG
from torch import nn

import convscope
from convscope.atlas import build_atlas, mine
from convscope.atlas.store import MANIFEST
from convscope.errors import ConvscopeError

LAYERS = ["features.0", "features.3"]


def setup(n: int = 40) -> tuple[TinyVGG, torch.utils.data.TensorDataset]:
    torch.manual_seed(0)
    model = TinyVGG().eval()
    return model, torch.utils.data.TensorDataset(torch.randn(n, 3, 16, 16))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[name].equals(b[name]) for name in a)


class Interrupt(Exception):
    pass


def test_store_round_trip(tmp_path: Path) -> None:
    model, data = setup()
    atlas = build_atlas(model, data, LAYERS, tmp_path / "a", k=4, batch_size=8, methods=("deconvnet", "gradient"))
    reopened = convscope.atlas.open(tmp_path / "a")
    reference = mine(model, data, LAYERS, k=4, batch_size=16).results
    for name in LAYERS:
        assert reopened.topk(name).equals(reference[name])
    manifest = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert manifest["k"] == 4 and manifest["layers"] == LAYERS and manifest["convscope_version"]
    assert manifest["model"]["hash"] and manifest["data"]["count"] == 40
    assert atlas.projections("features.3", "gradient").shape == (8, 4, 3, 8, 8)  # largest field: 8 px
    assert atlas.patches("features.0").shape[:2] == (6, 4)


def test_damaged_file_is_never_read_as_valid(tmp_path: Path) -> None:
    model, data = setup(10)
    build_atlas(model, data, LAYERS, tmp_path, k=2, batch_size=5)
    blob = (tmp_path / "topk.npz").read_bytes()
    (tmp_path / "topk.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ConvscopeError, match="checksum"):
        convscope.atlas.open(tmp_path).topk("features.0")


@pytest.mark.parametrize("stop_at", [0, 2, 4])
def test_resume_after_interruption_equals_uninterrupted_run(tmp_path: Path, stop_at: int) -> None:
    model, data = setup()
    whole = mine(model, data, LAYERS, k=3, batch_size=8).results

    def boom(b: int) -> None:
        if b == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        mine(model, data, LAYERS, k=3, batch_size=8, out=tmp_path, checkpoint_every=1, on_batch=boom)
    with pytest.raises(ConvscopeError, match="unfinished"):
        convscope.atlas.open(tmp_path)
    resumed = mine(model, data, LAYERS, k=3, batch_size=8, out=tmp_path, resume=True, checkpoint_every=1)
    assert resumed.batches_run == 5 - (stop_at + 1)  # finished batches are not recomputed
    assert same(resumed.results, whole)


def test_resume_after_kill_9_of_a_real_process(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        torch.set_num_threads(1)
        from nets import TinyVGG
        from convscope.atlas import mine
        torch.manual_seed(0)
        model = TinyVGG().eval()
        data = torch.utils.data.TensorDataset(torch.randn(40, 3, 16, 16))
        mine(model, data, {LAYERS!r}, k=3, batch_size=4, out={str(tmp_path)!r}, checkpoint_every=1,
             on_batch=lambda b: (print(b, flush=True), time.sleep(0.3)))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if int(line) >= 2:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    model, data = setup()
    resumed = mine(model, data, LAYERS, k=3, batch_size=4, out=tmp_path, resume=True)
    assert 0 < resumed.batches_run < 10
    assert same(resumed.results, mine(model, data, LAYERS, k=3, batch_size=4).results)


def test_resume_with_another_model_or_k_is_refused(tmp_path: Path) -> None:
    model, data = setup(16)
    build_atlas(model, data, LAYERS, tmp_path, k=2, batch_size=8)
    other = TinyVGG().eval()
    with pytest.raises(ConvscopeError, match="model") as info:
        mine(other, data, LAYERS, k=2, batch_size=8, out=tmp_path, resume=True)
    assert "--resume" in str(info.value)
    with pytest.raises(ConvscopeError, match="k = 2"):
        mine(model, data, LAYERS, k=3, batch_size=8, out=tmp_path, resume=True)
    with pytest.raises(ConvscopeError, match="per_image = True.*--all-positions"):
        mine(model, data, LAYERS, k=2, batch_size=8, out=tmp_path, resume=True, per_image=False)
    with pytest.raises(ConvscopeError, match="already holds an atlas"):
        mine(model, data, LAYERS, k=2, batch_size=8, out=tmp_path)
    again = build_atlas(model, data, LAYERS, tmp_path, k=2, batch_size=8, resume=True)
    assert again.k == 2


def test_layer_without_spatial_output_is_a_clear_error() -> None:
    model, data = setup(4)
    with pytest.raises(ConvscopeError, match="without spatial positions"):
        mine(model, data, ["classifier.1"], k=2)


def test_unknown_layer_and_empty_folder(tmp_path: Path) -> None:
    model, data = setup(4)
    with pytest.raises(ConvscopeError, match="no layer named"):
        mine(model, data, ["features.99"], k=2)
    (tmp_path / "empty").mkdir()
    pre = convscope.zoo.preset("shapes-vgg")
    with pytest.raises(ConvscopeError, match="holds no images"):
        mine(model, tmp_path / "empty", LAYERS, k=2, preprocess=pre)


def test_unreadable_image_is_skipped_and_listed(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    (folder / "img2.png").write_bytes(b"not a png")
    model, _ = setup()
    pre = convscope.images.Preprocess(size=16, crop=16)
    atlas = build_atlas(model, folder, LAYERS, tmp_path / "out", k=3, batch_size=2, preprocess=pre)
    skipped = atlas.manifest["skipped"]
    assert [(s[0], s[1]) for s in skipped] == [(2, "img2.png")]
    images = atlas.topk("features.3").images
    assert 2 not in images and set(np.unique(images)) <= {0, 1, 3, 4}
    assert atlas.manifest["names"]["3"] == "img3.png"


def test_model_hash_reads_zero_dim_buffers_like_batch_norm_counters() -> None:
    from convscope.atlas.store import model_hash

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # num_batches_tracked is a 0-dim int64 buffer
    before = model_hash(net)
    assert before == model_hash(net)
    net[1].num_batches_tracked += 1
    assert model_hash(net) != before  # every byte of the state dict counts, 0-dim tensors included
