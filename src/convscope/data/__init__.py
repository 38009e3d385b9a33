"""Built-in synthetic data: :class:`Shapes`, six procedurally drawn shape classes with masks.

``import convscope.data`` needs only numpy; torch is imported when a tensor is requested.

Example::

    from convscope.data import CLASSES, MEAN, STD, Shapes
    images, masks, labels = Shapes(1000, seed=0).arrays()
"""

from convscope.data.shapes import CLASSES, MEAN, STD, Shapes, ShapeSample

__all__ = ["CLASSES", "MEAN", "STD", "ShapeSample", "Shapes"]
