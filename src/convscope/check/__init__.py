"""``convscope check``: which map to trust, for a model and a dataset (:func:`check`)."""

from convscope.check.run import check

__all__ = ["check"]
