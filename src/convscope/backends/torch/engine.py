"""The PyTorch engine of the backend protocol (:mod:`convscope.backends.protocol`).

An :class:`TorchEngine` lives for one ``attribute`` call inside a scoped
:class:`~convscope.backends.torch.session.Session` (eval mode, probes, backward rules). Its
forward passes feed a copy of the input (a leaf that requires grad when gradients are wanted);
``replace=(layer, value)`` sets a layer's output with a forward hook registered for that one
call, so path and perturbation methods work on layers too. ``fast`` evaluations (perturbed
inputs, no gradients) run where :meth:`Session.inference` says once :meth:`TorchEngine.evaluations`
has announced them: the model's inference twin on the CPU. Compiling is the identity.

Example::

    with BACKEND.engine(method, x, targets, wrt=None, layers=[], rules=None) as engine:
        run = engine.forward(x, engine.rows(slice(0, len(x))), grad=True)
        (g,) = run.gradients(0, [run.value])
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from convscope.backends.protocol import Chunk
from convscope.ops import tensors
from convscope.ops.structured import repeat_rows
from convscope.backends.torch.forward import Forward
from convscope.backends.torch.incremental import IncrementalScores, Report, open_scores
from convscope.backends.torch.inputs import Inputs
from convscope.backends.torch.inference import TWIN_MIN_WORK, InferenceSession
from convscope.backends.torch.probes import LayerKey, key_name
from convscope.backends.torch.session import Session
from convscope.errors import ConvscopeError
from convscope.backends.torch.draws import gaussian_draws
from convscope.rules import RuleMap
from convscope.backends.torch.batching import Batches, MaxBatch, expansion_rows
from convscope.targets import Record, Target

T = TypeVar("T")
_DEFAULT: Any = object()


@dataclass
class TorchRun:
    """One forward pass (:class:`convscope.backends.protocol.Run`)."""

    record: Record
    value: Tensor
    scores: list[Tensor]

    def act(self, key: Hashable) -> Tensor:
        return self.record.acts[key]  # type: ignore[index]

    def gradients(self, i: int, wrt: Sequence[Tensor]) -> list[Tensor]:
        score = self.scores[i]
        if not score.requires_grad:  # the score does not depend on these tensors
            return [torch.zeros_like(t) for t in wrt]
        grads = torch.autograd.grad(score.sum(), list(wrt), retain_graph=i < len(self.scores) - 1, allow_unused=True)
        return [torch.zeros_like(t) if g is None else g for t, g in zip(wrt, grads)]


class TorchEngine:
    """The engine of one call on a PyTorch model (see the module docstring)."""

    ops = tensors

    def __init__(self, session: Session, targets: list[Target], wrt: LayerKey | None, max_batch: MaxBatch,
                 device: torch.device) -> None:
        self.session = session
        self.targets = targets
        self.wrt = wrt
        self.max_batch = max_batch
        self.device = device
        self._fast: Session | InferenceSession = session
        self._work = 0

    @property
    def inputs(self) -> Inputs | None:
        """How the attributed input reaches the model (None: ``model(x)``)."""
        return self.session.inputs

    def rows(self, r: slice) -> Tensor:
        return torch.arange(r.start, r.stop)

    def evaluations(self, work: int) -> None:
        self._fast = self.session.inference(work)
        self._work = work

    def local(self, value: Tensor, window: tuple[int, int], mode: bool | str, tau: float | None = None
              ) -> tuple[IncrementalScores | None, Report | None]:
        """Incremental scores of copies of the input ``value`` changed inside one box of ``window``
        each (:mod:`~convscope.backends.torch.incremental`), on the runner of ``fast``
        evaluations, or None where plain passes serve; and the report saying which and why.
        ``tau``: the projective-field cap (approximate; see ``geometry.Cap``)."""
        if self.wrt is not None:
            return None, Report("plain", "the attribution is to a layer's output, not to the input")
        if self.inputs is not None:
            return None, Report("plain", "the model takes several inputs or extra forward arguments")
        runner = self._fast
        if isinstance(runner, InferenceSession):
            module, names, own = runner.twin, runner.names, runner.probes.hook_ids()
        else:
            probes = self.session.probes
            module, own = self.session.model, probes.hook_ids()
            names = {key: key_name(module, key) for key in probes.keys}
        wanted = {key: names[key] for t in self.targets for key in t.layers()}
        return open_scores(module, wanted, self.targets, value, window, mode, own_hooks=own, work=self._work,
                           min_work=TWIN_MIN_WORK, tau=tau)

    def forward(self, x: Tensor, rows: Tensor, *, grad: bool = False, replace: tuple[LayerKey | None, Tensor] | None
                = None, fast: bool = False, targets: Sequence[Target] | None = None,
                rules: RuleMap | None = None) -> TorchRun:
        if fast and not grad:
            runner, extra = self._fast, {}
        else:
            runner, extra = self.session, {"rules": rules}
        if replace is not None and replace[0] is None:
            run = runner.forward(replace[1], rows, grad=grad, **extra)
            value = run.input
        elif replace is not None:
            run, value = self._replaced(runner, x, rows, replace[0], replace[1], grad, extra)
        else:
            run = runner.forward(x, rows, grad=grad, **extra)
            value = run.input if self.wrt is None else run.record.acts[self.wrt]
        found = self.targets if targets is None else targets
        return TorchRun(run.record, value, [t.score(run.record) for t in found])

    @staticmethod
    def _replaced(runner: Session | InferenceSession, x: Tensor, rows: Tensor, layer: LayerKey, value: Tensor,
                  grad: bool, extra: dict[str, Any]) -> tuple[Forward, Tensor]:
        leaf = value.detach().requires_grad_(grad)

        def replace(_module: nn.Module, _inputs: object, output: object) -> Tensor:
            if not isinstance(output, Tensor) or output.shape != leaf.shape:
                shape = list(output.shape) if isinstance(output, Tensor) else type(output).__name__
                raise ConvscopeError(f"layer {layer!r} returned {shape} where {list(leaf.shape)} was expected",
                                     "Attribute to a layer whose output is one tensor of a fixed shape.")
            return leaf

        handle = runner.module(layer).register_forward_hook(replace, prepend=True)
        try:
            run = runner.forward(x, rows, grad=grad, **extra)
        finally:
            handle.remove()
        return run, leaf

    def evaluate(self, x: Tensor, rows: Tensor, *, replace: tuple[LayerKey | None, Tensor] | None = None,
                 targets: Sequence[Target] | None = None, spread: bool = False) -> list[Tensor]:
        """The targets' scores (no gradients) for one chunk, on the runner of ``fast`` evaluations;
        ``spread``: ``x`` is one sample whose evaluation every row of ``rows`` shares."""
        found = self.targets if targets is None else list(targets)
        if spread and self.inputs is not None:  # per-sample arguments: every row its own evaluation
            x, spread = x.expand(len(rows), *x.shape[1:]), False
        if not spread:
            return [s.detach() for s in self.forward(x, rows, replace=replace, fast=True, targets=found).scores]
        record = self.forward(x, rows[:1], replace=replace, fast=True, targets=[]).record
        n = len(rows)

        shared = Record(repeat_rows(record.output, n), {k: repeat_rows(v, n) for k, v in record.acts.items()}, rows)
        return [t.score(shared).detach() for t in found]

    def take_rows(self, rows: Tensor, chunk: Chunk) -> Tensor:
        """The user-batch rows of a chunk's samples."""
        return rows[torch.from_numpy(chunk.host)]

    def gaussian(self, count: int, like: Tensor, seed: int) -> Tensor:
        """``count`` standard normal samples shaped like one sample of ``like``, drawn on its device
        (:func:`~convscope.methods.draws.gaussian_draws`)."""
        return gaussian_draws(count, like.shape[1:], seed, like=like)

    def values(self, x: Tensor, rows: Tensor) -> Tensor:
        if self.wrt is None:
            return x
        parts = [v for _, v in self.batches().map(
            x.shape[0], lambda r: self.forward(x[r], rows[r], targets=[]).value.detach())]
        return tensors.cat(parts)

    def scores(self, x: Tensor, rows: Tensor, value: Tensor, targets: Sequence[Target] | None = None) -> list[Tensor]:
        found = self.targets if targets is None else list(targets)

        def score(r: slice) -> list[Tensor]:
            return self.evaluate(x[r], rows[r], replace=(self.wrt, value[r]), targets=found)

        parts = [p for _, p in self.batches().map(value.shape[0], score)]
        return [tensors.cat([p[i] for p in parts]) for i in range(len(found))]

    def batches(self, max_batch: MaxBatch = _DEFAULT) -> Batches:
        return Batches(self.max_batch if max_batch is _DEFAULT else max_batch, self.device)

    def expansion(self, r: slice, per: int, like: Tensor) -> Chunk:
        host, sample, k = expansion_rows(r, per, like.device)
        return Chunk(sample, k, host.numpy(), np.arange(r.start, r.stop) % per)

    def accumulate(self, n: int, per: int, run: Callable[[Chunk], list[Tensor]], like: Tensor,
                   max_batch: MaxBatch = _DEFAULT) -> list[Tensor]:
        sums: list[Tensor] = []
        for _, (chunk, parts) in self.batches(max_batch).map(n * per, lambda r: self._chunk(r, per, run, like)):
            if not sums:
                sums = [torch.zeros(n, *p.shape[1:], dtype=p.dtype, device=p.device) for p in parts]
            for total, p in zip(sums, parts):
                total.index_add_(0, chunk.sample.to(total.device), p)
        return sums

    @property
    def plan_device(self) -> torch.device:
        return self.device

    def plan(self, t: Tensor, like: Tensor) -> Tensor:
        return t.to(like.device, like.dtype)

    def _chunk(self, r: slice, per: int, run: Callable[[Chunk], list[Tensor]], like: Tensor
               ) -> tuple[Chunk, list[Tensor]]:
        chunk = self.expansion(r, per, like)
        return chunk, run(chunk)

    def compiled(self, key: Hashable, fn: Callable[..., T]) -> Callable[..., T]:
        return lambda *args: fn(self, *args)
