"""`convscope check` on a Keras model file: the metrics get the model's own channels-last inputs and
maps (equal to calling convscope.evaluate directly), and the PyTorch-only randomisation says it
did not run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras
import numpy as np

from convscope import evaluate
from convscope.check import cli
from convscope.data import Shapes
from convscope.methods import Saliency
from convscope.models import load_model


def test_check_on_a_keras_file_equals_the_metrics_called_directly(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)])
    path = tmp_path / "m.keras"
    model.save(path)
    p = argparse.ArgumentParser()
    cli.configure(p)
    out = tmp_path / "out"
    assert cli.run(p.parse_args([str(path), "shapes:3", "--methods", "saliency", "--metrics",
                                 "deletion,randomisation,pointing_game", "--out", str(out), "--quiet"])) == 0
    state = json.loads((out / "results.json").read_text())
    assert state["skipped"] == {"randomisation": "re-initialises PyTorch layers: runs on PyTorch models only"}
    loaded = load_model(str(path))
    x = loaded.preprocess.to_tensor(Shapes(3).arrays()[0])
    classes = np.asarray(loaded.model(x, training=False)).argmax(1)
    maps = Saliency(loaded.model).attribute(x, classes.tolist())
    expected = evaluate.deletion(loaded.model, x, classes, maps, steps=50).auc()
    np.testing.assert_allclose(state["per_image"]["saliency"]["deletion"], expected.numpy(), atol=1e-5)
    assert state["images"]["classes"] == classes.tolist()
