"""Which backend runs a model: :func:`backend_of`, by the model's type (TensorFlow loads only for a
Keras model, which cannot exist without it).

Example::

    backend_of(torchvision.models.resnet18()).name     # 'torch'
"""

from __future__ import annotations

import sys

from convscope.backends.protocol import Backend
from convscope.errors import ConvscopeError
from convscope.formats import is_torchscript


def is_keras_model(model: object) -> bool:
    """Whether ``model`` is a Keras model (never imports TensorFlow: Keras is imported if one exists)."""
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(model, getattr(keras, "Model", ()))


def framework_of(model: object) -> str:
    """``"tf"`` for a Keras model, ``"torchscript"`` for a TorchScript module (its layers take no
    hooks: :mod:`convscope.formats`), ``"torch"`` for any other object (:func:`backend_of` checks it)."""
    if is_keras_model(model):
        return "tf"
    return "torchscript" if is_torchscript(model) else "torch"


def backend_of(model: object) -> Backend:
    """The backend for ``model``: Keras models get :mod:`convscope.backends.tf` (TensorFlow loads
    only then), ``torch.nn.Module`` s get :mod:`convscope.backends.torch`; else a clear error."""
    if is_keras_model(model):
        from convscope.backends.tf.backend import BACKEND as keras_backend

        return keras_backend
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        from convscope.backends.torch.backend import BACKEND as torch_backend

        return torch_backend
    raise ConvscopeError(f"the model is a {type(model).__name__}, not a torch.nn.Module or a Keras model",
                         "Pass a PyTorch model or a keras.Model (see convscope.load_model for files and zoo names).")
