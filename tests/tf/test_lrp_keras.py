"""LRP on Keras models: the PyTorch maps on the Keras twins, conservation, refusals, scoping, the CLI.

Oracles: the PyTorch LRP on the original model (tests/tf/twin.py builds the twin: the same
weights, NHWC; every map equal to 1e-4 of its largest magnitude, as in tests/tf/twin_checks.py);
the identity ``sum(input relevance) == logit`` of a bias-free net with stabiliser-free rules
(Keras layers the twin converter has no form for: depthwise convolutions, concatenations, nested
models, fused activations); the hand-computed rule table of tests/unit/test_lrp_rules.py, run with
the TensorFlow operations; the Python API for the CLI's maps.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402
from twin import keras_name  # noqa: E402
from twin_checks import Pair, assert_same, make_pair  # noqa: E402

from convscope.cli import main  # noqa: E402
from convscope.errors import ConvscopeError  # noqa: E402
from convscope.images import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from convscope.methods import Saliency  # noqa: E402
from convscope.methods.lrp import COMPOSITES, LRP, AlphaBeta, Composite, Epsilon, Layer, Norm, WSquare, composite  # noqa: E402
from convscope.methods.lrp.keras.graph import keras_canon  # noqa: E402
from convscope.methods.lrp.keras.ops import TF  # noqa: E402

L = keras.layers
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vgg(shapes_vgg: nn.Module) -> Pair:
    return make_pair(shapes_vgg, (64, 64), "features.3", 32, samples=1)


@pytest.fixture(scope="module")
def resnet(shapes_resnet: nn.Module) -> Pair:
    return make_pair(shapes_resnet, (32, 32), "layer2", 32, samples=1)


@pytest.mark.parametrize("name", ["vgg", "resnet"])
def test_every_composite_on_the_twins_gives_the_pytorch_maps(name: str, request: pytest.FixtureRequest) -> None:
    """The five named composites (the box rule's bounds: the inputs' [0, 1]; several targets in one pass:
    tests/tf/test_registry_conformance.py);
    the twin folds the batch norms the PyTorch mode folds (ResNet), under the twin's layer names."""
    p: Pair = request.getfixturevalue(name)
    for key in COMPOSITES:
        rules = composite(key, low=0.0, high=1.0)
        theirs, ours = LRP(p.model, composite=rules), LRP(p.kmodel, composite=rules)
        assert_same(theirs.attribute(p.x, 3), ours.attribute(p.xk, 3))
        assert sorted(ours.last_folds) == sorted((keras_name(a), keras_name(b)) for a, b in theirs.last_folds)
    assert (len(ours.last_folds), len(keras_canon(p.kmodel).merges)) == ((0, 3) if name == "vgg" else (9, 7))


def test_a_users_mapping_by_name_and_keras_class_gives_the_pytorch_maps(vgg: Pair) -> None:
    base = Composite(conv=Epsilon(0.01), linear=Epsilon(), first=WSquare())
    theirs = base.with_layers({"features.3": AlphaBeta(2, 1), nn.Linear: Epsilon(0.5)})
    ours = base.with_layers({"features_3": AlphaBeta(2, 1), L.Dense: Epsilon(0.5)})
    assert_same(LRP(vgg.model, composite=theirs).attribute(vgg.x, 2), LRP(vgg.kmodel, composite=ours).attribute(vgg.xk, 2))
    with pytest.raises(ConvscopeError, match="features_33.*features_3"):
        LRP(vgg.kmodel, composite=base.with_layers({"features_33": Epsilon()})).attribute(vgg.xk, 2)


