"""docs/adding-a-method.md, executed as written, on a Keras model: the example method runs on the
Keras twin of a PyTorch model and gives the PyTorch map (transposed to NHWC), alone and wrapped."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))
from docs_example import registered_example  # noqa: E402
from nets import TinyVGG  # noqa: E402
from twin_checks import assert_same, make_pair  # noqa: E402

from convscope.methods import AugSmooth, SmoothGrad  # noqa: E402



def test_the_example_runs_on_keras_as_on_pytorch() -> None:
    with registered_example("adding-a-method.md") as names:
        check_both_frameworks(names["PositiveGradCAM"])


def check_both_frameworks(PositiveGradCAM: type) -> None:  # noqa: N803 - the document's class
    torch.manual_seed(0)
    p = make_pair(TinyVGG(), (16, 16), "features.3", 8)
    assert PositiveGradCAM(p.kmodel).backend.name == "tf"
    for build in (lambda m: PositiveGradCAM(m), lambda m: SmoothGrad(PositiveGradCAM(m), samples=2, noise=0.1),
                  lambda m: AugSmooth(PositiveGradCAM(m))):
        with torch.no_grad():
            classes = p.model(p.x).argmax(1).tolist()
        assert_same(build(p.model).attribute(p.x, classes), build(p.kmodel).attribute(p.xk, classes))
