"""Checks of the options methods share, for the PyTorch and the Keras classes alike.

Each returns the value when it is valid and raises a :class:`~convscope.errors.ConvscopeError`
naming the option and the fix otherwise.

Example::

    self.samples = check_samples(samples)          # a positive int
    self.noise = check_noise(noise, example=0.15)  # >= 0, a fraction of the input range
    self.upsample = check_flag("upsample", upsample)
"""

from __future__ import annotations

from convscope.errors import ConvscopeError


def check_flag(name: str, value: bool | None) -> bool | None:
    """``value`` if it is True, False or None (meaning "the method's default")."""
    if value is not None and not isinstance(value, bool):
        raise ConvscopeError(f"{name}={value!r} must be True or False", f"Write {name}=True or {name}=False.")
    return value


def check_samples(samples: int) -> int:
    """``samples`` if it is a positive int (not a bool)."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConvscopeError(f"samples={samples!r} must be a positive int", "Use e.g. samples=32.")
    return samples


def check_noise(noise: float, example: float) -> float:
    """``noise`` if it is >= 0 (a standard deviation as a fraction of each sample's value range)."""
    if not noise >= 0:
        raise ConvscopeError(f"noise={noise!r} must be >= 0",
                             f"noise is a fraction of the input range, e.g. {example}.")
    return noise
