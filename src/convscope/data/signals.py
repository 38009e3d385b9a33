"""``Signals``: procedural 1-D signals ``[C, L]`` whose class is decided by one localised pattern.

Each sample is a smooth background (per channel: three sines of 0.5..3 cycles per signal and
amplitude 0.1..0.5, plus white noise of standard deviation 0.05..0.2) to which one pattern is
added on the interval ``[start, stop)`` of ``PATTERN_WIDTH`` samples, scaled by an amplitude in
``AMPLITUDE`` times a per-channel gain in [0.5, 1]. Outside that interval the signal carries no
trace of the class, so the interval (``mask``) is the ground truth for localisation. With
``t = (k + 1/2) / width`` for the k-th sample of the interval, the patterns (``CLASSES``) are:

- burst: ``sin(2 pi 3 t)`` (three cycles)
- pulse: ``1`` (a plateau)
- tent: ``1 - |2 t - 1|``
- sawtooth: ``frac(3 t)`` (three ramps)

Example::

    ds = Signals(1000, seed=0)
    x, y = ds[0]                       # float32 tensor [2, 128], int label
    a = ds.arrays(0, 100)              # a['x'] [100, 2, 128], a['mask'] bool [100, 128], a['label']
    ds.sample(0)["interval"]           # (start, stop) of the pattern
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convscope.data.procedural import Procedural
from convscope.data.shapes import _check_int

CLASSES: tuple[str, ...] = ("burst", "pulse", "tent", "sawtooth")
PATTERN_WIDTH = (16, 32)  # inclusive range of the pattern's length in samples
AMPLITUDE = (1.0, 2.0)


def pattern(label: int, width: int) -> np.ndarray:
    """The unit pattern of class ``label`` over ``width`` samples (float64 ``[width]``)."""
    t = (np.arange(width) + 0.5) / width
    if label == 0:
        return np.sin(2.0 * np.pi * 3.0 * t)
    if label == 1:
        return np.ones(width)
    if label == 2:
        return 1.0 - np.abs(2.0 * t - 1.0)
    return np.mod(3.0 * t, 1.0)


class Signals(Procedural):
    """``n`` signals of ``channels`` x ``length`` samples drawn from ``seed``.

    ``sample(i)`` holds ``x`` (float32 ``[C, L]``), ``label``, ``mask`` (bool ``[L]``, the
    pattern's interval), ``interval`` (start, stop), ``amplitude`` and ``background``.
    """

    class_names = CLASSES

    def __init__(self, n: int, seed: int = 0, length: int = 128, channels: int = 2) -> None:
        super().__init__(n, seed)
        self.length = _check_int(length, "length", 2 * PATTERN_WIDTH[1],
                                 f"Signals shorter than {2 * PATTERN_WIDTH[1]} samples leave no room around the "
                                 "pattern; use length >= 64.")
        self.channels = _check_int(channels, "channels", 1, "Use at least one channel.")

    def __repr__(self) -> str:
        return f"Signals(n={self.n}, seed={self.seed}, length={self.length}, channels={self.channels})"

    def _one(self, rng: np.random.Generator) -> dict[str, Any]:
        c, length = self.channels, self.length
        label = int(rng.integers(len(CLASSES)))
        width = int(rng.integers(PATTERN_WIDTH[0], PATTERN_WIDTH[1] + 1))
        start = int(rng.integers(0, length - width + 1))
        amplitude = float(AMPLITUDE[0] + (AMPLITUDE[1] - AMPLITUDE[0]) * rng.random())
        gains = 0.5 + 0.5 * rng.random(c)
        t = (np.arange(length) + 0.5) / length
        freq = 0.5 + 2.5 * rng.random((c, 3, 1))
        phase = 2.0 * np.pi * rng.random((c, 3, 1))
        amp = 0.1 + 0.4 * rng.random((c, 3, 1))
        background = (amp * np.sin(2.0 * np.pi * freq * t + phase)).sum(axis=1)
        background += rng.standard_normal((c, length)) * (0.05 + 0.15 * rng.random((c, 1)))
        x = background.copy()
        x[:, start:start + width] += amplitude * gains[:, None] * pattern(label, width)
        mask = np.zeros(length, dtype=bool)
        mask[start:start + width] = True
        return {"x": x.astype(np.float32), "label": np.int64(label), "mask": mask,
                "interval": np.array([start, start + width]), "amplitude": amplitude,
                "background": background.astype(np.float32)}
