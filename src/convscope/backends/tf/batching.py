"""``max_batch`` on the Keras side: split evaluations into chunks of at most ``max_batch`` samples.

``max_batch`` is an int, None (no limit) or ``"auto"``. TensorFlow has no allocation meter like
torch's, so ``"auto"`` starts with :data:`AUTO_START` samples per evaluation and halves the chunk
after each out-of-memory error (``tf.errors.ResourceExhaustedError``), keeping the size it learned
for later chunks. Results never depend on the chunking, so a retry is harmless.

Example::

    for rows, out in Batches(16).map(len(x), lambda r: f(x[r.start:r.stop])):
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import tensorflow as tf

from convscope.errors import ConvscopeError
from convscope.methods.batching import MaxBatch

T = TypeVar("T")

AUTO_START = 32  # samples per evaluation that "auto" tries first


class Batches:
    """Runs ``fn`` over consecutive slices of ``range(total)`` of at most ``max_batch`` items."""

    def __init__(self, max_batch: MaxBatch) -> None:
        self.auto = max_batch == "auto"
        self.size: int | None = AUTO_START if self.auto else max_batch  # type: ignore[assignment]

    def map(self, total: int, fn: Callable[[slice], T]) -> Iterator[tuple[slice, T]]:
        """Yield ``(rows, fn(rows))`` for slices covering ``range(total)`` in order."""
        start = 0
        while start < total:
            size = total - start if self.size is None else min(self.size, total - start)
            rows = slice(start, start + size)
            try:
                result = fn(rows)
            except tf.errors.ResourceExhaustedError as error:
                if not self.auto:
                    raise
                if size <= 1:
                    raise ConvscopeError("out of memory even with one sample per model evaluation",
                                         "Free memory (smaller model or input, fewer targets).") from error
                self.size = size // 2
                continue
            yield rows, result
            start = rows.stop
