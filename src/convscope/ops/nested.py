"""The tensors inside a nested value (the arguments or outputs of an op seen by a TorchFunctionMode).

Example::

    list(tensors_in([x, (y, {"k": z}), 3]))   # [x, y, z]
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor


def tensors_in(value: object) -> Iterator[Tensor]:
    """Every tensor in ``value``, depth first, through lists, tuples and dict values."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from tensors_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors_in(v)
