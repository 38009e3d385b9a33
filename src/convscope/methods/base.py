"""The template every attribution method follows.

``attribute`` = validate the input -> convert the target(s) at the API edge -> open a scoped
:class:`~convscope.backends.torch.Session` (eval mode, probes, backward rules) -> split the
batch into chunks of at most ``max_batch`` samples -> ``_compute`` each chunk -> concatenate.
A method writes only ``_compute`` (and, optionally, ``_rules``).

Methods that evaluate the model on many modified copies of each sample (integrated-gradient
steps, noise draws, occlusion windows, masks) set ``expands = True``: their ``_compute`` gets
every row at once and splits its own evaluations with :class:`~convscope.methods.batching.Batches`,
so no model call sees more than ``max_batch`` samples. ``max_batch="auto"`` sizes the chunks
from free memory and halves them after an out-of-memory error.

``rows`` tells ``_compute`` which rows of the user's batch its samples are: a ``slice``, or a
LongTensor with one row index per sample when a method evaluates expanded batches (targets
such as ``Class([3, 0, 5])`` pick each sample's class with it).

The constructor stores configuration only: no hooks, no mode switches, no copies.

Example::

    class Saliency(Method):
        def _compute(self, session, x, rows, targets, wrt):
            run = session.forward(x, rows)
            return gradients(run, targets)         # one map per target for these rows
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar, overload

import torch
from torch import Tensor, nn

from convscope.backends.tf import wants_keras
from convscope.backends.torch.probes import LayerKey
from convscope.backends.torch.inference import InferenceSession
from convscope.backends.torch.session import Forward, Session
from convscope.errors import ConvscopeError
from convscope.methods.batching import Batches, MaxBatch
from convscope.rules import RuleMap
from convscope.targets import Target, TargetLike, as_targets

Wrt = str | nn.Module | None
Rows = slice | Tensor
R = TypeVar("R")


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


def check_max_batch(max_batch: MaxBatch) -> MaxBatch:
    """``max_batch`` if it is None, a positive int or ``"auto"`` (sized from free memory)."""
    if max_batch == "auto" and isinstance(max_batch, str):
        return max_batch
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise ConvscopeError(f"max_batch={max_batch!r} must be a positive int, 'auto' or None",
                             "max_batch is the most samples per model evaluation, e.g. max_batch=16; "
                             "'auto' sizes it from free memory.")
    return max_batch


def chunks(n: int, max_batch: int | None) -> list[slice]:
    """Row slices covering ``range(n)`` with at most ``max_batch`` rows each (a fixed size;
    ``"auto"`` sizes are learned while running: see :class:`~convscope.methods.batching.Batches`)."""
    step = n if max_batch is None else max_batch
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def row_index(rows: Rows, n: int) -> Tensor:
    """The user-batch row of each of the ``n`` samples of a chunk, as a LongTensor."""
    if isinstance(rows, Tensor):
        return rows
    return torch.arange(rows.start or 0, (rows.start or 0) + n)


def gradients(run: Forward, targets: list[Target]) -> list[Tensor]:
    """``d score_t / d run.input`` for each target (zeros where a score does not depend on it)."""
    grads = []
    for i, target in enumerate(targets):
        score = target.score(run.record)
        grad = None
        if score.requires_grad:
            (grad,) = torch.autograd.grad(score.sum(), run.input, retain_graph=i < len(targets) - 1,
                                          allow_unused=True)
        grads.append(torch.zeros_like(run.input) if grad is None else grad)
    return grads


class Attributed:
    """The tensor a map is about: the model input (``wrt=None``) or the output of layer ``wrt``.

    ``value`` reads it for some inputs; ``forward`` runs the model with it *set* to a given
    tensor (for a layer: the inputs run as usual and a forward hook, registered for that one
    call, replaces the layer's output), so path and perturbation methods work on layers too.
    After :meth:`evaluate_on_twin` (the perturbation methods) the no-grad evaluations run on the
    session's inference twin.
    """

    def __init__(self, session: Session, wrt: LayerKey | None) -> None:
        self.session = session
        self.wrt = wrt
        self.runner: Session | InferenceSession = session

    def evaluate_on_twin(self, work: int) -> None:
        """Run the no-grad evaluations from now on where ``session.inference(work)`` says."""
        self.runner = self.session.inference(work)

    def value(self, x: Tensor, rows: Rows) -> Tensor:
        """The attributed tensor at inputs ``x`` (detached)."""
        if self.wrt is None:
            return x
        return self.runner.forward(x, rows, grad=False).record.acts[self.wrt].detach()

    def forward(self, x: Tensor, rows: Rows, value: Tensor, *, grad: bool) -> Forward:
        """Run the model with the attributed tensor set to ``value``; ``Forward.input`` is that
        tensor as a leaf (requiring grad when ``grad``). ``x`` (one row per row of ``value``)
        feeds the layers below ``wrt`` and is unused for ``wrt=None``."""
        runner = self.session if grad else self.runner
        if self.wrt is None:
            return runner.forward(value, rows, grad=grad)
        leaf = value.detach().requires_grad_(grad)
        layer = self.wrt

        def replace(_module: nn.Module, _inputs: object, output: object) -> Tensor:
            if not isinstance(output, Tensor) or output.shape != leaf.shape:
                shape = list(output.shape) if isinstance(output, Tensor) else type(output).__name__
                raise ConvscopeError(f"layer {layer!r} returned {shape} where {list(leaf.shape)} was expected",
                                     "Attribute to a layer whose output is one tensor of a fixed shape.")
            return leaf

        handle = runner.module(layer).register_forward_hook(replace, prepend=True)
        try:
            run = runner.forward(x, rows, grad=grad)
        finally:
            handle.remove()
        return Forward(run.record, leaf)

    def values(self, x: Tensor, rows: Tensor, batches: Batches) -> Tensor:
        """:meth:`value` for all of ``x``, in chunks."""
        if self.wrt is None:
            return x
        return torch.cat([v for _, v in batches.map(x.shape[0], lambda r: self.value(x[r], rows[r]))])

    def scores(self, x: Tensor, rows: Tensor, value: Tensor, targets: list[Target], batches: Batches) -> list[Tensor]:
        """Each target's score with the attributed tensor set to ``value`` (no gradients), in chunks."""
        def score(r: slice) -> list[Tensor]:
            record = self.forward(x[r], rows[r], value[r], grad=False).record
            return [t.score(record).detach() for t in targets]

        parts = [p for _, p in batches.map(x.shape[0], score)]
        return [torch.cat([p[i] for p in parts]) for i in range(len(targets))]


def wrapped_method(method: Any, use: Any, kinds: tuple[type, ...], example: str) -> Any:
    """What a wrapper (noise tunnel, AugSmooth) wraps: ``method`` if it is an instance of ``kinds``,
    else ``use(method)`` for a model (a Keras model dispatches to Keras), with a clear error when
    ``use`` is not a method class (``example`` names one)."""
    if isinstance(method, kinds):
        return method
    if not (isinstance(use, type) and issubclass(use, (Method, *kinds))):
        raise ConvscopeError(f"use={use!r} is not an attribution method class",
                             f"Pass a class such as {example}, or a method instance as the first argument.")
    return use(method)


class Method(ABC):
    """An attribution method over ``model``: ``Method(model, max_batch=...).attribute(x, target)``.

    ``max_batch`` is the most samples per model evaluation (an int, ``"auto"`` or None for no
    limit); results never depend on it.
    """

    name: ClassVar[str] = ""
    expands: ClassVar[bool] = False  # True: _compute gets all rows and chunks its own evaluations

    def __new__(cls, *args: Any, **kwargs: Any) -> Method:  # noqa: PYI034 - a Keras model gets another class
        """A Keras model (or a Keras method, for wrappers) gets the Keras implementation of ``cls``
        from :mod:`convscope.backends.tf`, built with the same arguments (TensorFlow loads only then)."""
        first = args[0] if args else kwargs.get("model", kwargs.get("method"))
        if wants_keras(first):
            from convscope.backends.tf import implementation

            return implementation(cls)(*args, **kwargs)
        return super().__new__(cls)

    def __init__(self, model: nn.Module, *, max_batch: MaxBatch = None) -> None:
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
        return self._run(x, target, wrt, targets, self._attribute)

    def _run(self, x: Tensor, target: TargetLike | None, wrt: Wrt, targets: Sequence[TargetLike] | None,
             body: Callable[[Session, Tensor, list[Target], LayerKey | None], list[R]]) -> R | list[R]:
        """Validate, convert the targets, and call ``body`` inside a scoped session."""
        x = check_input(x)
        found, many = as_targets(target, targets, x.shape[0])
        if wrt == "input":
            wrt = None
        layers = [key for t in found for key in t.layers()] + ([wrt] if wrt is not None else [])
        stop_early = not any(t.reads_output() for t in found)  # layer targets: no need to run the model's rest
        with Session(self.model, layers=layers, rules=self._rules(), stop_early=stop_early) as session:
            results = body(session, x, found, wrt)
        return results if many else results[0]

    def _attribute(self, session: Session, x: Tensor, targets: list[Target], wrt: LayerKey | None) -> list[Tensor]:
        """One map per target for all of ``x``: ``_compute`` over chunks of ``max_batch`` rows."""
        if self.expands:
            return self._compute(session, x, slice(0, x.shape[0]), targets, wrt)
        batches = Batches(self.max_batch, x.device)
        parts = [part for _, part in batches.map(x.shape[0], lambda rows: self._compute(session, x[rows], rows,
                                                                                         targets, wrt))]
        return [torch.cat([p[i] for p in parts]) if len(parts) > 1 else parts[0][i] for i in range(len(targets))]

    def _rules(self) -> RuleMap | None:
        """The backward rules applied during this method's forward passes (None: plain autograd)."""
        return None

    @abstractmethod
    def _compute(self, session: Session, x: Tensor, rows: Rows, targets: list[Target],
                 wrt: LayerKey | None) -> list[Tensor]:
        """One map per target for the samples ``x`` (rows ``rows`` of the full batch)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, max_batch={self.max_batch!r})"
