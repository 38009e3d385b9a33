"""TensorFlow / Keras half of convscope (imports TensorFlow; ``import convscope`` alone never does).

- :func:`unpool`, :func:`max_pool_with_switches`: NHWC switches and scatter-add unpooling.
- :func:`layer_gradient`: d(layer output, or one channel of it)/d(input) for Keras models.

Its modules are the Keras helpers the rest of convscope builds on: layer paths
(:mod:`~convscope.tf.paths`), scoped attribute patches (:mod:`~convscope.tf.scoped`), layer tables
(:mod:`~convscope.tf.layers`), model files (:mod:`~convscope.tf.models`) and the explicit deconvnet
(:mod:`~convscope.tf.deconv`). The Keras backend (:mod:`convscope.backends.tf`) imports from here;
nothing here imports the backend.

Example::

    from convscope.tf import max_pool_with_switches, unpool
    pooled, argmax = max_pool_with_switches(x, 2)
    restored = unpool(pooled, argmax, tf.shape(x))
"""

import importlib.util

# PyTorch imports its optional Triton package lazily (the first optimizer made imports it), and
# loading Triton after TensorFlow crashes the process: where it is installed, load it first.
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401

from convscope.tf.gradients import layer_gradient  # noqa: E402 - after Triton
from convscope.tf.ops import max_pool_with_switches, unpool

__all__ = ["layer_gradient", "max_pool_with_switches", "unpool"]
