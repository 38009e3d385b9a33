"""Recognising out-of-memory errors, whichever allocator raised them.

Example::

    try:
        model(x)
    except Exception as error:
        if is_out_of_memory(error):
            ...  # retry with fewer samples
"""

from __future__ import annotations

import torch

_OOM_PHRASES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) says memory ran out."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (torch.OutOfMemoryError, MemoryError)):
            return True
        if isinstance(seen, RuntimeError) and any(p in str(seen).lower() for p in _OOM_PHRASES):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
