"""A model ready to explain, as every model loader returns it.

:func:`convscope.models.load_model` gives a :class:`LoadedModel` for any spec; a Keras model file
gives its channels-last subclass :class:`convscope.tf.models.LoadedKerasModel`. The class lives in
a module of its own so that both loaders import it and neither imports the other for it
(``convscope.models`` re-exports it: ``from convscope.models import LoadedModel`` works).

Example::

    loaded = LoadedModel(model.eval(), Preprocess(size=224, crop=224), "my-cnn")
    loaded.model(loaded.preprocess.to_tensor(pixels))
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from convscope.images import Preprocess


@dataclass
class LoadedModel:
    """A model ready to explain: the module (eval mode), its preprocessing and a display name."""

    model: nn.Module
    preprocess: Preprocess
    name: str
    class_names: list[str] | None = None
