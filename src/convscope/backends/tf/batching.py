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

import tensorflow as tf

from convscope.backends.torch import batching
from convscope.backends.torch.batching import MaxBatch

AUTO_START = 32  # samples per evaluation that "auto" tries first


class Batches(batching.Batches):
    """Runs ``fn`` over consecutive slices of ``range(total)`` of at most ``max_batch`` items
    (the PyTorch loop, with TensorFlow's out-of-memory error and no allocation meter)."""

    def __init__(self, max_batch: MaxBatch) -> None:
        super().__init__(max_batch)
        if self.auto:
            self.size = AUTO_START

    def _out_of_memory(self, error: BaseException) -> bool:
        return isinstance(error, tf.errors.ResourceExhaustedError)
