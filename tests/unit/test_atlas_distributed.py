"""A 2-process torch.distributed (gloo) mining run equals the 1-process run."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

from convscope.atlas import mine
from convscope.atlas.distributed import merge_shards

LAYERS = ["features.0", "features.3"]


def _setup() -> tuple[torch.nn.Module, torch.utils.data.TensorDataset]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from nets import TinyVGG

    torch.manual_seed(0)
    return TinyVGG().eval(), torch.utils.data.TensorDataset(torch.randn(30, 3, 16, 16))


def _worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from convscope.atlas.distributed import mine_distributed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        model, data = _setup()
        mined = mine_distributed(model, data, LAYERS, k=4, batch_size=4, out=out, checkpoint_every=1)
        if rank == 0:
            torch.save({name: acc.arrays("") for name, acc in mined.results.items()}, f"{out}/merged.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2, join=True)
    merged = torch.load(tmp_path / "merged.pt", weights_only=False)
    model, data = _setup()
    single = mine(model, data, LAYERS, k=4, batch_size=4).results
    for name, acc in single.items():
        for key, value in acc.arrays("").items():
            assert (merged[name][key] == value).all(), (name, key)
    assert (tmp_path / "checkpoint-r0.npz").exists() and (tmp_path / "checkpoint-r1.npz").exists()


def test_merge_of_shards_equals_whole_run() -> None:
    model, data = _setup()
    shards = [mine(model, data, LAYERS, k=4, batch_size=4, rank=r, world=3) for r in range(3)]
    whole = mine(model, data, LAYERS, k=4, batch_size=4).results
    merged = merge_shards(shards[::-1]).results
    assert all(merged[name].equals(whole[name]) for name in LAYERS)
