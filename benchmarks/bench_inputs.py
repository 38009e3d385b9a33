"""The cost of the new input forms (tuples, forward arguments) and of their plumbing on the
single-tensor path, on ResNet-18 (``weights=None``). Target: at most 5% over today's
single-tensor path.

1. This checkout, one process, calls interleaved: the single tensor ``x`` (the reference), the
   same tensor as a 1-tuple ``(x,)``, and ``x`` with forward arguments (``forward_kwargs`` with a
   per-sample tensor the model adds, all zeros, so every row computes the same), for saliency
   and for integrated gradients (16 steps, ``max_batch=8``: expanded rows pick their sample's
   argument). The model is ``resnet18(x + shift)`` in every row (``shift=0.0`` for the
   reference, a float argument: the plain path).
2. The single-tensor path before and after: the same saliency and IG calls timed in fresh
   processes of the commit before this work (``--base``, default ``a86046d``; its ``src`` taken
   with ``git archive``) and of this checkout, alternately.

Timings are CPU time of one torch thread (``time.process_time``), medians: on a shared 2-core
machine this measures the work rather than the load.

    python -m benchmarks.bench_inputs [--quick] [--base REV]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.ab_methods import median_time
from benchmarks.harness import Row, Table, interleaved

ROOT = Path(__file__).resolve().parent.parent
BASE = "a86046d"  # the commit before several inputs and forward arguments


class Shifted(nn.Module):
    """``resnet18(x + shift)``: a model with an extra forward argument."""

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        torch.manual_seed(0)
        self.net = torchvision.models.resnet18(weights=None)

    def forward(self, x: Tensor, shift: Any = 0.0) -> Tensor:
        return self.net(x + shift)


def _setup(quick: bool) -> tuple[nn.Module, Tensor]:
    size = 112 if quick else 224
    return Shifted().eval(), torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def single_calls(quick: bool) -> dict[str, Callable[[], Any]]:
    """The single-tensor calls both checkouts run (their API is the same for these)."""
    from convscope.methods import IntegratedGradients, Saliency

    model, x = _setup(quick)
    saliency, ig = Saliency(model), IntegratedGradients(model, steps=16, max_batch=8)
    return {"saliency": lambda: saliency.attribute(x, [3, 5]), "integrated gradients": lambda: ig.attribute(x, [3, 5])}


def _forms(quick: bool) -> list[Table]:
    from convscope.methods import IntegratedGradients, Saliency

    model, x = _setup(quick)
    shift = torch.zeros(len(x), 1, 1, 1)
    tables = []
    for name, method in (("saliency", Saliency(model)),
                         ("integrated gradients, 16 steps, max_batch=8", IntegratedGradients(model, steps=16,
                                                                                             max_batch=8))):
        table = Table(f"{name}: resnet18 [{', '.join(map(str, x.shape))}], input forms (this checkout)",
                      reference="single tensor x")
        calls = {
            "single tensor x": lambda m=method: m.attribute(x, [3, 5]),
            "1-tuple (x,)": lambda m=method: m.attribute((x,), [3, 5])[0],
            "x, forward_kwargs={'shift': per-sample zeros}": lambda m=method: m.attribute(
                x, [3, 5], forward_kwargs={"shift": shift}),
        }
        interleaved(table, calls, rounds=5 if quick else 7, clock=time.process_time)
        maps = [fn() for fn in calls.values()]
        gap = max(float((m - maps[0]).abs().max()) for m in maps[1:])
        table.notes.append(f"CPU time of one torch thread; largest difference between the rows' maps: {gap:.1e}.")
        tables.append(table)
    return tables


def _source(rev: str, into: Path) -> Path:
    """``src`` of commit ``rev``, extracted under ``into``."""
    data = subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def _child(src: Path, quick: bool) -> dict[str, float]:
    """Median CPU seconds per single-tensor call, in a fresh process importing ``src``."""
    code = ("import json, torch; from benchmarks.bench_inputs import child_times; "
            f"print(json.dumps(child_times({quick})))")
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def child_times(quick: bool, calls: int = 5) -> dict[str, float]:
    """In a child process: the median CPU time of each single-tensor call (after a warm-up)."""
    torch.set_num_threads(1)
    return {name: median_time(fn, calls) for name, fn in single_calls(quick).items()}


def _before_after(quick: bool, base: str) -> list[Table]:
    with tempfile.TemporaryDirectory() as tmp:
        before = _source(base, Path(tmp))
        runs: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
        for _ in range(2 if quick else 3):
            for label, src in (("before", before), ("after", ROOT / "src")):
                for name, seconds in _child(src, quick).items():
                    runs[label].setdefault(name, []).append(seconds)
    size = 112 if quick else 224
    tables = []
    for name in runs["before"]:
        table = Table(f"{name}: resnet18 [2, 3, {size}, {size}], single tensor, before ({base}) and after",
                      reference="before")
        for label in ("before", "after"):
            times = runs[label][name]
            table.rows.append(Row(label, statistics.median(times), note=f"median of {len(times)} processes "
                                  f"(alternating), each the median of 5 calls: {', '.join(f'{t * 1e3:.0f}' for t in times)} ms"))
        tables.append(table)
    return tables


def run(quick: bool = False, base: str = BASE) -> list[Table]:
    torch.set_num_threads(1)
    return _forms(quick) + _before_after(quick, base)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--base", default=BASE)
    args = parser.parse_args()
    for t in run(args.quick, args.base):
        print(t.markdown())
