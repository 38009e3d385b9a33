"""Keras model files (``.keras``, ``.h5``) as :class:`~convscope.loaded.LoadedModel` objects.

:func:`convscope.models.load_model` routes a spec ending in ``.keras``, ``.h5`` or ``.hdf5`` here
(TensorFlow is imported only then). The model is loaded with ``compile=False`` and Keras's
``safe_mode`` (no arbitrary code from the file); ``--weights`` takes a Keras weights file
(``model.save_weights("w.weights.h5")``). Its preprocessing is NHWC:
``x[n, y, x, c] = (pixel / 255 - mean[c]) / std[c]``, a float32 array, with the crop size read
from the model's input shape where it is fixed (``?size=N&crop=M`` overrides it).

Example::

    loaded = load_model("my_cnn.keras")
    batch = load_images(["cat.png"], loaded.preprocess)    # batch.tensor: [1, H, W, 3] float32
    loaded.model(batch.tensor, training=False)
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from convscope.errors import ConvscopeError
from convscope.images import Preprocess
from convscope.loaded import LoadedModel

_SAVE_HINT = "Save the model with model.save('model.keras') (or .h5), then pass that file."


@dataclass(frozen=True)
class KerasPreprocess(Preprocess):
    """:class:`~convscope.images.Preprocess` with channels-last arrays: uint8 [N, H, W, 3] pixels
    become float32 [N, H, W, 3] model inputs, ``(pixel / 255 - mean) / std``."""

    def to_tensor(self, pixels: np.ndarray) -> np.ndarray:  # type: ignore[override]
        """uint8 [N, H, W, 3] or [H, W, 3] -> normalised float32 [N, H, W, 3]."""
        arr = pixels[None] if pixels.ndim == 3 else pixels
        x = arr.astype(np.float32) / 255.0
        return ((x - np.float32(self.mean)) / np.float32(self.std)).astype(np.float32)

    def to_pixels(self, x: np.ndarray) -> np.ndarray:  # type: ignore[override]
        """Inverse of :meth:`to_tensor`: normalised [N, H, W, 3] -> uint8 [N, H, W, 3]."""
        img = np.asarray(x, dtype=np.float32) * np.float32(self.std) + np.float32(self.mean)
        return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


@dataclass
class LoadedKerasModel(LoadedModel):
    """A Keras model ready to explain: ``model`` is a ``keras.Model``, ``preprocess`` channels-last."""

    model: keras.Model  # type: ignore[assignment]
    preprocess: KerasPreprocess  # type: ignore[assignment]


def load_keras_model(path: Path, weights: str | Path | None = None) -> LoadedKerasModel:
    """Load the Keras model file ``path`` (and an optional Keras weights file) with an NHWC preprocess.

    Example: ``load_keras_model(Path("cnn.keras")).model.summary()``.
    """
    if not path.is_file():
        raise ConvscopeError(f"no such model file: {str(path)!r}", "Check the path of the .keras/.h5 file.")
    try:
        model = keras.saving.load_model(str(path), compile=False)
    except (ValueError, OSError, TypeError, KeyError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConvscopeError(f"{str(path)!r} is not a Keras model file Keras can load ({first})", _SAVE_HINT) from None
    if not isinstance(model, keras.Model):
        raise ConvscopeError(f"{str(path)!r} holds a {type(model).__name__}, not a Keras model", _SAVE_HINT)
    if weights is not None:
        _load_weights(model, Path(weights))
    return LoadedKerasModel(model, _preprocess(model), path.name)


def _load_weights(model: keras.Model, path: Path) -> None:
    if not path.is_file():
        raise ConvscopeError(f"no such weights file: {str(path)!r}", "Check the path given to --weights.")
    try:
        model.load_weights(str(path))
    except (ValueError, OSError, KeyError) as exc:
        raise ConvscopeError(f"cannot load the Keras weights {str(path)!r} into this model ({exc})",
                             "Use a file written by model.save_weights('name.weights.h5') for the same architecture.") \
            from None


def _preprocess(model: keras.Model) -> KerasPreprocess:
    """Crop to the model's fixed input size (a square image input), else the ImageNet default 256/224."""
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) and len(model.inputs) == 1 else ()
    if len(shape) != 4:
        raise ConvscopeError(f"model {model.name!r} does not take one image batch [N, H, W, C] "
                             f"(its inputs: {[tuple(t.shape) for t in getattr(model, 'inputs', None) or []]})",
                             "convscope explains image classifiers with one NHWC input.")
    if shape[3] not in (3, None):
        raise ConvscopeError(f"model {model.name!r} takes {shape[3]}-channel images; the CLI feeds RGB images",
                             "Use the Python API with your own input batch for other channel counts.")
    height, width = shape[1], shape[2]
    if height is None or width is None:
        return KerasPreprocess()
    if height != width:
        raise ConvscopeError(f"model {model.name!r} takes {height}x{width} images; the CLI crops square images",
                             "Use the Python API with your own input batch for non-square inputs.")
    return KerasPreprocess(size=int(height), crop=int(height))