def _rules_test_module() -> object:
    spec = importlib.util.spec_from_file_location("lrp_rules_table", TESTS / "unit" / "test_lrp_rules.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_each_rule_in_tensorflow_equals_the_hand_computed_formula() -> None:
    table = _rules_test_module()
    w, b = tf.constant(table.W.numpy()), tf.constant(table.B.numpy())
    def linear(v: tf.Tensor, w: tf.Tensor, b: tf.Tensor | None) -> tf.Tensor:
        out = tf.matmul(v, w, transpose_b=True)
        return out if b is None else out + b

    layer = Layer(linear, w, b, ops=TF)
    for name, (rule, expected) in table.HAND.items():
        found = rule.relevance(layer, tf.constant(table.X.numpy()), tf.constant(table.R.numpy()))
        np.testing.assert_allclose(np.asarray(found), [expected], rtol=1e-6, atol=1e-6, err_msg=name)


def bias_free_net(seed: int = 0) -> keras.Model:
    """12x12x3 -> 5 without any bias: a padding merged into its convolution, batch norms folded into
    a convolution, a depthwise convolution and a dense layer, a fused ReLU, a residual Add, a
    Concatenate, average and max pooling, a nested Sequential, global pooling, dropout."""
    keras.utils.set_random_seed(seed)
    free = {"use_bias": False}
    inp = keras.Input((12, 12, 3), name="image")
    x = L.ReLU(name="relu1")(L.BatchNormalization(name="bn1")(L.Conv2D(6, 3, name="conv1", **free)(
        L.ZeroPadding2D(1, name="pad1")(inp))))
    a = L.Activation("relu", name="relu2")(L.BatchNormalization(name="bn2")(
        L.DepthwiseConv2D(3, padding="same", name="depthwise", **free)(x)))
    b = L.Conv2D(6, 1, activation="relu", name="conv2", **free)(x)
    x = L.Add(name="add")([a, b])
    x = L.Concatenate(name="cat")([x, L.Conv2D(4, 3, padding="same", name="conv3", **free)(x)])
    x = L.MaxPooling2D(2, name="max")(L.AveragePooling2D(2, name="avg")(x))
    block = keras.Sequential([keras.Input((3, 3, 10)), L.Conv2D(8, 1, name="conv4", **free),
                              L.BatchNormalization(name="bn4")], name="block")
    x = L.GlobalAveragePooling2D(name="gap")(L.ReLU(name="relu4")(block(x)))
    x = L.Dropout(0.5, name="drop")(L.ReLU(name="relu5")(L.BatchNormalization(name="bn5")(
        L.Dense(16, name="fc1", **free)(x))))
    model = keras.Model(inp, L.Dense(5, name="fc2", **free)(x), name="bias_free")
    rng = np.random.default_rng(seed)
    for layer in [model.get_layer("bn1"), model.get_layer("bn2"), block.get_layer("bn4"), model.get_layer("bn5")]:
        n = layer.gamma.shape[0]
        layer.set_weights([rng.uniform(0.5, 1.5, n), np.zeros(n), np.zeros(n), rng.uniform(0.5, 2.0, n)])
    return model


LRP0 = Composite(conv=Epsilon(1e-12), linear=Epsilon(1e-12), pool=Norm(1e-12), sum=Norm(1e-12), name="lrp0")


def test_input_relevance_equals_the_logit_without_biases_and_stabilisers() -> None:
    """LRP-0 at every layer and Zennit's epsilon_plus_flat with tiny stabilisers conserve exactly, at
    the input and at the sum every path crosses; a batch-norm shift breaks it (the fold reads it)."""
    model = bias_free_net()
    canon = keras_canon(model)
    assert canon.report.folds == [("conv1", "bn1"), ("depthwise", "bn2"), ("block/conv4", "block/bn4"), ("fc1", "bn5")]
    assert canon.merges == [("pad1", "conv1")] and canon.report.sums == ["add"] and not canon.report.unhandled
    assert canon.report.concatenations == ["cat"] and canon.report.pools == ["avg", "gap"]
    x = np.random.default_rng(3).normal(size=(2, 12, 12, 3)).astype(np.float32)
    logits = np.asarray(model(x))
    top = logits.argmax(1)
    rows = np.arange(2)
    plus = composite("epsilon_plus_flat", epsilon=1e-12, stabilizer=1e-12)
    for rules in (LRP0, plus):
        method = LRP(model, composite=rules)
        for wrt in (None, "add"):
            sums = np.asarray(method.attribute(x, list(top), wrt=wrt)).reshape(2, -1).sum(1)
            np.testing.assert_allclose(sums, logits[rows, top], rtol=1e-4)
    bn = model.get_layer("bn5")
    bn.beta.assign(np.random.default_rng(4).normal(0, 0.5, bn.beta.shape[0]))
    shifted = np.asarray(LRP(model, composite=LRP0).attribute(x, list(top))).reshape(2, -1).sum(1)
    drift = np.abs(shifted / np.asarray(model(x))[rows, top] - 1)
    assert drift.max() > 1e-3


def test_layers_without_a_rule_are_refused_up_front_never_silently_wrong() -> None:
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="conv")(inp)
    x = L.Lambda(lambda t: t * 2, name="double")(x)
    x = keras.ops.sin(x)
    out = L.Dense(3, activation="softmax", name="probs")(L.Flatten()(x))
    model = keras.Model(inp, out)
    x0 = np.zeros((1, 8, 8, 3), np.float32)
    with pytest.raises(ConvscopeError, match=r"3 operation.*double \(Lambda\).*Sin.*probs \(softmax activation: LRP explains logits"):
        LRP(model).attribute(x0, 0)
    assert "call" not in vars(model.get_layer("conv"))  # refused before any work

    class Subclassed(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.dense = L.Dense(2)

        def call(self, t: tf.Tensor) -> tf.Tensor:
            return self.dense(tf.sin(t))

    with pytest.raises(ConvscopeError, match="subclassed.*keras.Model\\(inputs, outputs\\)"):
        LRP(Subclassed()).attribute(np.zeros((1, 4), np.float32), 0)
    with pytest.raises(ConvscopeError, match="rule for sums"):
        LRP(bias_free_net(), composite=Composite(conv=Epsilon(), linear=Epsilon(), sum=WSquare())).attribute(
            np.zeros((1, 12, 12, 3), np.float32), 0)


def _state(model: keras.Model) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_weights()]


