"""The optimization loop: find images that maximize an objective.

Each step: ``image = param()`` (pixels in ``[0, 1]``) -> random ``transforms`` -> the model's
normalization ``(x - mean) / std`` -> forward pass in a scoped
:class:`~convscope.backends.torch.Session` -> ``score`` -> Adam step that *increases* the score
(``maximize=True``). The batch is split into chunks of at most ``max_batch`` images; every chunk
of a step draws the same transforms (a fresh generator per chunk, seeded from the step's seed),
and Adam treats every pixel apart, so the images never depend on ``max_batch``.

``objective`` is one target for every image (``batch=N`` images; e.g. ``Class([0, 1, 2])`` or a
``Diversity`` term), or a list of targets, one image each: ``channels("features.3", "0-15")``
renders 16 channel visualizations in one batch.

Nothing is displayed or written: :func:`render` returns a :class:`Rendered` (the images and the
objective history); :meth:`Rendered.save` writes a labelled grid when asked. The user's model
is never changed (eval mode and probes only inside the session; gradients are taken with
``torch.autograd.grad`` w.r.t. the input, so no parameter's ``.grad`` moves). A Keras model runs
as a :class:`~convscope.backends.tf.as_torch.KerasModule` (:func:`as_module`): the images,
transforms and objectives stay PyTorch tensors ``[N, C, H, W]``, the model's forward and backward
passes are TensorFlow's.

Example::

    result = render(model, channels("features.3", "0-15"), steps=128, preprocess=zoo.preset("shapes-vgg"))
    result.images.shape      # [16, 3, 64, 64]
    result.history[-1]       # each image's objective at the last step
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from convscope.backends.dispatch import is_keras_model
from convscope.backends.torch.forward import model_device
from convscope.backends.torch.session import Session
from convscope.errors import ConvscopeError
from convscope.featurevis.objectives import Diversity, parts
from convscope.featurevis.params import ImageParam
from convscope.featurevis.transforms import Transform, standard
from convscope.methods.base import check_max_batch
from convscope.methods.batching import Batches, MaxBatch
from convscope.targets import Channel, Class, Record, Target, TargetLike, as_target


class Normalization(Protocol):
    """Anything with per-channel ``mean`` and ``std`` (e.g. :class:`convscope.images.Preprocess`)."""

    mean: Sequence[float]
    std: Sequence[float]


@dataclass(frozen=True)
class Rendered:
    """What :func:`render` returns: ``images`` ``[N, C, H, W]`` in ``[0, 1]`` (detached) and
    ``history`` ``[steps, N]``, each image's objective at each step (before that step's update)."""

    images: Tensor
    history: Tensor

    def stuck(self) -> list[bool]:
        """Per image, whether its objective never changed over the steps (``max - min`` of its
        history within float rounding of its size): a unit that never fired gives no gradient, so
        its image is the starting noise blurred by the prior, not a picture of the unit."""
        h = self.history.double()
        spread = h.amax(0) - h.amin(0)
        return (spread <= 1e-6 * (1.0 + h.abs().amax(0))).tolist()

    def pixels(self) -> np.ndarray:
        """The images as uint8 ``[N, H, W, C]``."""
        return self.images.mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()

    def save(self, path: str | os.PathLike[str], labels: Sequence[str] | None = None) -> Path:
        """Write the images as one labelled grid PNG at ``path``; returns the path."""
        from convscope import render as draw

        sheet = draw.grid(list(self.pixels()), labels=labels, tile_size=_tile(self.images), interpolation="nearest")
        return draw.save_png(path, sheet)


def _tile(images: Tensor) -> tuple[int, int]:
    """Tiles of at least 128 pixels, enlarged by an integer factor (crisp pixels)."""
    h, w = images.shape[-2:]
    k = max(1, -(-128 // max(h, w)))
    return h * k, w * k


def normalizer(preprocess: Normalization | None, device: torch.device) -> Callable[[Tensor], Tensor]:
    """``x -> (x - mean) / std`` for ``preprocess`` (identity for None)."""
    if preprocess is None:
        return lambda x: x
    if not (hasattr(preprocess, "mean") and hasattr(preprocess, "std")):
        raise ConvscopeError(f"preprocess={preprocess!r} has no per-channel mean and std",
                             "Pass the model's preprocessing, e.g. zoo.preset('shapes-vgg') or load_model(...).preprocess.")
    mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(preprocess.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return lambda x: (x - mean) / std


def as_module(model: object, layers: Sequence[object] = ()) -> nn.Module:
    """``model`` if it is a torch module; a Keras model as a
    :class:`~convscope.backends.tf.as_torch.KerasModule` recording ``layers`` (its gradients come
    from TensorFlow); else a clear error."""
    if isinstance(model, nn.Module):
        return model
    if is_keras_model(model):
        from convscope.backends.tf.as_torch import KerasModule

        return KerasModule(model, layers)
    raise ConvscopeError(f"the model is a {type(model).__name__}, not a torch.nn.Module or a Keras model",
                         "Pass a PyTorch model or a keras.Model.")


def _identity(x: Tensor, generator: torch.Generator) -> Tensor:
    return x


class Objective:
    """The score of each image: one target for all (``per_sample=False``) or one target per image."""

    def __init__(self, objective: TargetLike | Sequence[TargetLike], batch: int | None,
                 default: int | None = None) -> None:
        if isinstance(objective, (list, tuple)) and objective and not all(isinstance(v, int) for v in objective):
            self.targets = [as_target(t) for t in objective]
            self.per_sample = True
            if batch is not None and batch != len(self.targets):
                raise ConvscopeError(f"batch={batch} but {len(self.targets)} objectives were given (one image each)",
                                     "Leave batch out when passing a list of objectives.")
            self.n = len(self.targets)
        else:
            self.targets = [as_target(objective)]  # type: ignore[arg-type]
            self.per_sample = False
            only = self.targets[0]
            per_class = len(only.index) if isinstance(only, Class) and only.index.dim() else None
            self.n = next((v for v in (batch, per_class, default) if v is not None), 1)
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ConvscopeError(f"batch={batch!r} must be a positive int", "Write e.g. batch=4.")
        for t in self.targets:
            t.check_batch(1 if self.per_sample else self.n)
        self.channels = _same_layer_channels(self.targets) if self.per_sample else None
        self.whole_batch = any(isinstance(p, Diversity) for t in self.targets for p in parts(t))
        if self.whole_batch and self.per_sample:
            raise ConvscopeError("Diversity compares the images of one batch, so it cannot be one image's objective",
                                 "Use one objective for all images with batch=N, e.g. Channel(l, 3) + Diversity(l).")

    def layers(self) -> list:
        return [key for t in self.targets for key in t.layers()]

    def reads_output(self) -> bool:
        """Whether any image's objective reads the model output (else passes end at its layers)."""
        return any(t.reads_output() for t in self.targets)

    def score(self, record: Record, rows: slice) -> Tensor:
        """Each image's score, ``[rows]``."""
        if not self.per_sample:
            return self.targets[0].score(record)
        if self.channels is not None:  # one Channel per image, one layer: a single gather
            return self._gathered(record, rows)
        # one view per image (unbind: one gradient buffer for the batch, not one per target)
        split = {key: act.unbind(0) for key, act in record.acts.items()}
        outputs = record.output.unbind(0)
        inputs = record.input.unbind(0) if record.input is not None else None
        scores = []
        for i, row in enumerate(range(rows.start, rows.stop)):
            one = Record(output=outputs[i][None], acts={k: v[i][None] for k, v in split.items()},
                         rows=slice(row, row + 1), input=None if inputs is None else inputs[i][None])
            scores.append(self.targets[row].score(one))
        return torch.cat(scores)


    def _gathered(self, record: Record, rows: slice) -> Tensor:
        """``targets[row].score`` of each image from one gather ``act[i, channel_i]``."""
        first = cast(Channel, self.targets[rows.start])
        act = record.acts[first.layer]
        bad = [r for r in range(rows.start, rows.stop) if not 0 <= cast(Channel, self.targets[r]).channel < act.shape[1]]
        if bad:
            self.targets[bad[0]].score(record)  # raises the target's own "out of range" error
        if cast(Tensor, self.channels).device != act.device:
            self.channels = cast(Tensor, self.channels).to(act.device)  # once, not every step
        index = cast(Tensor, self.channels)[rows]
        picked = act[torch.arange(act.shape[0], device=act.device), index].unsqueeze(1)
        one = Channel(first.layer, 0, reduce=first.reduce)
        return one.score(Record(output=record.output, acts={first.layer: picked}, rows=rows, input=record.input))


