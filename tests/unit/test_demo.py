"""The demo report: self-contained HTML with every section whose feature exists."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from convscope.cli import main


def test_demo_writes_a_self_contained_report(shapes_vgg: torch.nn.Module, tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--images", "3"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    page = Path(printed)
    assert page == out / "index.html" and page.is_file()
    html = page.read_text()
    for heading in ("Predictions", "Layer activations", "Max-pool switches and unpooling",
                    "Attribution methods", "Deconvnet projections", "Dataset atlas (features.7, 1000 images)"):
        assert f">{heading}<" in html, heading
    # self-contained: every image is embedded, nothing is fetched from elsewhere
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in html and "https://" not in html
    assert (out / "predictions.png").is_file() and (out / "methods.png").is_file()


def test_atlas_command_is_registered(capsys) -> None:
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["atlas", "--help"])
    assert exit_info.value.code == 0 and "--resume" in capsys.readouterr().out
