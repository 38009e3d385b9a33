"""convscope's Keras backend vs hand-written ``tf.function`` GradientTape code, on Keras VGG16.

Each table times one method on ``keras.applications.VGG16(weights=None)`` (one 224x224 image;
16 IG steps, 8 SmoothGrad samples, 49 occlusion windows, Score-CAM on ``block2_conv2``'s 128
channels; ``--quick``: 112x112, 8 steps, 4 samples, 16 windows) against a reference written the usual way for the same
computation: one ``tf.function`` with a ``tf.GradientTape`` (and, for deconvnet / guided
backprop, a ``tf.custom_gradient`` ReLU swapped into the conv layers while tracing). Rows are
timed interleaved in one process; the target ratio is <= 1.1x. Every table also checks that both
rows return the same maps (the note gives the largest difference).

``--only NAME ...`` times only those methods; ``--runs N`` repeats each table N times (fresh
interleaved rounds, traced functions kept) and notes every run's ratio and their median under the last:
on a shared 2-core machine one run's ratio moves by several percent.

    python -m benchmarks.bench_keras [--quick] [--only NAME ...] [--runs N] [--rounds R]
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks.harness import Table, interleaved

REFERENCE = "hand-written tf.function"
OURS = "convscope"


def _setup(quick: bool) -> dict[str, Any]:
    # TensorFlow is imported here, not at module level (torchvision after TensorFlow can segfault)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    size = 112 if quick else 224
    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    x = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32) * 255 - 120
    # full size: 224 px, but steps, samples and Score-CAM channels a 2-core CPU can time in minutes
    # (a ratio to the same computation does not depend on how many steps both take)
    return {"model": model, "x": x, "size": size, "quick": quick, "k": 7,
            "steps": 8 if quick else 16, "samples": 4 if quick else 8, "window": size // 4 if quick else size // 7,
            "batch": 8 if quick else 16, "cam_layer": "block5_conv3", "score_layer": "block2_conv2"}


def _gradient_refs(s: dict[str, Any]) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    import tensorflow as tf

    from convscope.methods import DeconvNet, GuidedBackprop, InputXGradient, Saliency

    model, x, k = s["model"], tf.constant(s["x"]), s["k"]
    relu_layers = [layer for layer in model.layers if getattr(layer, "activation", None) is keras_relu()]

    def rule_relu(guided: bool) -> Callable[[tf.Tensor], tf.Tensor]:
        @tf.custom_gradient
        def relu(z: tf.Tensor) -> Any:
            y = tf.maximum(z, 0.0)
            return y, lambda g: tf.maximum(g, 0.0) * tf.cast(z > 0, g.dtype) if guided else tf.maximum(g, 0.0)

        return relu

    def grad_of(rule: Callable[[tf.Tensor], tf.Tensor] | None, times_input: bool) -> Callable[[tf.Tensor], tf.Tensor]:
        def fn(inputs: tf.Tensor) -> tf.Tensor:
            saved = [layer.activation for layer in relu_layers]
            try:
                if rule is not None:
                    for layer in relu_layers:
                        layer.activation = rule
                with tf.GradientTape() as tape:
                    tape.watch(inputs)
                    score = tf.reduce_sum(model(inputs, training=False)[:, k])
                grad = tape.gradient(score, inputs)
            finally:
                for layer, act in zip(relu_layers, saved):
                    layer.activation = act
            return inputs * grad if times_input else grad

        return tf.function(fn)

    refs = {"saliency": grad_of(None, False), "input_x_gradient": grad_of(None, True),
            "deconvnet": grad_of(rule_relu(False), False), "guided_backprop": grad_of(rule_relu(True), False)}
    ours = {"saliency": Saliency, "input_x_gradient": InputXGradient, "deconvnet": DeconvNet,
            "guided_backprop": GuidedBackprop}
    return {name: ((lambda f=f: f(x)), (lambda c=ours[name]: c(model).attribute(x, k))) for name, f in refs.items()}


def keras_relu() -> Any:
    import keras

    return keras.activations.relu


def _cam_refs(s: dict[str, Any]) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    import keras
    import tensorflow as tf

    from convscope.methods import GradCAM, GradCAMPlusPlus, LayerCAM

    model, x, k, size = s["model"], tf.constant(s["x"]), s["k"], s["size"]
    probe = keras.Model(model.input, [model.get_layer(s["cam_layer"]).output, model.output])

    def cam(weigh: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> Callable[[tf.Tensor], tf.Tensor]:
        def fn(inputs: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                acts, out = probe(inputs, training=False)
                score = tf.reduce_sum(out[:, k])
            grads = tape.gradient(score, acts)
            w = weigh(acts, grads)
            w = w[:, None, None, :] if w.shape.rank == 2 else w
            raw = tf.maximum(tf.reduce_sum(w * acts, -1, keepdims=True), 0.0)
            return tf.image.resize(raw, (size, size), method="bilinear")

        return tf.function(fn)

    def plus(acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        g2 = grads * grads
        den = 2 * g2 + tf.reduce_sum(acts, (1, 2), keepdims=True) * g2 * grads
        alpha = tf.where((grads != 0) & (den != 0), g2 / tf.where(den != 0, den, 1.0), 0.0)
        return tf.reduce_sum(tf.maximum(grads, 0.0) * alpha, (1, 2))

    refs = {"grad_cam": (cam(lambda a, g: tf.reduce_mean(g, (1, 2))), GradCAM),
            "grad_cam_plus_plus": (cam(plus), GradCAMPlusPlus),
            "layer_cam": (cam(lambda a, g: tf.maximum(g, 0.0)), LayerCAM)}
    return {name: ((lambda f=f: f(x)), (lambda c=c: c(model, s["cam_layer"]).attribute(x, k)))
            for name, (f, c) in refs.items()}


def _expanded_refs(s: dict[str, Any]) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    import keras
    import numpy as np
    import tensorflow as tf
    import torch

    from convscope.methods import IntegratedGradients, Occlusion, ScoreCAM, SmoothGrad
    from convscope.methods.path import quadrature

    model, x, k, size, batch = s["model"], tf.constant(s["x"]), s["k"], s["size"], s["batch"]
    steps, samples, window = s["steps"], s["samples"], s["window"]

    @tf.function
    def grads(points: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(points)
            score = tf.reduce_sum(model(points, training=False)[:, k])
        return tape.gradient(score, points)

    alpha, weight = (t.numpy().astype(np.float32) for t in quadrature("gauss_legendre", steps))

    def ig() -> tf.Tensor:
        maps = []
        for n in range(x.shape[0]):
            total = 0.0
            for start in range(0, steps, batch):
                a = alpha[start:start + batch, None, None, None]
                total += tf.reduce_sum(grads(a * x[n:n + 1]) * weight[start:start + batch, None, None, None], 0)
            maps.append(x[n] * total)
        return tf.stack(maps)

    eps = tf.constant(torch.randn(samples, 3, size, size, generator=torch.Generator().manual_seed(0))
                      .permute(0, 2, 3, 1).contiguous().numpy())

    def smooth() -> tf.Tensor:
        maps = []
        for n in range(x.shape[0]):
            sigma = 0.15 * (tf.reduce_max(x[n]) - tf.reduce_min(x[n]))
            total = 0.0
            for start in range(0, samples, batch):
                total += tf.reduce_sum(grads(x[n:n + 1] + sigma * eps[start:start + batch]), 0)
            maps.append(total / samples)
        return tf.stack(maps)

    @tf.function
    def scores(inputs: tf.Tensor) -> tf.Tensor:
        return model(inputs, training=False)[:, k]

    starts = list(range(0, size - window + 1, window))
    windows = [(y, c) for y in starts for c in starts]

    def occlusion() -> tf.Tensor:
        maps = []
        for n in range(x.shape[0]):
            clean = scores(x[n:n + 1])[0]
            total = np.zeros((size, size, 3), np.float32)
            for start in range(0, len(windows), batch):
                chunk = windows[start:start + batch]
                masks = np.ones((len(chunk), size, size, 1), np.float32)
                for i, (y, c) in enumerate(chunk):
                    masks[i, y:y + window, c:c + window] = 0
                drops = (clean - scores(x[n:n + 1] * masks)).numpy()
                for d, (y, c) in zip(drops, chunk):
                    total[y:y + window, c:c + window] += d
            maps.append(total)
        return tf.stack(maps)

    probe = keras.Model(model.input, model.get_layer(s["score_layer"]).output)
    acts_of = tf.function(lambda inputs: probe(inputs, training=False))

    @tf.function
    def masked_scores(image: tf.Tensor, maps: tf.Tensor) -> tf.Tensor:
        up = tf.image.resize(maps[..., None], (size, size), method="bilinear")
        low = tf.reduce_min(up, (1, 2, 3), keepdims=True)
        span = tf.reduce_max(up, (1, 2, 3), keepdims=True) - low
        masks = tf.where(span > 0, (up - low) / tf.where(span > 0, span, 1.0), 0.0)
        return scores(image * masks)

    def score_cam() -> tf.Tensor:
        acts = acts_of(x)
        maps = []
        for n in range(x.shape[0]):
            channels = tf.transpose(acts[n], [2, 0, 1])
            found = tf.concat([masked_scores(x[n:n + 1], channels[c:c + batch])
                               for c in range(0, channels.shape[0], batch)], 0)
            w = tf.nn.softmax(found)
            raw = tf.maximum(tf.reduce_sum(acts[n] * w, -1, keepdims=True), 0.0)
            maps.append(tf.image.resize(raw[None], (size, size), method="bilinear")[0])
        return tf.stack(maps)

    return {
        "integrated_gradients": (ig, lambda: IntegratedGradients(model, steps=steps, max_batch=batch).attribute(x, k)),
        "smooth_grad": (smooth, lambda: SmoothGrad(model, samples=samples, max_batch=batch).attribute(x, k)),
        "occlusion": (occlusion, lambda: Occlusion(model, window=window, stride=window, max_batch=batch)
                      .attribute(x, k)),
        "score_cam": (score_cam, lambda: ScoreCAM(model, s["score_layer"], max_batch=batch).attribute(x, k)),
    }


def run(quick: bool = False, only: list[str] | None = None, runs: int = 1, rounds: int | None = None) -> list[Table]:
    import statistics

    import numpy as np

    s = _setup(quick)
    cases = {**_gradient_refs(s), **_cam_refs(s), **_expanded_refs(s)}
    shape = f"[{s['x'].shape[0]}, {s['size']}, {s['size']}, 3]"
    tables = []
    for name, (ref, ours) in cases.items():
        if only and name not in only:
            continue
        expected, found = np.asarray(ref()), np.asarray(ours())  # also the warm-up (traces both)
        diff = float(np.abs(expected - found).max() / max(np.abs(expected).max(), 1e-30))
        heavy = name in ("score_cam", "occlusion", "integrated_gradients")
        ratios = []
        for _ in range(runs):
            table = Table(f"Keras VGG16 {name}, input {shape}, float32", reference=REFERENCE)
            interleaved(table, {REFERENCE: ref, OURS: ours}, clock=time.perf_counter,
                        rounds=rounds or (3 if heavy and not quick else 5))
            table.notes.append(f"largest difference of the maps: {diff:.1e} of the largest value")
            tables.append(table)
            ratios.append(table.ratio(OURS))
        if runs > 1:
            tables[-1].notes.append(f"{runs} runs of this table, convscope / hand-written: "
                                    + ", ".join(f"{r:.3f}" for r in ratios)
                                    + f"; median {statistics.median(ratios):.3f}")
    return tables


def _arg(flag: str) -> list[str]:
    """The values after ``flag`` on the command line, up to the next flag."""
    if flag not in sys.argv:
        return []
    values = sys.argv[sys.argv.index(flag) + 1:]
    return values[:next((i for i, v in enumerate(values) if v.startswith("--")), len(values))]


if __name__ == "__main__":
    runs, rounds = _arg("--runs"), _arg("--rounds")
    for t in run(quick="--quick" in sys.argv, only=_arg("--only") or None, runs=int(runs[0]) if runs else 1,
                 rounds=int(rounds[0]) if rounds else None):
        print(t.markdown())
