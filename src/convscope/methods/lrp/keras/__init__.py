"""LRP on Keras models: the same rules and composites, applied to the layers of the functional graph.

- :mod:`~convscope.methods.lrp.keras.graph`: the plan read from the graph (folds, merged paddings,
  sums, poolings, the layers no rule covers);
- :mod:`~convscope.methods.lrp.keras.mode`: each layer's ``call`` wrapped with a relevance gradient;
- :mod:`~convscope.methods.lrp.keras.ops`: the rules' tensor operations in TensorFlow;
- :mod:`~convscope.methods.lrp.keras.maps`: a chunk's maps, inside the engine's compiled function.

:class:`~convscope.methods.lrp.LRP` picks this package for a Keras model (TensorFlow loads only then).

Example::

    maps = LRP(keras_model, composite="epsilon_plus_flat").attribute(x_nhwc, 3)   # like x_nhwc
"""
