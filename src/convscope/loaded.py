"""A model ready to explain, as every model loader returns it.

:func:`convscope.models.load_model` gives a :class:`LoadedModel` for any spec; a Keras model file
gives its channels-last subclass :class:`convscope.tf.models.LoadedKerasModel`. The class lives in
a module of its own so that both loaders import it and neither imports the other for it
(``convscope.models`` re-exports it: ``from convscope.models import LoadedModel`` works).

Example::

    loaded = LoadedModel(model.eval(), Preprocess(size=224, crop=224), "my-cnn", weights="my-cnn.pt")
    loaded.model(loaded.preprocess.to_tensor(pixels))
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from convscope.images import Preprocess


#: the weights of a model built without trained ones (``torchvision:NAME`` without ``?weights=``)
RANDOM_WEIGHTS = "random (untrained)"


@dataclass
class LoadedModel:
    """A model ready to explain: the module (eval mode), its preprocessing, a display name and
    what its ``weights`` are (e.g. ``"random (untrained)"``, ``"torchvision
    ResNet18_Weights.IMAGENET1K_V1"``, ``"state dict cnn.pt"``), as outputs record them."""

    model: nn.Module
    preprocess: Preprocess
    name: str
    class_names: list[str] | None = None
    weights: str = "unknown"

    @property
    def random_weights(self) -> bool:
        """True when the weights are (or may be) random: the model has learned nothing."""
        return self.weights.startswith(RANDOM_WEIGHTS)
