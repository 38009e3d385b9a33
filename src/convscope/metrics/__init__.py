"""Metrics on attribution maps.

Example::

    from convscope.metrics import mass_inside, pointing_game
    hits = pointing_game(maps, masks)          # bool [N]
"""

from convscope.metrics.localisation import mass_inside, pointing_game

__all__ = ["mass_inside", "pointing_game"]
