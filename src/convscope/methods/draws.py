"""Seeded Gaussian draws (see :mod:`convscope.backends.torch.draws`).

Example::

    eps = gaussian_draws(50, x.shape[1:], seed=0, like=x)  # [50, C, H, W] on x's device
"""

from convscope.backends.torch.draws import gaussian_draws

__all__ = ["gaussian_draws"]
