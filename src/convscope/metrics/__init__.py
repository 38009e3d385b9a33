"""Metrics on attribution maps.

Example::

    from convscope.metrics import mass_inside, pointing_game, ssim
    hits = pointing_game(maps, masks)          # bool [N]
    same = ssim(approximate_maps, exact_maps)  # float [N], 1 where equal
"""

from convscope.metrics.localisation import mass_inside, pointing_game
from convscope.ops.similarity import ssim

__all__ = ["mass_inside", "pointing_game", "ssim"]
