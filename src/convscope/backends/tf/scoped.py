"""Moved to :mod:`convscope.tf.scoped`, beside the other Keras helpers; this name re-exports it.

``convscope.backends.tf`` imports from ``convscope.tf``, never the reverse (the import contracts in
``pyproject.toml``). New code imports :func:`convscope.tf.scoped.patched`.
"""

from convscope.tf.scoped import patched

__all__ = ["patched"]
