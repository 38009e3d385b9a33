"""One model evaluation: what it returns (:class:`Forward`) and how it is called (:func:`call_model`,
which turns a failing or ill-shaped forward pass into a clear error).

Example::

    output = call_model(model, x)   # ConvscopeError naming the input if the model fails on it
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from convscope.backends.torch.inputs import Inputs
from convscope.backends.torch.memory import is_out_of_memory
from convscope.errors import ConvscopeError
from convscope.ops.structured import batch_size, describe
from convscope.targets import Record


@dataclass(frozen=True)
class Forward:
    """One forward pass: the ``record`` targets read, and ``input``, the leaf fed to the model."""

    record: Record
    input: Tensor


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without any)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def call_model(model: nn.Module, x: Tensor, inputs: Inputs | None = None, rows: Tensor | slice | None = None
               ) -> Any:
    """``model(x)`` (with ``inputs``: ``inputs.call(model, x, rows)``, the user's tensors and
    forward arguments), with a clear error if it fails or does not return a batch of outputs: a
    tensor ``[N, ...]``, or a structured output (:mod:`convscope.ops.structured`: a dict of such
    tensors, a list of one dict per sample)."""
    try:
        output = model(x) if inputs is None else inputs.call(model, x, slice(0, len(x)) if rows is None else rows)
    except ConvscopeError:
        raise
    except Exception as error:  # a model failing on our input: say what we fed it
        if is_out_of_memory(error):
            raise ConvscopeError(f"the model ran out of memory on a batch of {x.shape[0]} samples of shape "
                                 f"{list(x.shape[1:])} ({x.device})",
                                 "Pass max_batch=N to evaluate at most N samples at once, or max_batch='auto' "
                                 "to size the batches from free memory.") from error
        shape = list(x.shape) if inputs is None else " and ".join(str([len(x), *s]) for s in inputs.shapes)
        raise ConvscopeError(f"the model's forward pass failed on an input of shape {shape} "
                             f"({x.dtype}, {x.device}): {type(error).__name__}: {error}",
                             "Check that the input has the batch dimension, size, dtype and device the "
                             "model expects.") from error
    if batch_size(output) != x.shape[0]:
        raise ConvscopeError(f"the model returned {describe(output)} for a batch of {x.shape[0]} samples",
                             "The model must return one tensor with the batch as its first dimension (or a dict "
                             "of such tensors, or a list of one dict per sample); give the input a batch "
                             "dimension (x.unsqueeze(0)) or wrap the model.")
    return output
