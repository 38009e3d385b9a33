"""Scoped attribute patches that leave an object exactly as it was, also when the block raises.

The value goes straight into the object's ``__dict__`` (a layer's ``__setattr__`` tracking and
``__delattr__`` are bypassed); on exit the old entry comes back, or the key is removed if there
was none. Nested patches of one attribute undo in reverse order. The Keras backend records layer
outputs and applies backward rules with it, and :mod:`convscope.tf.layers` counts layer calls.

Example::

    with patched(layer, "call", recording_call):
        model(x)                  # layer.call is recording_call here
    assert "call" not in vars(layer)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_MISSING = object()


@contextmanager
def patched(obj: object, name: str, value: object) -> Iterator[None]:
    """``obj.name = value`` (in ``vars(obj)``) for the block; exactly undone after."""
    namespace = vars(obj)
    old = namespace.get(name, _MISSING)
    namespace[name] = value
    try:
        yield
    finally:
        if old is _MISSING:
            namespace.pop(name, None)
        else:
            namespace[name] = old
