"""One naming of a Keras model's layers, shared by every Keras entry point.

A layer's *path* is its Keras name prefixed by the names of the layers holding it, joined with
``"/"``: nested models (functional, Sequential, subclassed) and the tracked sublayers of custom
layers alike. A user names a layer by its full path, or by a bare name that ends exactly one path;
an ambiguous bare name or an unknown name raises a :class:`~convscope.errors.ConvscopeError`
(listing the full paths, or the closest names).

Callers that *record* a layer's output by wrapping its ``call`` (the Keras backend methods) reach
every path. Callers that *rebuild* a layer's output from the model graph
(:func:`convscope.tf.layer_gradient`, the deconvnet mirror of :mod:`convscope.tf.deconv`) need a
route through nested ``keras.Model`` objects down to the layer: :func:`model_route` gives it, or
says which custom layer hides the layer from the graph.

Example::

    # inputs -> stem -> block (a nested functional model: conv, relu) -> head (custom layer: dense)
    list(layer_paths(model))          # ['input_layer', 'stem', 'block', 'block/input_layer_1',
                                      #  'block/conv', 'block/relu', 'head', 'head/dense']
    resolve_path(model, "conv")       # 'block/conv' (a bare name used once)
    model_route(model, "block/conv", "layer_gradient", fix)   # [the 'block' model, its 'conv' layer]
    model_route(model, "head/dense", "layer_gradient", fix)   # ConvscopeError: inside custom layer 'head'
"""

from __future__ import annotations

import keras

from convscope.errors import ConvscopeError, did_you_mean

LayerKey = str | keras.Layer


def sublayers(layer: keras.Layer) -> list[keras.Layer]:
    """The layers directly inside ``layer`` (a model's layers; a custom layer's tracked sublayers)."""
    flatten = getattr(layer, "_flatten_layers", None)  # what keras.Model.layers itself reads
    return [] if flatten is None else list(flatten(include_self=False, recursive=False))


def layer_paths(model: keras.Layer, prefix: str = "") -> dict[str, keras.Layer]:
    """Every layer below ``model`` by path (``"outer/inner"``), in definition order, depth first."""
    paths: dict[str, keras.Layer] = {}
    for layer in sublayers(model):
        path = f"{prefix}{layer.name}"
        paths.setdefault(path, layer)
        for inner, found in layer_paths(layer, f"{path}/").items():
            paths.setdefault(inner, found)
    return paths


def resolve_path(model: keras.Layer, key: LayerKey, paths: dict[str, keras.Layer] | None = None) -> str:
    """The full path of a layer given by path, by a bare name used once, or as a layer object.

    ``paths`` is ``layer_paths(model)`` when the caller has it already.
    """
    paths = layer_paths(model) if paths is None else paths
    if isinstance(key, keras.Layer):
        found = [path for path, layer in paths.items() if layer is key]
        if not found:
            raise ConvscopeError(f"layer {key.name!r} is not part of this model",
                                 "Pass one of the model's own layers or its name.")
        return found[0]
    if not isinstance(key, str):
        raise ConvscopeError(f"a Keras layer is given by its name or the layer itself, got {type(key).__name__} "
                             f"{key!r}", "Name the layer as in model.summary(), e.g. 'block5_conv3' "
                             "(`convscope layers MODEL` lists every name).")
    if key in paths:
        return key
    bare = [path for path in paths if path.rsplit("/", 1)[-1] == key]
    if len(bare) == 1:
        return bare[0]
    if bare:
        raise ConvscopeError(f"layer name {key!r} is used in several nested models or layers",
                             "Give the full path, one of: " + ", ".join(repr(p) for p in bare))
    raise ConvscopeError(f"the model has no layer named {key!r}",
                         did_you_mean(key, list(paths), "layer") + " `convscope layers MODEL` lists every name.")


def resolve_layer(model: keras.Layer, key: LayerKey) -> keras.Layer:
    """The layer object at :func:`resolve_path` ``(model, key)``."""
    paths = layer_paths(model)
    return paths[resolve_path(model, key, paths)]


def model_route(model: keras.Layer, path: str, user: str, fix: str) -> list[keras.Layer]:
    """The layers along ``path``, outermost first, each holder along the way checked to be a ``keras.Model``.

    A layer inside a custom (non-Model) layer is a ConvscopeError naming that layer: ``user`` (the
    feature, e.g. ``"layer_gradient"``) rebuilds outputs from the model graph, which ends there;
    ``fix`` says what to do instead.
    """
    names = path.split("/")
    route: list[keras.Layer] = []
    holder = model
    for depth, name in enumerate(names):
        if not isinstance(holder, keras.Model):
            outer = "/".join(names[:depth])
            raise ConvscopeError(f"{user} cannot reach layer {path!r}: it is inside {outer!r}, a custom "
                                 f"{type(holder).__name__} layer (not a keras.Model), whose inner outputs are not "
                                 f"part of the model graph that {user} rebuilds", fix)
        holder = next(layer for layer in sublayers(holder) if layer.name == name)
        route.append(holder)
    return route
