"""docs/adding-a-method.md, executed as written: the example method appears in the registry, at the
top level, under the wrappers and in the command line, and computes its documented formula.

Oracle: ``relu(sum_k mean_ij relu(dS/dA_kij) A_k)`` computed here by hand from autograd's gradient
of the layer's output, then resized with ``F.interpolate``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from nets import make, sample
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))
from docs_example import registered_example  # noqa: E402

import convscope  # noqa: E402
from convscope.cli import main  # noqa: E402
from convscope.methods import SmoothGrad, get_method, methods  # noqa: E402

TINY, X = make("tiny_vgg").eval(), sample("tiny_vgg")


@pytest.fixture(autouse=True, scope="module")
def example() -> Iterator[None]:
    """The document's code, registered for this module's tests only."""
    global PositiveGradCAM
    with registered_example("adding-a-method.md") as names:
        PositiveGradCAM = names["PositiveGradCAM"]
        yield


def test_the_example_is_registered_everywhere() -> None:
    assert get_method("positive_grad_cam") is PositiveGradCAM is get_method("PositiveGradCAM")
    assert convscope.PositiveGradCAM is PositiveGradCAM and convscope.methods.PositiveGradCAM is PositiveGradCAM
    assert methods()["positive_grad_cam"].description == "Grad-CAM with the positive gradients averaged"
    assert "PositiveGradCAM" in dir(convscope)


def test_methods_registered_elsewhere_are_gone_with_their_registration() -> None:
    with registered_example("adding-a-method.md"):  # a second registration, then the registry as it was
        assert convscope.PositiveGradCAM is get_method("positive_grad_cam")
    assert get_method("positive_grad_cam") is PositiveGradCAM  # the module fixture's registration stands

def test_the_example_computes_its_formula() -> None:
    layer = "features.4"
    acts = {}
    handle = TINY.get_submodule(layer).register_forward_hook(lambda _m, _i, out: acts.update(a=out))
    try:
        out = TINY(X.clone())
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(out[:, 2].sum(), acts["a"])
    weights = grads.clamp(min=0).mean((2, 3), keepdim=True)
    raw = (weights * acts["a"]).sum(1, keepdim=True).clamp(min=0).detach()
    expected = F.interpolate(raw, size=X.shape[2:], mode="bilinear", align_corners=False)
    got = PositiveGradCAM(TINY, layer).attribute(X, 2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    smooth = SmoothGrad(PositiveGradCAM(TINY, layer), samples=2, noise=0.0).attribute(X, 2)
    torch.testing.assert_close(smooth, expected, rtol=1e-5, atol=1e-6)


def test_the_example_runs_in_the_command_line(shapes_vgg: torch.nn.Module, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from convscope.data import Shapes

    Image.fromarray(Shapes(1, seed=4).sample(0).image).save(tmp_path / "img.png")
    code = main(["explain", "zoo:shapes-vgg", str(tmp_path / "img.png"), "--method", "positive_grad_cam",
                 "--layer", "features.7", "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "out" / "maps.json").read_text())["images"]
    assert meta["img.png"][0]["method"] == "positive_grad_cam" and meta["img.png"][0]["shape"] == [1, 64, 64]
    assert (tmp_path / "out" / "img-positive_grad_cam.png").is_file()
