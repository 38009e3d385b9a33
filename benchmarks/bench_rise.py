"""RISE mask crops: per-mask slices (a host loop) against one advanced-indexing gather.

RISE upsamples each coarse grid to ``(cells + 1)`` cells and crops it at a random shift
(:func:`convscope.methods.perturb.rise_masks`). The crop can be written as a loop of slices
stacked together, or as one gather (:func:`convscope.methods.perturb.gathered_crops`); both give
the same values (checked here and in tests/unit/test_perturb.py). ``rise_masks`` takes the slices
on the CPU and the gather elsewhere, the faster of the two on each device in this benchmark.

    python -m benchmarks.bench_rise [--quick] [--device cuda]
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F

from benchmarks.harness import Table, synced
from convscope.methods.perturb import gathered_crops

CASES = (((224, 224), 100), ((224, 224), 500), ((64, 64), 500))
CELLS = 7


def sliced_crops(images: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The CPU route of ``rise_masks``: one slice per mask, stacked."""
    return torch.stack([images[i, :, dy:dy + size[0], dx:dx + size[1]] for i, (dy, dx) in enumerate(shifts.tolist())])


def crop_table(size: tuple[int, int], masks: int, device: torch.device) -> Table:
    gen = torch.Generator().manual_seed(0)
    cell = math.ceil(size[0] / CELLS), math.ceil(size[1] / CELLS)
    grid = (torch.rand(masks, 1, CELLS, CELLS, generator=gen) < 0.5).float().to(device)
    up = F.interpolate(grid, size=((CELLS + 1) * cell[0], (CELLS + 1) * cell[1]), mode="bilinear", align_corners=False)
    shifts = torch.stack([torch.randint(cell[0], (masks,), generator=gen), torch.randint(cell[1], (masks,), generator=gen)], 1)
    if not torch.equal(sliced_crops(up, shifts, size), gathered_crops(up, shifts, size)):
        raise AssertionError("the gathered crops differ from the slices")
    where = "CPU" if device.type == "cpu" else torch.cuda.get_device_name(device)
    table = Table(f"RISE mask crops: {masks} masks of {size[0]}x{size[1]} on {where}", reference="slices")
    table.add("slices", synced(lambda: sliced_crops(up, shifts, size), device),
              note="the CPU route" if device.type == "cpu" else "")
    table.add("gather", synced(lambda: gathered_crops(up, shifts, size), device),
              note="" if device.type == "cpu" else "the GPU route")
    table.notes.append("the two outputs are bitwise equal; the upsampling before the crop is not timed" +
                       ("" if device.type == "cpu" else "; each call is followed by a CUDA synchronise"))
    return table


def run(quick: bool, device: str = "cpu") -> list[Table]:
    cases = CASES[:1] if quick else CASES
    return [crop_table(size, masks, torch.device(device)) for size, masks in cases]


if __name__ == "__main__":
    args = sys.argv[1:]
    on = args[args.index("--device") + 1] if "--device" in args else "cpu"
    for t in run(quick="--quick" in args, device=on):
        print(t.markdown())
