"""Channels-first <-> channels-last for the draws the Keras backend shares with the torch backend.

Random draws (noise, baselines) are made exactly as the torch methods make them, in their
channels-first layout, and moved to channels-last, so a Keras model and its PyTorch twin see the
very same numbers. Rank < 3 (no channel axis to move) passes unchanged.

Example::

    channels_last(torch.randn(4, 3, 8, 8)).shape    # (4, 8, 8, 3)
"""

from __future__ import annotations

import numpy as np
import torch


def channels_first_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The channels-first shape of one channels-last sample ``(H, W, C)`` -> ``(C, H, W)``."""
    return (shape[-1], *shape[:-1]) if len(shape) >= 2 else shape


def channels_last(t: torch.Tensor) -> np.ndarray:
    """A torch channels-first batch ``[N, C, ...]`` as a channels-last numpy array ``[N, ..., C]``."""
    return np.ascontiguousarray((t.movedim(1, -1) if t.dim() >= 3 else t).numpy())