def test_model_weights_and_input_untouched_also_when_the_forward_raises() -> None:
    inp = keras.Input((None, None, 3))
    hidden = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, name="conv")(inp))
    model = keras.Model(inp, L.Dense(2, name="fc")(L.Reshape((64,))(L.ReLU()(hidden))))
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype(np.float32)
    with tf.GradientTape() as tape:  # the plain gradient, before any LRP
        xt = tf.constant(x)
        tape.watch(xt)
        before_grad = tape.gradient(model(xt)[:, 1], xt)
    weights, x0, relu = _state(model), x.copy(), tf.nn.relu
    assert LRP(model, composite="epsilon_plus").attribute(x, 1, wrt="bn").shape == (2, 4, 4, 4)
    with pytest.raises(ConvscopeError, match="forward pass failed"):  # 6x6x4 maps do not reshape to 64
        LRP(model, composite="epsilon_alpha2_beta1").attribute(np.zeros((1, 8, 8, 3), np.float32), 0)
    for after in (_state(model),):
        assert all(np.array_equal(a, b) for a, b in zip(weights, after, strict=True))
    assert np.array_equal(x, x0) and tf.nn.relu is relu
    assert all("call" not in vars(layer) for layer in model.layers)
    np.testing.assert_allclose(np.asarray(Saliency(model).attribute(x, 1)), np.asarray(before_grad), rtol=1e-6)


def test_explain_a_keras_file_with_lrp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``convscope explain model.keras image.png --method lrp``: the CLI's map is the Python API's on the
    normalised image (a nested Sequential, one ReLU layer called twice, global pooling)."""
    from test_keras_cli import small_model

    model = small_model()
    model.save(tmp_path / "small.keras")
    pixels = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    code = main(["explain", str(tmp_path / "small.keras"), str(tmp_path / "a.png"), "--method", "lrp",
                 "--target", "2", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.split() == [str(tmp_path / "out" / "a-lrp.png"), str(tmp_path / "out" / "maps.json")]
    meta = json.loads((tmp_path / "out" / "maps.json").read_text())["images"]["a.png"][0]
    x = ((pixels / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD))[None].astype(np.float32)
    maps = np.asarray(LRP(model).attribute(x, 2))
    assert meta["target"] == 2 and meta["shape"] == [3, 16, 16]
    np.testing.assert_allclose([meta["min"], meta["max"]], [maps.min(), maps.max()], rtol=1e-5, atol=1e-7)


def test_keras_applications_mobilenet_v2_conserves_without_biases() -> None:
    """Keras' own MobileNetV2 (depthwise convolutions, ReLU6, asymmetric paddings merged into their
    convolutions, 52 batch norms folded), bias-free with He-normal kernels at 32 px: LRP-0's input
    relevance equals the top logit."""
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, var = weights
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), 0 * beta, 0 * mean, rng.uniform(0.5, 2, var.shape)])
        elif getattr(layer, "kernel", None) is not None:
            k = weights[0]
            fan_in = int(np.prod(k.shape[:2] if isinstance(layer, L.DepthwiseConv2D) else k.shape[:-1]))
            layer.set_weights([rng.normal(0, (2 / fan_in) ** 0.5, k.shape), *(0 * w for w in weights[1:])])
    x = rng.normal(size=(1, 32, 32, 3)).astype(np.float32)
    logits = np.asarray(model(x))[0]
    top = int(logits.argmax())
    method = LRP(model, composite=LRP0)
    relevance = float(np.asarray(method.attribute(x, top)).sum())
    assert abs(relevance / logits[top] - 1) < 1e-4
    assert method.last_report is not None and not method.last_report.unhandled
    assert len(method.last_folds) == 52
