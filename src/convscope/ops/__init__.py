"""Explicit tensor ops, each tested against autograd.

- :func:`max_pool_with_switches` — max-pool that also returns the :class:`Switches` record.
- :func:`unpool` — add pooled values back at their switches (the max-pool gradient).

Example::

    from convscope.ops import max_pool_with_switches, unpool
    pooled, switches = max_pool_with_switches(x, 3, stride=2)
    back = unpool(pooled, switches)
"""

from convscope.ops.pooling import max_pool_with_switches, unpool
from convscope.ops.switches import Switches

__all__ = ["Switches", "max_pool_with_switches", "unpool"]
