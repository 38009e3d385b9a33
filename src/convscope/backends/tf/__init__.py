"""TensorFlow / Keras backend: the attribution methods of :mod:`convscope.methods` on Keras 3 models.

The methods are written once (:mod:`convscope.backends.protocol`); this package holds only what is
truly TensorFlow: the backend object and its engine (:mod:`~convscope.backends.tf.backend`,
:mod:`~convscope.backends.tf.engine`), the tensor ops (:mod:`~convscope.backends.tf.tensors`),
recorded forward passes (:mod:`~convscope.backends.tf.model`), the targets' layer paths and feeds
(:mod:`~convscope.backends.tf.targets`), backward rules at ReLUs (:mod:`~convscope.backends.tf.rules`,
:mod:`~convscope.backends.tf.relu`), scoped patches (:mod:`convscope.tf.scoped`) and
layouts (:mod:`~convscope.backends.tf.layout`). ``Saliency(keras_model)`` picks it by the model's
type; see :mod:`convscope.backends.tf.backend` for the Keras conventions (NHWC in, NHWC out).

Importing this package does not import TensorFlow. ``convscope.methods.registry.supported("tf")``
lists the methods that run on Keras models.

Example::

    maps = GuidedBackprop(keras_model).attribute(images_nhwc, target=3)        # like images_nhwc
"""

from __future__ import annotations
