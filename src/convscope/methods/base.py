"""The template every attribution method follows, on PyTorch and Keras models alike.

``attribute`` = check the input -> convert the target(s) at the API edge -> resolve ``wrt`` ->
:meth:`Method._prepare` (a method that picks layers, like the CAM family, does it here) -> open
the backend's :class:`~convscope.backends.protocol.Engine` (eval mode, probes; undone on exit)
-> split the batch into chunks of at most ``max_batch`` samples -> ``_compute`` each chunk ->
concatenate. ``_compute`` is the one contract: no method overrides ``attribute``, so every
wrapper (noise tunnels, :class:`~convscope.methods.AugSmooth`) composes with every method by
calling the wrapped method's ``_compute`` on its own inputs inside the same engine.

Methods that evaluate the model on many modified copies of each sample (integrated-gradient
steps, noise draws, occlusion windows, masks) set ``expands = True``: their ``_compute`` gets
every row at once and splits its own evaluations (``engine.accumulate``), so no model call sees
more than ``max_batch`` samples. ``max_batch="auto"`` sizes the chunks from free memory.

``rows`` tells ``_compute`` which rows of the user's batch its samples are (targets such as
``Class([3, 0, 5])`` pick each sample's class with them). The backend is chosen from the model
(:func:`~convscope.backends.dispatch.backend_of`); method code reads tensors only through
``engine.ops`` (see :mod:`convscope.backends.protocol`).

The constructor stores configuration only: no hooks, no mode switches, no copies.

Example::

    class Saliency(Method):
        def _compute(self, engine, x, rows, targets, wrt):
            run = engine.forward(x, rows, grad=True)
            return [run.gradients(i, [run.value])[0] for i in range(len(targets))]
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, overload

from convscope.backends.dispatch import backend_of, framework_of
from convscope.backends.protocol import Backend, Engine, Tensor
from convscope.backends.torch.backend import check_input
from convscope.backends.torch.batching import MaxBatch, check_max_batch
from convscope.backends.torch.inputs import Inputs, check_attributable
from convscope.errors import ConvscopeError
from convscope.formats import FROM_PYTHON, hidden_layers
from convscope.rules import RuleMap
from convscope.targets import Target, TargetLike

if TYPE_CHECKING:
    from convscope.render.display import DisplayKind

Wrt = Any  # a layer name or object (None or "input": the input)
Rows = Tensor
R = TypeVar("R")

__all__ = ["MaxBatch", "Method", "Rows", "Wrapper", "Wrt", "check_input", "check_max_batch", "chunked", "chunks",
           "display_kind", "numel", "wrapped_method"]


def chunks(n: int, max_batch: int | None) -> list[slice]:
    """Row slices covering ``range(n)`` with at most ``max_batch`` rows each (a fixed size;
    ``"auto"`` sizes are learned while running: see :class:`~convscope.backends.torch.batching.Batches`)."""
    step = n if max_batch is None else max_batch
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def chunked(engine: Engine, n: int, fn: Callable[[slice], list[Tensor]]) -> list[Tensor]:
    """``fn(rows)`` over chunks of at most ``max_batch`` of ``n`` rows, each output concatenated."""
    parts = [part for _, part in engine.batches().map(n, fn)]
    return [engine.ops.cat([p[i] for p in parts]) for i in range(len(parts[0]))]


def numel(x: Tensor) -> int:
    """Input elements per sample of a batch ``x``."""
    return math.prod(int(d) for d in x.shape[1:])


def wrapped_method(method: Any, use: Any, example: str) -> Method:
    """What a wrapper (noise tunnel, AugSmooth) wraps: ``method`` if it is a method, else
    ``use(method)`` for a model, with a clear error when ``use`` is not a method class
    (``example`` names one)."""
    if isinstance(method, Method):
        return method
    if not (isinstance(use, type) and issubclass(use, Method)):
        raise ConvscopeError(f"use={use!r} is not an attribution method class",
                             f"Pass a class such as {example}, or a method instance as the first argument.")
    return use(method)


class Method(ABC):
    """An attribution method over ``model``: ``Method(model, max_batch=...).attribute(x, target)``.

    ``model`` is a ``torch.nn.Module`` (inputs ``[N, C, ...]`` torch tensors) or a Keras model
    (inputs ``[N, ..., C]`` numpy arrays or tf tensors, maps ``tf.Tensor``). ``max_batch`` is the
    most samples per model evaluation (an int, ``"auto"`` or None for no limit); results never
    depend on it.
    """

    name: ClassVar[str] = ""
    expands: ClassVar[bool] = False  # True: _compute gets all rows and chunks its own evaluations
    #: the frameworks this method runs on (:func:`~convscope.backends.dispatch.framework_of`; a method
    #: using framework-specific code declares fewer, one reading layers or ReLU rules leaves out
    #: ``"torchscript"``, whose layers take no hooks)
    frameworks: ClassVar[tuple[str, ...]] = ("torch", "torchscript", "tf")
    #: the command line's per-method options this method takes (``layer``, ``eigen_smooth``)
    options: ClassVar[frozenset[str]] = frozenset()
    #: True where every pass that scores a target sees the user's input unchanged, so a target
    #: picked from the pass (:class:`~convscope.targets.Predicted`) is the model's prediction
    scores_input: ClassVar[bool] = False
    #: how a map is shown (:mod:`convscope.render.display`): ``"magnitude"`` (|map|), ``"positive"``
    #: (the evidence for the target) or ``"relative"`` (min..max of a map near a common level)
    display: ClassVar[DisplayKind] = "magnitude"
    #: True for methods that read a transformer's attention (attention rollout): runs over every
    #: method leave them out on models without attention modules (:func:`~convscope.methods.registry.applicable`)
    needs_attention: ClassVar[bool] = False
    #: whether a map attributing the input is shaped like it (not a CAM's ``[N, L, ...]``): a
    #: tuple of inputs then gets a tuple of maps
    maps_like_input: ClassVar[bool] = True

    def __init__(self, model: Any, *, max_batch: MaxBatch = None) -> None:
        self.backend: Backend = backend_of(model)
        framework = framework_of(model)
        if framework == "torchscript" and framework not in self.frameworks:
            raise hidden_layers(type(self).__name__, "Use a method that needs no layer (such as Saliency, "
                                f"IntegratedGradients or Occlusion), or {FROM_PYTHON}.")
        if framework not in self.frameworks:
            raise ConvscopeError(f"{type(self).__name__} runs on {' and '.join(self.frameworks)} models only, "
                                 f"not on a {self.backend.name} model",
                                 "Pick another method (`convscope methods` lists them, with the frameworks they run on).")
        self.model = model
        self.max_batch = check_max_batch(max_batch)

    @overload
    def attribute(self, x: Any, target: TargetLike | None = None, wrt: Wrt = None, *,
                  forward_args: Any = None, forward_kwargs: dict[str, Any] | None = None,
                  return_convergence_delta: bool = False) -> Any: ...

    @overload
    def attribute(self, x: Any, target: None = None, wrt: Wrt = None, *, targets: Sequence[TargetLike],
                  forward_args: Any = None, forward_kwargs: dict[str, Any] | None = None,
                  return_convergence_delta: bool = False) -> list[Any]: ...

    def attribute(self, x: Any, target: TargetLike | None = None, wrt: Wrt = None, *,
                  targets: Sequence[TargetLike] | None = None, forward_args: Any = None,
                  forward_kwargs: dict[str, Any] | None = None, return_convergence_delta: bool = False) -> Any:
        """The attribution of ``target`` for each sample of ``x``, shaped like ``x`` (or like the
        output of layer ``wrt``; CAM methods: one map per layer). With ``targets=[...]``: one such
        map per target, from one forward pass per chunk of ``max_batch`` samples.

        ``x`` is one tensor or a tuple of the model's input tensors (then the maps are a tuple in
        the same order); ``forward_args``/``forward_kwargs`` are further arguments of the model,
        held fixed (tensors whose first dimension is the batch size are per sample);
        ``target=None`` scores a model with one output per sample. ``return_convergence_delta``:
        ``(maps, delta)`` (:meth:`attribute_with_delta`). See :mod:`convscope.backends.torch.inputs`.
        """
        if return_convergence_delta:
            return self.attribute_with_delta(x, target, wrt, targets=targets, forward_args=forward_args,
                                             forward_kwargs=forward_kwargs)
        return self._run(x, target, wrt, targets, self._attribute, forward_args, forward_kwargs)

    def attribute_with_delta(self, x: Any, target: TargetLike | None = None, wrt: Wrt = None, *,
                             targets: Sequence[TargetLike] | None = None, forward_args: Any = None,
                             forward_kwargs: dict[str, Any] | None = None) -> Any:
        """``(maps, delta)`` (a pair per target with ``targets=[...]``): the maps and the completeness
        gap ``sum(map) - (s(end) - s(start))`` of each path, Captum's ``return_convergence_delta``
        (integrated gradients: one per sample; GradientSHAP: one per sample and draw, row
        ``n * samples + k``; a noise tunnel: one per sample and noisy copy, likewise)."""
        self._check_delta()

        def body(engine: Engine, xs: Tensor, found: list[Target], key: Any) -> list[tuple[Tensor, Tensor]]:
            return self._with_delta(engine, xs, engine.rows(slice(0, int(xs.shape[0]))), found, key)

        return self._run(x, target, wrt, targets, body, forward_args, forward_kwargs)

    def _check_delta(self) -> None:
        """A clear error where this method has no convergence delta."""
        raise ConvscopeError(f"{type(self).__name__} has no convergence delta",
                             "Ask for it from IntegratedGradients, GradientSHAP or a noise tunnel around "
                             "IntegratedGradients.")

    def _with_delta(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any
                    ) -> list[tuple[Tensor, Tensor]]:
        """The maps of all of ``x`` and their deltas (methods with :meth:`_check_delta` passing)."""
        raise NotImplementedError

    def _run(self, x: Any, target: TargetLike | None, wrt: Wrt, targets: Sequence[TargetLike] | None,
             body: Callable[[Engine, Tensor, list[Target], Any], list[R]], forward_args: Any = None,
             forward_kwargs: dict[str, Any] | None = None) -> R | list[R]:
        """Check, convert the targets, prepare, and call ``body`` inside the backend's engine."""
        backend = self.backend
        x, inputs = backend.inputs(x, forward_args, forward_kwargs)
        found, many = backend.targets(target, targets, int(x.shape[0]))
        if not self.scores_input and any(t.follows_pass() for t in found):
            raise ConvscopeError(f"{type(self).__name__} scores changed copies of the input, whose top class may differ from the "
                                 "prediction: it cannot follow Predicted()",
                                 "Pass the predicted classes instead: target=model(x).argmax(1).tolist().")
        key = None if wrt is None or (isinstance(wrt, str) and wrt == "input") else backend.layer_key(self.model, wrt)
        check_attributable(inputs, key)
        self._prepare(x, key)
        rules = self._rules()
        with backend.engine(self, x, found, key, self._layers(), rules, inputs) as engine:
            results = body(engine, x, found, key)
        if inputs is not None and key is None and self.maps_like_input:
            results = [_as_given(r, inputs) for r in results]
        return results if many else results[0]

    def _attribute(self, engine: Engine, x: Tensor, targets: list[Target], wrt: Any) -> list[Tensor]:
        """One map per target for all of ``x``: ``_compute`` over chunks of ``max_batch`` rows."""
        n = int(x.shape[0])
        if self.expands:
            return self._compute(engine, x, engine.rows(slice(0, n)), targets, wrt)
        return chunked(engine, n, lambda r: self._compute(engine, x[r.start:r.stop], engine.rows(r), targets, wrt))

    def _prepare(self, x: Tensor, wrt: Any) -> None:  # noqa: B027 - most methods need nothing
        """Called before the engine opens, with the checked input and the resolved ``wrt``."""

    def _layers(self) -> tuple[Any, ...]:
        """Layers the engine records besides the targets' (the CAM layers)."""
        return ()

    def _rules(self) -> RuleMap | None:
        """The backward rules this method's forward passes use (checked when the engine opens)."""
        return None

    @abstractmethod
    def _compute(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any) -> list[Tensor]:
        """One map per target for the samples ``x`` (rows ``rows`` of the full batch)."""

    def _model_name(self) -> str:
        return str(getattr(self.model, "name", None) or type(self.model).__name__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._model_name()}, max_batch={self.max_batch!r})"


