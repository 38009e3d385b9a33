"""Choosing the layer a CAM method reads when none is given (see
:mod:`convscope.backends.torch.default_layer`; Keras models: ``KerasNet.default_layer``).

Example::

    default_layer(torchvision.models.resnet18(), torch.zeros(1, 3, 224, 224))   # -> 'layer4'
"""

from convscope.backends.torch.default_layer import default_layer

__all__ = ["default_layer"]
