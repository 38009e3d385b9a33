"""A scoped attribution session: eval mode, probes and backward rules, all undone on exit.

Inside ``with Session(...)`` the model is in eval mode and the probed layers have forward hooks;
backward rules are applied only while :meth:`Session.forward` runs. On exit (also after an
error) every hook and mode is gone and each module's ``training`` flag is what it was. The
user's input is never touched: the forward pass sees ``x.detach().clone().requires_grad_()``,
and gradients are taken with ``torch.autograd.grad`` so no parameter's ``.grad`` changes.

Example::

    with Session(model, layers=["layer3"], rules=RuleMap(DeconvReLU())) as session:
        run = session.forward(x, slice(0, len(x)))
        (g,) = torch.autograd.grad(run.record.output[:, 3].sum(), run.input)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from convscope.backends.torch.memory import is_out_of_memory
from convscope.backends.torch.probes import LayerKey, Probes
from convscope.backends.torch.rule_mode import apply_rules
from convscope.errors import ConvscopeError
from convscope.rules import RuleMap
from convscope.targets import Record


@dataclass(frozen=True)
class Forward:
    """One forward pass: the ``record`` targets read, and ``input``, the leaf fed to the model."""

    record: Record
    input: Tensor


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` for the block; afterwards every module's own ``training`` flag as it was."""
    training = [m for m in model.modules() if m.training]
    try:
        if training:  # an eval-mode model (the usual case) costs nothing here
            model.eval()
        yield
    finally:
        for module in training:
            module.training = True  # per module: model.train() would overwrite mixed flags


class Session:
    """Eval mode + probes on ``layers`` for the block; ``rules`` applied within each forward pass."""

    def __init__(self, model: nn.Module, *, layers: Sequence[LayerKey] = (), rules: RuleMap | None = None) -> None:
        self.model = model
        self.rules = None if rules is None or rules.is_gradient else rules
        if self.rules is not None:
            self.rules.resolve(model)  # unknown layer names fail here, before any work
        self.probes = Probes(model, layers)
        self._stack = ExitStack()

    def __enter__(self) -> Session:
        with ExitStack() as stack:
            stack.enter_context(eval_mode(self.model))
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
            stack.enter_context(self.probes)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def forward(self, x: Tensor, rows: slice, *, grad: bool = True) -> Forward:
        """Run the model on a copy of ``x`` (a leaf that requires grad when ``grad``)."""
        leaf = x.detach().clone()
        if grad:
            leaf.requires_grad_()
        self.probes.reset()
        rules = apply_rules(self.model, self.rules) if self.rules is not None else nullcontext()
        with torch.set_grad_enabled(grad), rules:
            output = call_model(self.model, leaf)
        acts = {key: self.probes.output(key) for key in self.probes.keys}
        return Forward(Record(output=output, acts=acts, rows=rows, input=leaf), input=leaf)


def call_model(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)``, with a clear error if it fails or does not return a batch of outputs."""
    try:
        output = model(x)
    except ConvscopeError:
        raise
    except Exception as error:  # a model failing on our input: say what we fed it
        if is_out_of_memory(error):
            raise ConvscopeError(f"the model ran out of memory on a batch of {x.shape[0]} samples of shape "
                                 f"{list(x.shape[1:])} ({x.device})",
                                 "Pass max_batch=N to evaluate at most N samples at once, or max_batch='auto' "
                                 "to size the batches from free memory.") from error
        raise ConvscopeError(f"the model's forward pass failed on an input of shape {list(x.shape)} "
                             f"({x.dtype}, {x.device}): {type(error).__name__}: {error}",
                             "Check that the input has the batch dimension, size, dtype and device the "
                             "model expects.") from error
    if not isinstance(output, Tensor) or output.dim() == 0 or output.shape[0] != x.shape[0]:
        shape = list(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ConvscopeError(f"the model returned {shape} for a batch of {x.shape[0]} samples",
                             "The model must return one tensor with the batch as its first dimension; "
                             "give the input a batch dimension (x.unsqueeze(0)) or wrap the model.")
    return output
