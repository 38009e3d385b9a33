"""Built-in synthetic data, each sample with ground truth for localisation:

- :class:`Shapes`: six procedurally drawn shape classes, one per image, with masks;
- :class:`Scenes`: several shapes per image, with per-object masks and boxes;
- :class:`Signals`: 1-D signals ``[C, L]`` whose class is one localised pattern (its interval);
- :class:`Volumes`: 3-D volumes ``[1, D, H, W]`` holding one solid (its voxel mask).

``SOURCES`` maps the names used in data specs (``shapes:N``, ``scenes:N``, ``signals:N``,
``volumes:N``) to the classes. ``import convscope.data`` needs only numpy; torch is imported
when a tensor is requested.

Example::

    from convscope.data import CLASSES, MEAN, STD, Shapes
    images, masks, labels = Shapes(1000, seed=0).arrays()
"""

from convscope.data.scenes import Scenes
from convscope.data.shapes import CLASSES, MEAN, STD, Shapes, ShapeSample
from convscope.data.signals import Signals
from convscope.data.volumes import Volumes

SOURCES = {"shapes": Shapes, "scenes": Scenes, "signals": Signals, "volumes": Volumes}

__all__ = ["CLASSES", "MEAN", "SOURCES", "STD", "ShapeSample", "Scenes", "Shapes", "Signals", "Volumes"]
