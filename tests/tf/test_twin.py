"""tests/tf/twin.py: the Keras twin computes what the torch model computes, layer by layer.

Oracle: the torch model itself. Its logits and every mapped intermediate output (recorded with
forward hooks, cloned before later in-place ops change them) equal the twin's after the
NCHW -> NHWC transpose (and the (c, h, w) -> (h, w, c) reorder of flattened maps), to 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import keras  # noqa: E402
import torch  # noqa: E402
from nets import SpellingNet, TinyResidual, TinyVGG, random_batch_norms  # noqa: E402
from torch import nn  # noqa: E402
from twin import keras_name, keras_twin, to_nchw, to_nhwc  # noqa: E402

from convscope.zoo.architectures import ShapesResNet, ShapesVGG  # noqa: E402


def torch_outputs(model: nn.Module, x: torch.Tensor, names: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and each named module's output (cloned at once: later in-place ops change it)."""
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, out.detach().clone()))
               for n in names]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, seen


def assert_twin(model: nn.Module, hw: tuple[int, int], n: int = 2) -> dict[str, str]:
    kmodel, names = keras_twin(model, input_hw=hw)
    x = torch.randn(n, 3, *hw, generator=torch.Generator().manual_seed(0))
    logits, seen = torch_outputs(model, x, list(names))
    probe = keras.Model(kmodel.input, [kmodel.get_layer(k).output for k in names.values()])
    kouts = probe(to_nhwc(x), training=False)
    np.testing.assert_allclose(np.asarray(kmodel(to_nhwc(x))), logits.numpy(), atol=1e-5, rtol=1e-5)
    for (tname, kname), kout in zip(names.items(), kouts, strict=True):
        np.testing.assert_allclose(np.asarray(kout), names.to_keras_layout(tname, seen[tname]), atol=1e-5,
                                   rtol=1e-5, err_msg=f"{tname} -> {kname}")
    return names


def test_vgg_every_layer_matches() -> None:
    torch.manual_seed(0)
    names = assert_twin(ShapesVGG().eval(), (64, 64))
    leaves = [n for n, m in ShapesVGG().named_modules() if n and not list(m.children())]
    assert all(names[n] == keras_name(n) for n in leaves)  # every leaf mapped, by its own name
    assert names["features"] == "features_8" and names["classifier"] == "classifier_4"
    assert names.flat_chw == {"classifier.0": (64, 8, 8)}  # the one flatten of a spatial map


def test_resnet_every_layer_matches_with_batchnorm_and_reused_relu() -> None:
    torch.manual_seed(0)
    model = random_batch_norms(ShapesResNet(), seed=3)
    names = assert_twin(model, (32, 32))
    # the reused in-place relu runs twice per block: ambiguous in torch, so not mapped, but each
    # call is its own Keras layer; the block's output is its second call's
    assert "layer1.relu" not in names and names.calls["layer1.relu"] == ["layer1_relu", "layer1_relu_2"]
    assert names["layer1"] == "layer1_relu_2"
    assert {"layer2.downsample.0", "layer3.bn2", "fc", "avgpool"} <= set(names)


@pytest.mark.parametrize("net", [TinyVGG, TinyResidual])
def test_small_test_nets(net: type[nn.Module]) -> None:
    torch.manual_seed(1)
    assert_twin(net().eval(), (16, 16), n=3)


@pytest.mark.parametrize("spelling", ["F.relu_inplace", "Tensor.relu_", "torch.relu", "shared_inplace"])
def test_relu_spellings(spelling: str) -> None:
    """Functional, method and reused-module ReLUs all become ReLU layers (named after their scope)."""
    torch.manual_seed(4)
    names = assert_twin(SpellingNet(spelling).eval(), (8, 8))
    assert names["fc1"] == "fc1" and names.flat_chw == {}  # no flatten module: torch.flatten is a call
    kmodel, _ = keras_twin(SpellingNet(spelling).eval(), (8, 8))
    relus = [layer.name for layer in kmodel.layers if isinstance(layer, keras.layers.ReLU)]
    assert relus == ["relu", "relu_2", "relu_3"]


def test_strided_padded_conv_uses_symmetric_padding() -> None:
    """torch pads a stride-2 conv symmetrically; Keras's padding='same' would not (odd offset)."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    names = assert_twin(model, (16, 16))
    assert names["0"] == "0" and names.flat_chw["3"] == (4, 4, 4)


def test_model_is_unchanged_and_layout_helpers_round_trip() -> None:
    torch.manual_seed(0)
    model = TinyVGG().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    keras_twin(model, input_hw=(16, 16))
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.randn(2, 3, 5, 7)
    assert to_nhwc(x).shape == (2, 5, 7, 3) and torch.equal(to_nchw(to_nhwc(x)), x)


def test_unsupported_module_is_named() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU())
    with pytest.raises(NotImplementedError, match="GELU"):
        keras_twin(model, input_hw=(8, 8))


@pytest.mark.parametrize("fixture", ["shapes_vgg", "shapes_resnet"])
def test_trained_zoo_models(fixture: str, request: pytest.FixtureRequest) -> None:
    """The trained weights (CONVSCOPE_CACHE shares them with the torch half of the suite)."""
    names = assert_twin(request.getfixturevalue(fixture), (64, 64))
    assert len(names) > 10
