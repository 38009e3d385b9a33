"""Mining past one machine: each ``torch.distributed`` rank mines its shard, then the
accumulators are merged exactly (merging is associative and commutative, so the result equals
a one-process run's, bit for bit).

Launch with ``torchrun --nproc_per_node N your_script.py`` (gloo on CPU, nccl on GPU: then pin
each rank to its GPU first, ``torch.cuda.set_device(local_rank)``, as ``all_gather_object``
needs); every rank calls :func:`mine_distributed` with the same arguments. Batch ``b`` goes to rank
``b % world``; each rank checkpoints to its own ``checkpoint-r<rank>.npz``, so ``resume`` works
per rank.

Example::

    torch.distributed.init_process_group("gloo")
    mined = mine_distributed(model, "shapes:10000", ["features.3"], k=9, out="atlas")
    if torch.distributed.get_rank() == 0:
        build_atlas(model, "shapes:10000", ["features.3"], "atlas", mined=mined)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.distributed as dist
from torch import nn

from convscope.atlas.mine import Mined, mine
from convscope.atlas.topk import TopK
from convscope.errors import ConvscopeError


def merge_shards(shards: Sequence[Mined]) -> Mined:
    """One :class:`Mined` from the shards of one run (layers a shard never saw are skipped)."""
    results: dict[str, TopK] = {}
    for shard in shards:
        for name, acc in shard.results.items():
            results[name] = acc if name not in results else results[name].merge(acc)
    first = shards[0]
    missing = [n for n in first.identity["layers"] if n not in results]
    if missing:
        raise ConvscopeError("none of the images could be read", "Check the data folder.")
    skipped = sorted({tuple(s) for shard in shards for s in shard.skipped})
    return Mined(results, first.identity, list(skipped), sum(s.batches_run for s in shards))


def mine_distributed(model: nn.Module, data: Any, layers: Sequence[str], **options: Any) -> Mined:  # noqa: ANN401
    """:func:`~convscope.atlas.mine.mine` on this rank's shard, merged over all ranks (every rank
    gets the merged result). Needs an initialised default process group."""
    if not dist.is_available() or not dist.is_initialized():
        raise ConvscopeError("torch.distributed is not initialised",
                             "Launch with torchrun and call torch.distributed.init_process_group first.")
    rank, world = dist.get_rank(), dist.get_world_size()
    mined = mine(model, data, layers, rank=rank, world=world, **options)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mined)
    return merge_shards(gathered)
