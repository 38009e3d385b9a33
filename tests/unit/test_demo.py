"""The demo report: self-contained HTML with every section whose feature exists."""

from __future__ import annotations

import io
import re
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from PIL import Image

from convscope.cli import main


@pytest.fixture(scope="module")
def demo_report(shapes_vgg: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo report on three images, made once for this module's tests: its index.html."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    with redirect_stdout(io.StringIO()) as printed:
        assert main(["demo", "--out", str(out), "--images", "3"]) == 0
    page = Path(printed.getvalue().strip().splitlines()[-1])
    assert page == out / "index.html" and page.is_file()
    return page


def test_demo_writes_a_self_contained_report(demo_report: Path) -> None:
    out = demo_report.parent
    html = demo_report.read_text()
    for heading in ("Predictions", "Layer activations", "Max-pool switches and unpooling",
                    "Attribution methods", "Deconvnet projections", "Dataset atlas (features.7, 1000 images)"):
        assert f">{heading}<" in html, heading
    # self-contained: every image is embedded, nothing is fetched from elsewhere
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in html and "https://" not in html
    assert (out / "predictions.png").is_file()
    for kind in ("magnitude", "positive", "relative"):  # one methods sheet per display kind, RISE's on its own
        assert (out / f"methods-{kind}.png").is_file(), kind
    assert "<figcaption>relative maps: rise</figcaption>" in _section(html, "Attribution methods")
    # the model's weights are named
    assert re.search(r'class="subtitle">Model zoo:shapes-vgg, weights: zoo: trained on Shapes', html)


def _section(html: str, heading: str) -> str:
    return html.split(f"<h2>{heading}</h2>", 1)[1].split("</section>", 1)[0]


def test_demo_says_which_map_to_trust(demo_report: Path) -> None:
    import json

    section = _section(demo_report.read_text(), "Which map to trust")
    assert 'href="check/report.html"' in section and (demo_report.parent / "check" / "report.html").is_file()
    state = json.loads((demo_report.parent / "check" / "results.json").read_text())
    assert state["complete"] and state["images"]["done"] == 32
    for method in ("saliency", "guided_backprop", "grad_cam"):  # each method's row, with its mean deletion AUC
        assert f"<td>{method}</td>" in section
        assert f"{state['methods'][method]['deletion']:.3f}" in section
    assert f"scores {state['baselines']['pointing_game']:.3f} in the pointing game" in section


def test_demo_atlas_section_links_to_its_pages_and_shows_readable_cards(demo_report: Path) -> None:
    atlas = _section(demo_report.read_text(), "Dataset atlas (features.7, 1000 images)")
    hrefs = re.findall(r'<a href="([^"]*)"', atlas)
    assert hrefs == ["atlas/pages/index.html"]  # relative: the report folder can move
    assert (demo_report.parent / hrefs[0]).is_file()
    widths = [int(w) for w in re.findall(r'<img src="data:[^"]*" alt="[^"]*" width="(\d+)"', atlas)]
    assert len(widths) == 6 and min(widths) >= 300
    cards = sorted(demo_report.parent.glob("atlas-features.7-c*.png"))
    assert len(cards) == 6
    for card in cards:
        with Image.open(card) as image:
            assert image.width >= 300


def test_atlas_command_is_registered(capsys) -> None:
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["atlas", "--help"])
    assert exit_info.value.code == 0 and "--resume" in capsys.readouterr().out
