"""The command line on a Keras file: TensorFlow's own log lines are silenced (a Keras command's
stderr is empty), only while a command runs (the process's environment and loggers are as they
were afterwards), and a probe the model cannot take is a user error with Keras's own reason."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import keras  # noqa: E402

from convscope.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, name="fc")])
    path = tmp_path_factory.mktemp("keras") / "tiny.keras"
    model.save(path)
    return path


def test_a_keras_command_prints_no_tensorflow_log_lines(tiny_keras: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run([sys.executable, "-m", "convscope.cli", "layers", str(tiny_keras)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("tiny.keras  (probe input 1x16x16x3)")
    assert proc.stderr == ""


def test_the_silencing_ends_with_the_command(tiny_keras: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    levels = {name: logging.getLogger(name).level for name in ("tensorflow", "absl")}
    assert main(["layers", str(tiny_keras)]) == 0
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    assert {name: logging.getLogger(name).level for name in levels} == levels
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")  # a level the user set is theirs
    assert main(["layers", str(tiny_keras)]) == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
    capsys.readouterr()


def test_a_probe_too_small_for_a_keras_model(tiny_keras: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layers", str(tiny_keras), "--input-size", "2"]) == 2
    text = " ".join(capsys.readouterr().err.split())
    assert text.startswith("convscope: error: tiny.keras cannot run on a 1x2x2x3 probe input (ValueError: The "
                           "convolution operation resulted in an empty output.")
    assert "\x1b" not in text and text.endswith("The input is too small for the model: try --input-size 16 (its "
                                                "preprocessing's crop size).")
