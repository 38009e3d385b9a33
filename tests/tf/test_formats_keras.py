"""Every README command on the Keras model formats (``.keras`` and ``.h5``): the Keras rows of the
README's "Model formats" table (the PyTorch rows: ``tests/unit/test_formats.py``), and the
feature visualization behind ``visualize`` and ``dream`` on Keras models.

Oracles: the table (each cell works, or is refused before any work with the given first line);
for :class:`~convscope.backends.tf.as_torch.KerasModule`, the PyTorch twin of the Keras model
(``tests/tf/twin.py``: the same weights): its feature visualizations and dreams, made by the
PyTorch code alone, equal the Keras model's, and a gradient through the module equals one taken
with ``tf.GradientTape`` by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import keras  # noqa: E402
import torch  # noqa: E402
from format_matrix import VERBS, Format, check_refused, check_works  # noqa: E402
from nets import TinyVGG  # noqa: E402
from twin import keras_twin, to_nchw, to_nhwc  # noqa: E402

from convscope.errors import ConvscopeError  # noqa: E402
from convscope.featurevis.dream import dream  # noqa: E402
from convscope.featurevis.objectives import channels  # noqa: E402
from convscope.featurevis.render import render  # noqa: E402
from convscope.images import Preprocess  # noqa: E402

L = keras.layers


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small CNN (32 x 32 RGB -> 3 classes) saved as .keras and as .h5."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inp)
    x = L.MaxPooling2D(2, name="pool1")(x)
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="conv2")(x)
    model = keras.Model(inp, L.Dense(3, name="fc")(L.GlobalAveragePooling2D(name="gap")(x)))
    root = tmp_path_factory.mktemp("keras-formats")
    model.save(root / "tiny.keras")
    model.save(root / "tiny.h5")
    return {"keras": root / "tiny.keras", "h5": root / "tiny.h5"}


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("kind", ["keras", "h5"])
def test_keras_files_run_every_command_but_the_atlas(kind: str, verb: str, files: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    fmt = Format(str(files[kind]), "conv2", "conv1")
    if verb == "atlas":
        check_refused(verb, fmt, "convscope: error: the dataset atlas runs on PyTorch models only, and this is a "
                      "Keras model", "`convscope project MODEL IMAGES --layer L --channel C --top K`", tmp_path, capsys)
    else:
        check_works(verb, fmt, tmp_path, capsys)


@pytest.fixture(scope="module")
def twins() -> tuple[torch.nn.Module, keras.Model]:
    torch.manual_seed(0)
    model = TinyVGG().eval()
    kmodel, names = keras_twin(model, input_hw=(16, 16))
    assert names["features.3"] == "features_3"
    return model, kmodel


def test_visualize_a_keras_model_equals_its_pytorch_twin(twins: tuple[torch.nn.Module, keras.Model]) -> None:
    model, kmodel = twins
    options = {"steps": 3, "size": 16, "seed": 3, "progress": False, "preprocess": Preprocess(16, 16)}
    want = render(model, channels("features.3", [0, 5]), **options)
    got = render(kmodel, channels("features_3", [0, 5]), **options)
    torch.testing.assert_close(got.history, want.history, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.images, want.images, rtol=0, atol=1e-4)
    assert (got.images - render(kmodel, channels("features_3", [0, 5]), **{**options, "steps": 1}).images).abs().max() > 0


def test_dream_on_a_keras_model_equals_its_pytorch_twin(twins: tuple[torch.nn.Module, keras.Model]) -> None:
    model, kmodel = twins
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    options = {"octaves": 2, "steps": 3, "lr": 0.05, "progress": False, "input_size": 16}
    want = dream(model, image, "features.3", **options)
    got = dream(kmodel, image, "features_3", **options)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    assert (got - image).abs().max() > 1e-3  # the dream moved


def test_gradient_through_the_keras_module_is_tensorflows(twins: tuple[torch.nn.Module, keras.Model]) -> None:
    from convscope.backends.tf.as_torch import KerasModule

    _, kmodel = twins
    module = KerasModule(kmodel, ["features_3"])
    acts: list[torch.Tensor] = []
    module.get_submodule("features_3").register_forward_hook(lambda _m, _i, out: acts.append(out))
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2), requires_grad=True)
    out = module(x)
    score = out[:, 1].sum() + 0.5 * (acts[0][:, 2] ** 2).sum()  # the output and a recorded layer at once
    (grad,) = torch.autograd.grad(score, x)
    xk = tf.constant(to_nhwc(x))
    probe = keras.Model(kmodel.inputs, [kmodel.outputs[0], kmodel.get_layer("features_3").output])
    with tf.GradientTape() as tape:
        tape.watch(xk)
        k_out, k_act = probe(xk, training=False)
        k_score = tf.reduce_sum(k_out[:, 1]) + 0.5 * tf.reduce_sum(k_act[..., 2] ** 2)
    torch.testing.assert_close(out, to_nchw(k_out), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(acts[0], to_nchw(k_act), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, to_nchw(tape.gradient(k_score, xk)), rtol=1e-4, atol=1e-6)
    with pytest.raises(ConvscopeError, match="no layer named 'feature_3'.*Did you mean 'features_3'"):
        KerasModule(kmodel, ["feature_3"])
    with pytest.raises(ConvscopeError, match="named here by its path without dots, got 'features.3'"):
        KerasModule(kmodel, ["features.3"])  # the PyTorch name
