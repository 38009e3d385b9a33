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

from convscope.tf.gradients import layer_gradient
from convscope.tf.ops import max_pool_with_switches, unpool

__all__ = ["layer_gradient", "max_pool_with_switches", "unpool"]