class Wrapper(Method):
    """A method around another one (``self.method``), in the same engine: it prepares, records
    and applies the rules the wrapped method asks for."""

    method: Method

    def _prepare(self, x: Tensor, wrt: Any) -> None:
        self.method._prepare(x, wrt)

    def _layers(self) -> tuple[Any, ...]:
        return self.method._layers()

    def _rules(self) -> RuleMap | None:
        return self.method._rules()

    @property  # type: ignore[override]
    def maps_like_input(self) -> bool:  # type: ignore[override]
        return self.method.maps_like_input

    @property
    def last_layers(self) -> tuple[str, ...]:
        """The wrapped method's layers of the latest call (CAM methods)."""
        return getattr(self.method, "last_layers", ())


def _as_given(result: Any, inputs: Inputs) -> Any:
    """A map of the attributed input (or a ``(map, delta)`` pair) shaped as the user's inputs came."""
    if isinstance(result, tuple):
        return (inputs.maps(result[0]), *result[1:])
    return inputs.maps(result)


def display_kind(method: Method | type[Method]) -> DisplayKind:
    """How ``method``'s maps are shown (its ``display``): a wrapper's (noise tunnel, AugSmooth)
    instance shows what the method it wraps shows. Pass the result to
    :func:`convscope.render.heat`. Example: ``display_kind(AugSmooth(RISE(model)))`` is ``"relative"``.
    """
    while isinstance(method, Wrapper):
        method = method.method
    return method.display
