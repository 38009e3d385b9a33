"""The inputs of one ``attribute`` call and how they reach the model: several tensors, integer
tensors (token ids) and extra forward arguments held fixed.

Methods see one floating-point tensor ``x`` per call, the *attributed input*:

- one float tensor and no extra arguments: ``x`` is that tensor and the model is called as
  ``model(x)`` (no :class:`Inputs` at all: today's path, at today's speed);
- one tensor with extra arguments, or an integer tensor: ``x`` keeps the tensor's shape (an
  integer tensor as floats, exact below ``2**24`` in float32);
- a tuple of one tensor: as one tensor, its maps in a tuple of one;
- a tuple ``(x_1, ..., x_m)`` of ``m > 1`` tensors: ``x`` is their *packing* ``[N, F]``, each
  sample's ``x_i`` flattened and concatenated (``F = sum_i numel(x_i[0])``), so every method
  perturbs, integrates and adds noise to all inputs together; maps come back unpacked, one per input.

The model is called as ``model(*unpack(x), *args, **kwargs)``. A tensor argument whose first
dimension is the batch size ``N`` is per sample: a model evaluation of rows ``rows`` of the
user's batch (``rows[j]`` the sample that evaluation row ``j`` expands) gets ``arg[rows]``, so
methods that expand the batch (steps, noise draws, windows) or chunk it by ``max_batch`` pass
each row its own argument. Other arguments (numbers, flags, tensors of another size) pass as
they are. Integer inputs are unpacked rounded to their dtype: attribute them at a layer
(``wrt=`` the embedding), never through their values.

Example::

    inputs = Inputs.of((image, tokens), args=(mask,), kwargs={"scale": 2.0})
    x = inputs.x                   # [N, F] float: image and tokens flattened side by side
    out = inputs.call(model, x, torch.arange(len(x)))   # model(image, tokens, mask, scale=2.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from convscope.errors import ConvscopeError


def _as_parts(x: Any) -> tuple[tuple[Tensor, ...], bool]:
    """The input tensors of ``x`` (one tensor or a tuple/list of them) and whether it was one tensor."""
    single = not isinstance(x, (tuple, list))
    parts = (x,) if single else tuple(x)
    if not parts:
        raise ConvscopeError("the input is an empty tuple", "Pass a tensor, or a tuple of the model's input tensors.")
    for i, part in enumerate(parts):
        if not isinstance(part, Tensor):
            name = "the input" if single else f"input {i} of the tuple"
            hint = "Convert it with torch.from_numpy(x).float()." if type(part).__module__ == "numpy" else \
                "Pass a float tensor such as [N, C, H, W] (or a tuple of tensors for a model with several inputs)."
            raise ConvscopeError(f"{name} is a {type(part).__name__}, not a torch tensor", hint)
        if part.dim() < 1 or part.shape[0] == 0:
            raise ConvscopeError(f"the input of shape {list(part.shape)} holds no samples",
                                 "Pass a batch with at least one sample, e.g. x.unsqueeze(0) for one image.")
        if part.dtype == torch.bool or part.is_complex():
            raise ConvscopeError(f"input {i} has dtype {part.dtype}, which cannot be attributed",
                                 "Pass float inputs (or integer token ids attributed at a layer, wrt='embedding'), "
                                 "and a mask as a forward argument (forward_args=(mask,)).")
    n = int(parts[0].shape[0])
    if any(int(p.shape[0]) != n for p in parts):
        raise ConvscopeError(f"the inputs hold different numbers of samples {[int(p.shape[0]) for p in parts]}",
                             "Give every input tensor the same batch size (first dimension).")
    devices = {p.device for p in parts}
    if len(devices) > 1:
        raise ConvscopeError(f"the inputs are on different devices {sorted(map(str, devices))}",
                             "Move them to one device, e.g. tuple(t.to(device) for t in inputs).")
    return parts, single


def _float_dtype(parts: Sequence[Tensor]) -> torch.dtype:
    dtypes = [p.dtype for p in parts if p.is_floating_point()]
    found = dtypes[0] if dtypes else torch.get_default_dtype()
    for d in dtypes[1:]:
        found = torch.promote_types(found, d)
    return found


@dataclass(frozen=True)
class Inputs:
    """One call's inputs (see the module docstring): ``x`` the attributed input, ``shapes`` and
    ``dtypes`` of the user's tensors, whether they came as one tensor (``single``), and the extra
    forward ``args``/``kwargs``."""

    x: Tensor
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]
    single: bool
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, x: Any, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None
           ) -> Inputs | None:
        """The call's inputs, or None for one float tensor without extra arguments (the plain path)."""
        if args is not None and not isinstance(args, (tuple, list)):
            args = (args,)  # Captum accepts one argument as itself
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise ConvscopeError(f"forward_kwargs must be a dict, not a {type(kwargs).__name__}",
                                 "Write forward_kwargs={'mask': mask}.")
        parts, single = _as_parts(x)
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        if single and parts[0].is_floating_point() and not args and not kwargs:
            return None
        dtype = _float_dtype(parts)
        exact = 2 ** {torch.float16: 11, torch.bfloat16: 8, torch.float32: 24}.get(dtype, 53)
        for i, p in enumerate(parts):
            if not p.is_floating_point() and p.numel() and int(p.abs().max()) > exact:
                raise ConvscopeError(f"input {i} holds integers beyond {exact}, which {dtype} cannot hold exactly",
                                     "Pass float64 inputs alongside, or ids below that bound.")
        n = int(parts[0].shape[0])
        x = parts[0].to(dtype) if len(parts) == 1 else torch.cat([p.detach().reshape(n, -1).to(dtype) for p in parts], 1)
        return cls(x.detach(), tuple(tuple(p.shape[1:]) for p in parts), tuple(p.dtype for p in parts), single,
                   args, kwargs)

    @property
    def integer(self) -> tuple[int, ...]:
        """The positions of the integer inputs."""
        return tuple(i for i, d in enumerate(self.dtypes) if not d.is_floating_point)

    @property
    def sizes(self) -> list[int]:
        """Each input's elements per sample: its share of a packed row."""
        return [math.prod(s) for s in self.shapes]

    def unpack(self, x: Tensor, cast: bool = True) -> tuple[Tensor, ...]:
        """The user's tensors from the attributed input ``x`` (any number of rows): views for a
        packing, integer inputs rounded to their dtype (``cast=False``: all in ``x``'s dtype, for maps)."""
        n = x.shape[0]
        parts = (x,) if len(self.shapes) == 1 else tuple(
            p.reshape(n, *s) for p, s in zip(torch.split(x, self.sizes, 1), self.shapes))
        if not cast:
            return parts
        return tuple(p if p.dtype == d else p.detach().round().to(d) if not d.is_floating_point else p.to(d)
                     for p, d in zip(parts, self.dtypes))

    def maps(self, m: Tensor) -> Tensor | tuple[Tensor, ...]:
        """A map of the attributed input, as the user's inputs came: one tensor or a tuple."""
        parts = tuple(p if d == p.dtype or not d.is_floating_point else p.to(d)
                      for p, d in zip(self.unpack(m, cast=False), self.dtypes))
        return parts[0] if self.single else parts

    def pack(self, value: Any, like: Tensor, what: str) -> Tensor:
        """``value`` given per input (a tuple, or one value for a single input; one number serves
        every input) as ``[1 or N, F]`` in ``like``'s dtype: each part a number, one sample's
        shape, or one per sample.

        Example: ``inputs.pack((0.0, pad_ids), like=x, what="baseline")``."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = (value,) * len(self.shapes)
        parts = (value,) if self.single and not isinstance(value, (tuple, list)) else value
        if not isinstance(parts, (tuple, list)) or len(parts) != len(self.shapes):
            count = len(self.shapes)
            raise ConvscopeError(f"the {what} is a {type(value).__name__}, not one value per input ({count} inputs)",
                                 f"Give a tuple of {count} values, one per input: numbers, one sample's shape or "
                                 "one per sample.")
        out = []
        for i, (part, shape) in enumerate(zip(parts, self.shapes)):
            if isinstance(part, (int, float)) and not isinstance(part, bool):
                t = torch.full((1, *shape), float(part), dtype=like.dtype, device=like.device)
            else:
                t = torch.from_numpy(part) if isinstance(part, np.ndarray) else part
                if not isinstance(t, Tensor):
                    raise ConvscopeError(f"the {what} for input {i} is a {type(part).__name__}",
                                         "Give a number or a tensor for each input.")
                t = t.to(like.device, like.dtype)
                t = t[None] if tuple(t.shape) == shape else t
                if tuple(t.shape[1:]) != shape or int(t.shape[0]) < 1:
                    raise ConvscopeError(f"the {what} for input {i} has shape {list(part.shape)}, which fits neither "
                                         f"one sample {list(shape)} nor a batch [B, {', '.join(map(str, shape))}]",
                                         "Give a number, one sample's shape, or one per sample.")
            out.append(t)
        rows = {int(t.shape[0]) for t in out} - {1}
        if len(rows) > 1:
            raise ConvscopeError(f"the {what} parts hold different numbers of rows {sorted(rows)}",
                                 "Give each input's part one row (shared) or the same number of rows.")
        b = rows.pop() if rows else 1
        if len(self.shapes) == 1:
            return out[0]
        return torch.cat([t.expand(b, *t.shape[1:]).reshape(b, -1) for t in out], 1)

    def per_sample(self, value: Any, rows: Tensor) -> Any:
        """An extra argument for the evaluation rows ``rows``: a per-sample tensor's rows, else itself."""
        if isinstance(value, Tensor) and value.dim() >= 1 and int(value.shape[0]) == int(self.x.shape[0]):
            if len(rows) == value.shape[0] and bool((rows == torch.arange(len(rows), device=rows.device)).all()):
                return value
            return value[rows.to(value.device)]
        return value

    def call(self, model: nn.Module, x: Tensor, rows: Tensor | slice) -> Any:
        """``model(*unpack(x), *args, **kwargs)`` with the per-sample arguments of ``rows``."""
        if isinstance(rows, slice):
            rows = torch.arange(rows.start or 0, rows.stop)
        args = [self.per_sample(a, rows) for a in self.args]
        kwargs = {k: self.per_sample(v, rows) for k, v in self.kwargs.items()}
        return model(*self.unpack(x), *args, **kwargs)

    def ranges(self, x: Tensor) -> Tensor:
        """``max - min`` of each sample of each input, broadcast over that input's part of ``x``."""
        parts = []
        for p in self.unpack(x.detach(), cast=False):
            flat = p.reshape(p.shape[0], -1)
            span = flat.amax(1, keepdim=True) - flat.amin(1, keepdim=True)
            parts.append(span.expand_as(flat))
        return parts[0].reshape(x.shape) if len(parts) == 1 else torch.cat(parts, 1)


def check_attributable(inputs: Inputs | None, wrt: Any) -> None:
    """A clear error when the attribution would go through the values of an integer input."""
    if inputs is None or wrt is not None or not inputs.integer:
        return
    which = "the input" if inputs.single else f"input {', '.join(map(str, inputs.integer))} of the tuple"
    dtype = inputs.dtypes[inputs.integer[0]]
    raise ConvscopeError(f"{which} has dtype {dtype}; attribution through its values needs a floating-point input",
                         "Convert pixel values (x.float() / 255), or attribute token ids at the layer that embeds "
                         "them: wrt='embedding' (its output is a float tensor).")
