"""`convscope atlas` (its configure/run pair) and the HTML pages it writes."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch
from nets import TinyVGG

import convscope
from convscope.atlas import build_atlas, cli, write_pages
from convscope.errors import ConvscopeError


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cli.configure(p)
    return p.parse_args(argv)


def test_cli_on_shapes_writes_store_and_pages(tmp_path: Path, shapes_vgg: torch.nn.Module,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "atlas"
    args = parse(["zoo:shapes-vgg", "shapes:24", "--layers", "features.0,features.6", "--k", "3",
                  "--out", str(out), "--max-batch", "16", "--batch-size", "8"])
    assert cli.run(args) == 0
    index = Path(capsys.readouterr().out.strip())
    assert index == out / "pages" / "index.html"
    atlas = convscope.atlas.open(out)
    assert atlas.manifest["data"]["fingerprint"] == "Shapes(n=24, seed=0, size=64)"
    assert atlas.manifest["model"]["name"] == "zoo:shapes-vgg"
    page = (out / "pages" / "layer-1.html").read_text()
    assert page.count('class="card"') == 64 and page.count('loading="lazy"') == 64
    for src in re.findall(r'src="([^"]+)"', page)[:3]:
        assert (out / "pages" / src).stat().st_size > 0
    # resuming a finished run recomputes nothing and gives the same store
    before = atlas.topk("features.6")
    assert cli.run(parse([*vars_to_argv(args), "--resume"])) == 0
    assert convscope.atlas.open(out).topk("features.6").equals(before)


def vars_to_argv(args: argparse.Namespace) -> list[str]:
    return [args.model, args.data, "--layers", args.layers, "--k", str(args.k), "--out", args.out,
            "--max-batch", str(args.max_batch), "--batch-size", str(args.batch_size)]


def test_bad_layers_and_data_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConvscopeError, match="names no layer"):
        cli.run(parse(["zoo:shapes-vgg", "shapes:4", "--layers", ",", "--out", str(tmp_path)]))
    model = TinyVGG().eval()
    with pytest.raises(ConvscopeError, match="shapes:N"):
        build_atlas(model, "shapes:x", ["features.0"], tmp_path)


def test_pages_show_values_and_image_names(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyVGG().eval()
    data = torch.utils.data.TensorDataset(torch.randn(6, 3, 16, 16))
    atlas = build_atlas(model, data, ["features.3"], tmp_path, k=2, batch_size=3)
    index = write_pages(atlas)
    assert "features.3" in index.read_text()
    page = (tmp_path / "pages" / "layer-0.html").read_text()
    acc = atlas.topk("features.3")
    assert f"{acc.values[0, 0]:.3g} @ #{acc.images[0, 0]}" in page
    assert page.count("<figure") == acc.channels
    assert "(one per image)" in page and all(len(set(row)) == 2 for row in acc.images.tolist())
