"""The backend protocol: what an attribution method needs from a framework, written down once.

Every method in :mod:`convscope.methods` is written once against three small interfaces, and
runs on PyTorch models and on Keras models alike:

- :class:`Backend` (one per framework, chosen from the model by
  :func:`~convscope.backends.dispatch.backend_of`): checks the
  input, finds a CAM method's default layer, names layers, and opens an :class:`Engine` for one
  ``attribute`` call (eval mode, probes, backward rules, undone on exit);
- :class:`Engine`: runs the model (:meth:`Engine.forward` -> :class:`Run`, whose
  :meth:`Run.gradients` differentiates a target's score), chunks evaluations by ``max_batch``
  (:meth:`Engine.batches`, :meth:`Engine.accumulate`) and compiles a method's per-chunk function
  (:meth:`Engine.compiled`: the identity on PyTorch, a ``tf.function`` with an open batch
  dimension on Keras);
- :class:`Ops`: the tensor operations methods use, with the framework's layout (``[N, C, ...]``
  on PyTorch, ``[N, ..., C]`` on Keras) behind :attr:`Ops.channel_axis` and :meth:`Ops.space`.

Rules for method code: read tensors only through ``engine.ops``; put everything that a compiled
function's graph depends on (options, layers) in its ``key`` (the engine adds the targets'
structure, ``wrt`` and the rules); give :meth:`Engine.compiled` a bound method of the method
(the Keras engine keeps a model-less copy of it, so cached graphs never keep a model alive).

Example::

    class Saliency(Method):
        def _compute(self, engine, x, rows, targets, wrt):
            return engine.compiled(("saliency",), self._maps)(x, rows)

        def _maps(self, engine, x, rows):
            run = engine.forward(x, rows, grad=True)
            return [run.gradients(i, [run.value])[0] for i in range(len(run.scores))]
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np


Tensor = Any  # a torch.Tensor or a tf.Tensor, as the backend makes them
T = TypeVar("T")


@dataclass(frozen=True)
class Chunk:
    """Rows of an expanded evaluation: every sample ``s`` of ``n`` expanded into ``per`` evaluations,
    row ``s * per + k``. ``sample`` and ``k`` (on the device) give each row's sample and ``k``;
    ``host`` and ``host_k`` are ``sample`` and ``k`` on the host.

    Example: rows 4..6 of an expansion by 3 -> ``sample = [1, 2, 2]``, ``k = [1, 0, 1]``."""

    sample: Tensor
    k: Tensor
    host: np.ndarray
    host_k: np.ndarray


class Ops(Protocol):
    """Tensor operations in one framework's layout (a module of functions per backend)."""

    channel_axis: int  # 1 (PyTorch, channels-first) or -1 (Keras, channels-last)

    def space(self, t: Tensor) -> tuple[int, ...]: """The spatial axes of ``t`` ``[N, C, *S]`` / ``[N, *S, C]``."""
    def spatial_shape(self, t: Tensor) -> tuple[int, ...]: """The spatial sizes of ``t``."""
    def rank(self, t: Tensor) -> int: """The number of dimensions of ``t``."""
    def per_channel(self, w: Tensor, like: Tensor) -> Tensor: """``w [n, K]`` shaped to broadcast over ``like``."""
    def per_row(self, v: Tensor, like: Tensor) -> Tensor: """``v [m]`` shaped to broadcast over ``like [m, ...]``."""
    def channel_maps(self, acts: Tensor, samples: Tensor, channels: Tensor) -> Tensor:
        """The single-channel maps ``acts[samples[i], channels[i]]`` as a batch with one channel."""
    def mirror(self, t: Tensor) -> Tensor: """``t`` mirrored left to right (its last spatial axis reversed)."""
    def sum(self, t: Tensor, axes: Sequence[int] | int, keepdims: bool = False) -> Tensor: ...
    def mean(self, t: Tensor, axes: Sequence[int] | int, keepdims: bool = False) -> Tensor: ...
    def amax(self, t: Tensor, axes: Sequence[int] | int, keepdims: bool = False) -> Tensor: ...
    def amin(self, t: Tensor, axes: Sequence[int] | int, keepdims: bool = False) -> Tensor: ...
    def relu(self, t: Tensor) -> Tensor: """``max(t, 0)`` (never a ReLU that rules may patch)."""
    def where(self, cond: Tensor, a: Tensor, b: Tensor) -> Tensor: ...
    def divide(self, num: Tensor, den: Tensor) -> Tensor: """``num / den`` where ``den != 0``, else 0."""
    def softmax(self, t: Tensor, axis: int) -> Tensor: ...
    def zeros_like(self, t: Tensor) -> Tensor: ...
    def zeros(self, shape: Sequence[int], like: Tensor) -> Tensor: """Zeros of ``shape`` in ``like``'s dtype and device."""
    def full(self, shape: Sequence[int], value: float, like: Tensor) -> Tensor: ...
    def cat(self, parts: Sequence[Tensor], axis: int = 0) -> Tensor: ...
    def stack(self, parts: Sequence[Tensor], axis: int = 0) -> Tensor: """``parts`` along a new axis ``axis``."""
    def take(self, t: Tensor, index: Tensor) -> Tensor: """Rows ``index`` of ``t`` (axis 0)."""
    def channel(self, t: Tensor, c: int) -> Tensor: """Channel ``c`` of ``t``: ``[N, *space]``."""
    def flat(self, t: Tensor) -> Tensor: """``t`` as ``[N, rest]`` (row-major)."""
    def vector(self, t: Tensor) -> Tensor: """``t`` as one dimension."""
    def fill_rows(self, like: Tensor, value: float) -> Tensor: """``[N]`` of ``value``, one per row of ``like``."""
    def is_tensor(self, value: Any) -> bool: """Whether ``value`` is a tensor of this framework."""
    def pick(self, t: Tensor, index: Tensor) -> Tensor:
        """One column of ``t [N, K]`` per row: ``t[:, index]`` for one index, ``t[n, index[n]]`` for
        ``index [N]``, ``t[n, index[n, j]]`` for ``index [N, k]``. Keras clips an index out of range (a
        graph cannot raise: check the values on the host)."""
    def top_k(self, t: Tensor, k: int) -> Tensor:
        """The columns of the ``k`` largest values of each row of ``t [N, P]``, largest first; ties keep
        the lower column first (stable)."""
    def detach(self, t: Tensor) -> Tensor: ...
    def resize(self, maps: Tensor, size: Sequence[int], align_corners: bool = False) -> Tensor:
        """Bilinear resize of a batch of maps to ``size`` (half-pixel centres unless ``align_corners``)."""
    def principal_direction(self, t: Tensor) -> Tensor:
        """The first right singular vector ``[n, K]`` of each sample's maps ``t`` (already centred), as
        ``[positions, K]``, with the sign the SVD routine gives."""
    def nonzero(self, mask: Tensor) -> tuple[Tensor, Tensor]: """The (row, column) pairs where ``mask [n, K]`` holds."""
    def scatter(self, t: Tensor, rows: Tensor, cols: Tensor, values: Tensor) -> Tensor:
        """``t [n, K]`` with ``t[rows[i], cols[i]] = values[i]`` (a new tensor)."""
    def index_add(self, total: Tensor, index: Tensor, part: Tensor) -> Tensor:
        """``total`` with row ``i`` of ``part`` added to row ``index[i]`` (may update ``total`` in place)."""
    def abs(self, t: Tensor) -> Tensor: ...
    def one_hot(self, index: Tensor, depth: int, like: Tensor) -> Tensor: """``[m, depth]`` in ``like``'s dtype."""
    def outer(self, channels: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        """``[m, C, H, W]`` / ``[m, H, W, C]``: the products (bool: the ``and``) of per-axis vectors
        ``[m, C]``, ``[m, H]``, ``[m, W]``."""
    def gaussian_blur(self, x: Tensor, sigma: float) -> Tensor: """Each channel blurred (reflected edges)."""
    def convert(self, value: Any, like: Tensor) -> Tensor | None:
        """An array-like of this framework (or numpy) in ``like``'s dtype and device, else None."""
    def constant(self, a: np.ndarray, like: Tensor) -> Tensor: """``a`` as a tensor on ``like``'s device."""
    def numpy(self, t: Tensor) -> np.ndarray: ...


class Run(Protocol):
    """One forward pass: the scores of the targets, and gradients of them."""

    value: Tensor  # the attributed tensor: the input, layer ``wrt``'s output, or the replacement given
    scores: list[Tensor]  # one ``[n]`` score per target

    def act(self, key: Hashable) -> Tensor: """The recorded output of a probed layer."""
    def gradients(self, i: int, wrt: Sequence[Tensor]) -> list[Tensor]:
        """``d sum(scores[i]) / d t`` for each ``t`` of ``wrt`` (zeros where it does not depend on ``t``)."""


class Batches(Protocol):
    """Runs ``fn`` over consecutive slices of ``range(total)`` of at most ``max_batch`` items."""

    def map(self, total: int, fn: Callable[[slice], T]) -> Iterator[tuple[slice, T]]: ...


class Engine(Protocol):
    """The model of one ``attribute`` call, ready to run (see the module docstring)."""

    ops: Ops
    wrt: Hashable | None  # the attributed layer (None: the input)
    max_batch: Any
    #: how the attributed input reaches the model (:class:`~convscope.backends.torch.inputs.Inputs`:
    #: several tensors, integer ids, forward arguments), None for one float tensor fed as it is
    inputs: Any

    def rows(self, r: slice) -> Tensor: """Rows ``r`` of the user's batch, as the targets read them."""
    def forward(self, x: Tensor, rows: Tensor, *, grad: bool = False, replace: tuple[Hashable | None, Tensor] | None
                = None, fast: bool = False, targets: Sequence[Any] | None = None, rules: Any = None) -> Run:
        """Run the model on ``x``; ``replace=(layer, value)`` sets that layer's output (layer None:
        the input) to ``value``; ``fast``: a no-grad evaluation of a perturbed input that may run on
        a faster copy of the model; ``targets``: which of the call's targets to score (default: all);
        ``rules``: the backward rules at every ReLU (a :class:`~convscope.rules.RuleMap`)."""
    def values(self, x: Tensor, rows: Tensor) -> Tensor: """The attributed tensor at ``x``, chunked, detached."""
    def scores(self, x: Tensor, rows: Tensor, value: Tensor, targets: Sequence[Any] | None = None) -> list[Tensor]:
        """Each target's score (no gradients) with the attributed tensor set to ``value``, chunked."""
    def batches(self, max_batch: Any = ...) -> Batches: """Chunks of at most ``max_batch`` (default: the method's)."""
    def expansion(self, r: slice, per: int, like: Tensor) -> Chunk: """Rows ``r`` of an expansion by ``per``."""
    def accumulate(self, n: int, per: int, run: Callable[[Chunk], list[Tensor]], like: Tensor,
                   max_batch: Any = ...) -> list[Tensor]:
        """Per output, the sum over the ``per`` evaluations of each of ``n`` samples; ``run(chunk)``
        returns one part per output, a row per row of the chunk."""
    def evaluate(self, x: Tensor, rows: Tensor, *, replace: tuple[Hashable | None, Tensor] | None = None,
                 targets: Sequence[Any] | None = None, spread: bool = False) -> list[Tensor]:
        """The targets' scores (no gradients) for one chunk of ``fast`` evaluations; ``spread``: ``x``
        is one sample whose evaluation every row of ``rows`` shares."""
    def take_rows(self, rows: Tensor, chunk: Chunk) -> Tensor: """The user-batch rows of a chunk's samples."""
    def gaussian(self, count: int, like: Tensor, seed: int) -> Tensor:
        """``count`` standard normal samples shaped like one sample of ``like`` (the same numbers
        on every backend for the same device kind: see :mod:`convscope.backends.torch.draws`)."""
    plan_device: Any  # the torch device where plans for this engine are made

    def plan(self, t: Any, like: Tensor) -> Tensor:
        """A channels-first torch batch from a backend-neutral plan (masks, draws), in this engine's
        layout, device and ``like``'s dtype."""
    def compiled(self, key: Hashable, fn: Callable[..., T]) -> Callable[..., T]:
        """``fn`` (a bound method taking the engine first) compiled for the framework, cached by ``key``."""
    def evaluations(self, work: int) -> None: """Announce ``work`` input elements of ``fast`` evaluations."""
    def local(self, value: Tensor, window: tuple[int, int], mode: bool | str, tau: float | None = None
              ) -> tuple[Any | None, Any | None]:
        """An evaluator of copies of the input ``value`` changed inside one box of ``window`` each,
        recomputing only what the change reaches (``.scores(samples, changed, top, bottom, left,
        right, rows)``), or None where plain passes serve (Keras: always); and a report of the
        choice (None on Keras). ``mode``: True (wherever it applies) or ``"auto"``; ``tau``: cap
        each layer's change at ``tau`` of its side (Krypton's projective-field threshold, approximate)."""


class Backend(Protocol):
    """A framework: how inputs are checked and an :class:`Engine` is opened on a model."""

    name: str
    ops: Ops
    cam_ranks: tuple[int, ...]  #: the input ranks the CAM family takes
    cam_layouts: str  #: those inputs in words, for errors
    feature_layouts: dict[int, str]  #: input rank -> the feature map a CAM reads, in words

    def as_input(self, x: Any) -> Tensor: """``x`` as a float batch, else a clear error."""
    def inputs(self, x: Any, args: Any = None, kwargs: Any = None) -> tuple[Tensor, Any]:
        """The attributed input and how it reaches the model (None: as it is), or a clear error for
        input forms this framework lacks."""
    def targets(self, target: Any, targets: Sequence[Any] | None, n: int) -> tuple[list[Any], bool]:
        """The call's targets (:func:`convscope.targets.as_targets`) and whether a list was given."""
    def accepts_rules(self, rules: Any) -> None: """A clear error for a backward rule this framework lacks."""
    def check_rules(self, model: Any, rules: Any) -> None: """:meth:`accepts_rules`, and the rules' layers exist."""
    def feature_key(self, model: Any, key: Any) -> Hashable: """:meth:`layer_key` of a layer with feature maps."""
    def default_layer(self, model: Any, x: Tensor) -> Hashable: """The last layer with a spatial feature map."""
    def layer_key(self, model: Any, key: Any) -> Hashable: """A layer name or object, resolved (clear error if unknown)."""
    def layer_name(self, model: Any, key: Hashable) -> str: ...
    def engine(self, method: Any, x: Tensor, targets: list[Any], wrt: Any, layers: Sequence[Any],
               rules: Any, inputs: Any = None) -> AbstractContextManager[Engine]: ...
