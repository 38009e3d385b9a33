"""The template every attribution method follows.

``attribute`` = validate the input -> convert the target(s) at the API edge -> open a scoped
:class:`~convscope.backends.torch.Session` (eval mode, probes, backward rules) -> split the
batch into chunks of at most ``max_batch`` samples -> ``_compute`` each chunk -> concatenate.
A method writes only ``_compute`` (and, optionally, ``_rules`` and ``_layers``).

The constructor stores configuration only: no hooks, no mode switches, no copies.

Example::

    class Saliency(Method):
        def _compute(self, session, x, rows, targets, wrt):
            run = session.forward(x, rows)
            ...                                    # one map per target for these rows
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, overload

import torch
from torch import Tensor, nn

from convscope.backends.torch.probes import LayerKey
from convscope.backends.torch.session import Session
from convscope.errors import ConvscopeError
from convscope.rules import RuleMap
from convscope.targets import Target, TargetLike, as_targets

Wrt = str | nn.Module | None


def check_input(x: object) -> Tensor:
    """``x`` if it is a floating-point tensor with a batch dimension, else a clear error."""
    if not isinstance(x, Tensor):
        hint = "Convert it with torch.from_numpy(x).float()." if type(x).__module__ == "numpy" else \
            "Pass a float tensor of shape [N, C, H, W]."
        raise ConvscopeError(f"the input is a {type(x).__name__}, not a torch tensor", hint)
    if not x.is_floating_point():
        raise ConvscopeError(f"the input has dtype {x.dtype}; attribution needs a floating-point input",
                             "Convert it, e.g. x.float() / 255.")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ConvscopeError(f"the input of shape {list(x.shape)} holds no samples",
                             "Pass a batch with at least one sample, e.g. x.unsqueeze(0) for one image.")
    return x


def check_max_batch(max_batch: int | None) -> int | None:
    """``max_batch`` if it is None or a positive int."""
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise ConvscopeError(f"max_batch={max_batch!r} must be a positive int or None",
                             "max_batch is the most samples per model evaluation, e.g. max_batch=16.")
    return max_batch


def chunks(n: int, max_batch: int | None) -> list[slice]:
    """Row slices covering ``range(n)`` with at most ``max_batch`` rows each."""
    step = n if max_batch is None else max_batch
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


class Method(ABC):
    """An attribution method over ``model``: ``Method(model, max_batch=...).attribute(x, target)``.

    ``max_batch`` is the most samples per model evaluation; results never depend on it.
    """

    name: ClassVar[str] = ""

    def __init__(self, model: nn.Module, *, max_batch: int | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise ConvscopeError(f"the model is a {type(model).__name__}, not a torch.nn.Module",
                                 "Pass a PyTorch model (see convscope.load_model for files and zoo names).")
        self.model = model
        self.max_batch = check_max_batch(max_batch)

    @overload
    def attribute(self, x: Tensor, target: TargetLike, wrt: Wrt = None) -> Tensor: ...

    @overload
    def attribute(self, x: Tensor, target: None = None, wrt: Wrt = None, *,
                  targets: Sequence[TargetLike]) -> list[Tensor]: ...

    def attribute(self, x: Tensor, target: TargetLike | None = None, wrt: Wrt = None, *,
                  targets: Sequence[TargetLike] | None = None) -> Tensor | list[Tensor]:
        """The attribution of ``target`` for each sample of ``x``, shaped like ``x`` (or like the
        output of layer ``wrt``). With ``targets=[...]``: one such map per target, from one forward
        pass per chunk of ``max_batch`` samples.
        """
        x = check_input(x)
        found, many = as_targets(target, targets, x.shape[0])
        if wrt == "input":
            wrt = None
        layers = [key for t in found for key in t.layers()] + ([wrt] if wrt is not None else [])
        parts: list[list[Tensor]] = []
        with Session(self.model, layers=layers, rules=self._rules()) as session:
            for rows in chunks(x.shape[0], self.max_batch):
                parts.append(self._compute(session, x[rows], rows, found, wrt))
        maps = [torch.cat([p[i] for p in parts]) if len(parts) > 1 else parts[0][i] for i in range(len(found))]
        return maps if many else maps[0]

    def _rules(self) -> RuleMap | None:
        """The backward rules applied during this method's forward passes (None: plain autograd)."""
        return None

    @abstractmethod
    def _compute(self, session: Session, x: Tensor, rows: slice, targets: list[Target],
                 wrt: LayerKey | None) -> list[Tensor]:
        """One map per target for the samples ``x`` (rows ``rows`` of the full batch)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, max_batch={self.max_batch})"