def _same_layer_channels(targets: list[Target]) -> Tensor | None:
    """The channel of each target if every target is a plain :class:`Channel` of one layer with one
    reduction, else None."""
    found = [t for t in targets if type(t) is Channel]
    if len(found) < len(targets) or any(t.layer != found[0].layer or t.reduce != found[0].reduce for t in found):
        return None
    return torch.tensor([t.channel for t in found])


def _adam(params: list[Tensor], lr: float) -> torch.optim.Adam:
    """Adam that maximizes, fused into one kernel where torch can (CPU fusion needs torch >= 2.4)."""
    try:
        return torch.optim.Adam(params, lr=lr, maximize=True, fused=True)
    except RuntimeError:
        return torch.optim.Adam(params, lr=lr, maximize=True)


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (size[0], size[1])


def _check_number(name: str, value: object, *, integer: bool) -> None:
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:  # type: ignore[operator]
        example = "steps=256" if name == "steps" else f"{name}=0.05"
        raise ConvscopeError(f"{name}={value!r} must be a positive {'int' if integer else 'number'}",
                             f"Write e.g. {example}.")


def render(model: Any, objective: TargetLike | Sequence[TargetLike], *, steps: int = 256,
           param: ImageParam | None = None, size: int | tuple[int, int] | None = None, batch: int | None = None,
           transforms: Transform | str | None = "standard", lr: float = 0.05, seed: int = 0,
           max_batch: MaxBatch = None, preprocess: Normalization | None = None,
           progress: bool = True) -> Rendered:
    """Optimize images to maximize ``objective`` for ``steps`` Adam steps of rate ``lr`` (``model``: a
    torch module or a Keras model, see the module doc).

    ``param`` (default: an FFT, decorrelated-colour, sigmoid :class:`ImageParam` of ``size``,
    which defaults to ``preprocess.crop`` or 128, drawn from ``seed``); ``transforms``:
    ``"standard"`` (Lucid's recipe for the size), None, or a callable ``t(x, generator)``;
    ``preprocess``: the normalization the model expects; ``max_batch``: most images per forward
    pass. The same ``seed`` gives the same images, bitwise on a CPU; on a GPU the backward
    kernels of bilinear resampling and convolutions add with atomics, in no fixed order, and the
    optimization amplifies those last-bit differences, so GPU runs are only alike.
    """
    _check_number("steps", steps, integer=True)
    _check_number("lr", lr, integer=False)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConvscopeError(f"seed={seed!r} must be an int", "Write e.g. seed=0.")
    max_batch = check_max_batch(max_batch)
    goal = Objective(objective, batch, default=None if param is None else param.shape[0])
    model = as_module(model, goal.layers())
    device = model_device(model)
    generator = torch.Generator().manual_seed(seed)
    if param is None:
        param = ImageParam((goal.n, 3, *_hw(size or getattr(preprocess, "crop", None) or 128)), generator=generator,
                           device=device)
    elif size is not None and _hw(size) != param.shape[2:]:
        raise ConvscopeError(f"size={size!r} but the parameterization's images are {param.shape[2]}x{param.shape[3]}",
                             "Give size= or param=, not both.")
    if param.shape[0] != goal.n:
        raise ConvscopeError(f"the parameterization holds {param.shape[0]} images but the objective wants {goal.n}",
                             "Make the parameterization's batch match (one image per objective).")
    if param.tensor.device != device:
        raise ConvscopeError(f"the parameterization is on {param.tensor.device} but the model on {device}",
                             f"Create it on the model's device: ImageParam(..., device={str(device)!r}).")
    if goal.whole_batch and isinstance(max_batch, int) and max_batch < goal.n:
        raise ConvscopeError(f"Diversity compares all {goal.n} images, but max_batch={max_batch} splits them",
                             f"Use max_batch >= {goal.n} (or None) with a Diversity objective.")
    transform = standard((param.shape[2], param.shape[3])) if transforms == "standard" else transforms or _identity
    if isinstance(transform, str) or not callable(transform):
        raise ConvscopeError(f"transforms={transforms!r} is not a transform",
                             "Use 'standard', None or a callable t(x, generator) such as featurevis.transforms.compose(...).")
    prepare = normalizer(preprocess, device)
    optimizer = _adam(param.parameters(), lr)
    batches = Batches(max_batch, device)
    history: list[Tensor] = []  # on the model's device: no host sync per step
    with Session(model, layers=goal.layers(), stop_early=not goal.reads_output()) as session:
        bar = tqdm(range(steps), desc="render", unit="step", disable=not progress, leave=False)
        for step in bar:
            step_seed = int(torch.randint(2**62, (1,), generator=generator))
            image = param()
            pixels = image.detach().requires_grad_()

            def chunk(rows: slice, pixels: Tensor = pixels, step_seed: int = step_seed) -> Tensor:
                x = prepare(transform(pixels[rows], torch.Generator().manual_seed(step_seed)))
                run = session.forward(x, rows)
                score = goal.score(run.record, rows)
                (grad,) = torch.autograd.grad(score.sum(), run.input, allow_unused=True)
                if grad is not None:
                    x.backward(grad)
                return score.detach()

            history.append(torch.cat([s for _, s in batches.map(goal.n, chunk)]))
            optimizer.zero_grad(set_to_none=True)
            if pixels.grad is not None:
                image.backward(pixels.grad)
            optimizer.step()
            if progress and (step % 16 == 0 or step == steps - 1):
                bar.set_postfix(objective=f"{history[-1].mean():.4g}")
    return Rendered(images=param().detach(), history=torch.stack(history).cpu())


__all__ = ["Normalization", "Objective", "Rendered", "as_module", "model_device", "normalizer", "render"]
