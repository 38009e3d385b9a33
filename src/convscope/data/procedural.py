"""The shared frame of the procedural datasets (signals, volumes, scenes): sample ``i`` depends only
on ``(seed, i)`` through ``np.random.default_rng([seed, i])``, so any subset, order or shard of a
dataset holds the same samples; each sample carries ground truth for localisation.

A subclass sets ``class_names`` and draws one sample from its generator in :meth:`Procedural._one`
(a dict of arrays); :meth:`Procedural.arrays` stacks them.

Example::

    ds = Signals(100, seed=0)       # a Procedural dataset
    x, y = ds[3]                    # float32 tensor and int label
    batch = ds.arrays(0, 10)        # dict of stacked numpy arrays, 'x', 'mask', 'label', ...
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import numpy as np

from convscope.data.shapes import ShapesIndexError, _check_int
from convscope.errors import ConvscopeError

if TYPE_CHECKING:
    import torch


class Procedural:
    """``n`` samples drawn from ``seed``; a map-style dataset ``ds[i] -> (float32 tensor, label)``."""

    class_names: tuple[str, ...] = ()

    def __init__(self, n: int, seed: int = 0) -> None:
        name = type(self).__name__
        self.n = _check_int(n, "n (the number of samples)", 0, f"Pass a count such as {name}(1000).")
        self.seed = _check_int(seed, "seed", 0, "Pass a non-negative integer seed, e.g. seed=0.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, seed={self.seed})"

    def __len__(self) -> int:
        return self.n

    def _one(self, rng: np.random.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def _index(self, i: Any) -> int:  # noqa: ANN401
        try:
            index = operator.index(i)
        except TypeError:
            raise ConvscopeError(f"a {type(self).__name__} index must be an integer, got {type(i).__name__}",
                                 "Use ds[i] with an int; for batches use ds.arrays(start, stop).") from None
        if not -self.n <= index < self.n:
            raise ShapesIndexError(f"index {index} is out of range for {self!r}",
                                   f"Use 0 <= i < {self.n} (or a negative index from the end).")
        return index % self.n

    def sample(self, i: int) -> dict[str, Any]:
        """Sample ``i``: ``x`` (float32, channels first), ``label``, ``mask`` and the drawing parameters."""
        return self._one(np.random.default_rng([self.seed, self._index(i)]))

    def _check_range(self, start: Any, stop: Any) -> None:  # noqa: ANN401
        if not (isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer))
                and 0 <= start <= stop <= self.n):
            raise ConvscopeError(f"range [{start}, {stop}) is not inside {self!r}", f"Use 0 <= start <= stop <= {self.n}.")

    def arrays(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Samples ``start..stop-1`` stacked: each key of :meth:`sample` gets a leading batch axis."""
        stop = self.n if stop is None else stop
        self._check_range(start, stop)
        rows = [self._one(np.random.default_rng([self.seed, i])) for i in range(start, stop)]
        if not rows:
            rows_like = self._one(np.random.default_rng([self.seed, 0]))
            return {k: np.asarray(v)[None][:0] for k, v in rows_like.items()}
        return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}

    def mask(self, i: int) -> np.ndarray:
        """The ground-truth localisation mask of sample ``i`` (bool, the sample's spatial shape)."""
        return self.sample(i)["mask"]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        import torch

        s = self.sample(i)
        return torch.from_numpy(s["x"]), int(s["label"])

    def tensors(self, start: int = 0, stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``start..stop-1`` as ``(float32 [N, C, ...], int64 labels [N])``."""
        import torch

        a = self.arrays(start, stop)
        return torch.from_numpy(a["x"]).contiguous(), torch.from_numpy(a["label"]).long()


def smooth_noise(rng: np.random.Generator, grid: int, size: int, dims: int, amplitude: float) -> np.ndarray:
    """Smooth noise ``[size] * dims``: a ``grid ** dims`` lattice of uniform values in
    ``[-amplitude, amplitude]``, interpolated separably with smoothstep weights."""
    from convscope.data.draw import _smooth_weights

    out = (2.0 * rng.random((grid,) * dims) - 1.0) * amplitude
    w = _smooth_weights(size, grid).astype(np.float64)  # [grid, size]
    for axis in range(dims):
        out = np.moveaxis(np.tensordot(out, w, axes=([axis], [0])), -1, axis)
    return out
