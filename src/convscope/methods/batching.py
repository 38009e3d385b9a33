"""The batch knob ``max_batch`` (see :mod:`convscope.backends.torch.batching` for PyTorch models
and :mod:`convscope.backends.tf.batching` for Keras models).

Example::

    from convscope.methods.batching import MaxBatch, check_max_batch
    check_max_batch("auto")
"""

from convscope.backends.torch.batching import (
    CPU_BUDGET_CAP, AllocationMeter, Batches, MaxBatch, check_max_batch, expansion_rows, is_out_of_memory,
    memory_budget)

__all__ = ["CPU_BUDGET_CAP", "AllocationMeter", "Batches", "MaxBatch", "check_max_batch", "expansion_rows",
           "is_out_of_memory", "memory_budget"]
