"""Keras model files in the CLI: ``convscope layers model.keras``, ``convscope explain model.keras
IMAGE``, ``convscope project model.keras IMAGE``, loading, and bad input.

Oracles: the saved model's own static graph shapes (``layer.output.shape``) and weight counts for
the layer table, the original in-memory model's predictions for the loaded file, the written-out
normalisation formula for the NHWC preprocess, the Python API (``GradCAM(model)``) on a batch the
test normalises itself for ``explain``, and a fresh interpreter without TensorFlow.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import keras  # noqa: E402
from PIL import Image  # noqa: E402

from convscope.cli import main  # noqa: E402
from convscope.errors import ConvscopeError  # noqa: E402
from convscope.images import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from convscope.methods import AugSmooth, GradCAM  # noqa: E402
from convscope.models import load_model  # noqa: E402
from convscope.tf.layers import layer_names, layer_table, probe_for, resolve_layer  # noqa: E402
from convscope.tf.models import KerasPreprocess, LoadedKerasModel  # noqa: E402

L = keras.layers
ROOT = Path(__file__).resolve().parents[2]


def small_model(seed: int = 0) -> keras.Model:
    """16x16x3 -> 5: a nested Sequential block, one ReLU layer called twice, global pooling."""
    keras.utils.set_random_seed(seed)
    block = keras.Sequential([keras.Input((8, 8, 4)), L.Conv2D(6, 3, padding="same", name="conv"),
                              L.MaxPooling2D(2, name="pool")], name="block")
    inp = keras.Input((16, 16, 3), name="image")
    relu = L.ReLU(name="relu")
    x = relu(L.Conv2D(4, 3, padding="same", name="conv1")(inp))
    x = L.MaxPooling2D(2, name="pool1")(x)
    x = relu(block(x))
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(5, name="fc")(x), name="small")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[keras.Model, Path]:
    model = small_model()
    path = tmp_path_factory.mktemp("keras") / "small.keras"
    model.save(path)
    return model, path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())  # the CLI wraps error paragraphs


def test_layers_lists_keras_layers_with_output_shapes(saved: tuple[keras.Model, Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    model, path = saved
    code, out, err = run_cli(capsys, "layers", str(path))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "small.keras  (probe input 1x16x16x3)"
    table = {line.split()[0]: line for line in lines[2:]}
    assert list(table) == ["conv1", "relu", "pool1", "block", "block/conv", "block/pool", "gap", "fc"]
    # expected: the static shapes Keras inferred when the model was built (batch 1)
    for name in ["conv1", "pool1", "block", "gap", "fc"]:
        shape = "x".join(map(str, (1, *model.get_layer(name).output.shape[1:])))
        assert f" {shape} " in table[name] + " ", (name, table[name])
    assert " 1x8x8x6 " in table["block/conv"] and " 1x4x4x6 " in table["block/pool"]
    assert "1x4x4x6  (called 2x)" in table["relu"]  # the last call's shape, and the call count
    assert table["conv1"].split()[-1] == f"{model.get_layer('conv1').count_params():,}"
    assert table["block"].split()[-1] == "0"  # a nested model's weights are listed on its layers
    assert lines[2].startswith("conv1") and table["block/conv"].startswith("  block/conv")  # nesting indented


def test_layers_probe_size_override_on_a_model_without_fixed_size(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    inp = keras.Input((None, None, 3))
    model = keras.Model(inp, L.Conv2D(2, 3, strides=2, name="c")(inp))
    model.save(tmp_path / "any.keras")
    code, out, _ = run_cli(capsys, "layers", str(tmp_path / "any.keras"), "--input-size", "10")
    assert code == 0 and "probe input 1x10x10x3" in out and " 1x4x4x2 " in out  # (10 - 3) // 2 + 1 = 4


def test_loaded_model_predicts_like_the_original_with_nhwc_preprocess(saved: tuple[keras.Model, Path]) -> None:
    model, path = saved
    loaded = load_model(str(path))
    assert isinstance(loaded, LoadedKerasModel) and isinstance(loaded.preprocess, KerasPreprocess)
    assert (loaded.preprocess.size, loaded.preprocess.crop) == (16, 16)  # from the model's input shape
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    x = loaded.preprocess.to_tensor(pixels)
    want = (pixels / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert x.dtype == np.float32 and x.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(loaded.preprocess.to_pixels(x), pixels)
    np.testing.assert_allclose(np.asarray(loaded.model(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)
    resized = load_model(f"{path}?size=20&crop=16")
    assert isinstance(resized.preprocess, KerasPreprocess) and resized.preprocess.size == 20


def test_explain_grad_cam_end_to_end(saved: tuple[keras.Model, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    model, path = saved
    pixels = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)  # the model's size: no resize
    Image.fromarray(pixels).save(tmp_path / "a.png")
    x = ((pixels / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD))[None].astype(np.float32)
    predicted = int(np.argmax(np.asarray(model(x))))
    for extra, target, layer in (([], predicted, None), (["--target", "2", "--layer", "conv1"], 2, "conv1"),
                                 (["--target", "1", "--aug-smooth", "--eigen-smooth"], 1, "smooth")):
        code, out, err = run_cli(capsys, "explain", str(path), str(tmp_path / "a.png"), "--method", "grad_cam",
                                 "--out", str(tmp_path / "out"), *extra)
        assert code == 0, err
        assert out.split() == [str(tmp_path / "out" / "a-grad_cam.png"), str(tmp_path / "out" / "maps.json")]
        meta = json.loads((tmp_path / "out" / "maps.json").read_text())["images"]["a.png"][0]
        method = AugSmooth(GradCAM(model, eigen_smooth=True)) if layer == "smooth" else \
            GradCAM(model, layer) if layer else GradCAM(model)
        cam = np.asarray(method.attribute(x, target=target))[0]
        assert meta["target"] == target and meta["shape"] == [cam.shape[-1], *cam.shape[:-1]]  # NHWC -> CHW
        assert cam.max() > 0
        np.testing.assert_allclose([meta["min"], meta["max"]], [cam.min(), cam.max()], rtol=1e-5, atol=1e-7)
        assert Image.open(tmp_path / "out" / "a-grad_cam.png").size == (16, 16)
    code, _, err = run_cli(capsys, "explain", str(path), str(tmp_path / "a.png"), "--layer", "conv_1",
                           "--out", str(tmp_path / "out"))
    assert code == 2 and "conv_1" in err and "'conv1'" in err  # unknown layer: close names


def test_project_end_to_end(saved: tuple[keras.Model, Path], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    """``convscope project`` on a .keras file: NHWC images, a layer inside a nested model."""
    _, path = saved
    pixels = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    code, out, err = run_cli(capsys, "project", str(path), str(tmp_path / "a.png"), "--layer", "block/conv",
                             "--channel", "2", "--top", "2", "--rule", "guided", "--out", str(tmp_path / "p"))
    assert code == 0, err
    assert out.split() == [str(tmp_path / "p" / "a-block_conv-c2-guided.png")]
    assert Image.open(tmp_path / "p" / "a-block_conv-c2-guided.png").size[0] > 3 * 192  # the image and 2 projections


def test_h5_file_and_keras_weights_file(tmp_path: Path) -> None:
    model = small_model(0)
    model.save(tmp_path / "small.h5")
    other = small_model(1)
    other.save_weights(tmp_path / "other.weights.h5")
    loaded = load_model(str(tmp_path / "small.h5"))
    assert [w.shape for w in loaded.model.get_weights()] == [w.shape for w in model.get_weights()]
    with_weights = load_model(str(tmp_path / "small.h5"), weights=tmp_path / "other.weights.h5")
    for a, b in zip(with_weights.model.get_weights(), other.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ConvscopeError, match="no such weights file"):
        load_model(str(tmp_path / "small.h5"), weights=tmp_path / "missing.weights.h5")


def test_resolve_layer_and_close_names(saved: tuple[keras.Model, Path]) -> None:
    model, _ = saved
    assert layer_names(model) == ["conv1", "relu", "pool1", "block", "block/conv", "block/pool", "gap", "fc"]
    assert resolve_layer(model, "block/conv") is model.get_layer("block").get_layer("conv")
    assert resolve_layer(model, "conv") is model.get_layer("block").get_layer("conv")  # unique bare name
    with pytest.raises(ConvscopeError, match="no layer named 'conv_1'.*Did you mean 'conv1'"):
        resolve_layer(model, "conv_1")
    assert probe_for(model, 12).shape == (1, 12, 12, 3)
    assert [r.output_shape for r in layer_table(model)] == [None] * 8  # no probe: names and types only


def test_bad_files_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "broken.keras"
    garbage.write_bytes(b"this is not a zip archive")
    code, _, err = run_cli(capsys, "layers", str(garbage))
    assert code == 2 and "is not a Keras model file" in err and "model.save('model.keras')" in err
    code, _, err = run_cli(capsys, "layers", str(tmp_path / "missing.keras"))
    assert code == 2 and "no such model file" in err


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)


def test_torch_paths_never_import_tensorflow_and_without_it_the_error_names_the_extra() -> None:
    """A fresh interpreter: the torch side imports no TensorFlow; then TF and Keras are made unimportable."""
    result = run_python("""
        import sys
        import convscope.cli, convscope.explain, convscope.models
        convscope.cli.build_parser()
        assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "TF imported"
        sys.modules["tensorflow"] = None
        sys.modules["keras"] = None
        sys.exit(convscope.cli.main(["layers", "model.keras"]))
    """)
    err = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stderr
    assert "TensorFlow/Keras cannot be imported" in err and "pip install 'convscope[tf]'" in err
