"""Incremental occlusion against plain occlusion and Captum's, side by side in one process: ResNet-18
or VGG-16 (``weights=None``, seed 0, eval mode), one 224x224 image, window 16, stride 8 (all 729
windows), 64 windows per evaluation (Captum: ``perturbations_per_eval=64``), on the CPU.

Rows: Captum's ``Occlusion``; convscope with ``incremental=False`` (every window a forward pass of
the inference twin: batch norms folded, channels-last); convscope with the default
``incremental="auto"``, which takes the incremental path here (the notes say so; ``--quick``, 64 px:
``incremental=True``). Each is run
``--rounds`` times in alternation (no separate warm-up: a call's one-off costs, the twin and the
trace, are part of it); the table gives the median CPU time of this process and, in the note,
the wall time. The notes say where the incremental path spends its time (nodes recomputed on
regions, on whole maps, outside the local rules), the bytes its region reads copied, the clean
cache it held, and the maps' largest differences.

``--memory`` also runs the incremental call alone in a fresh process and reports its peak RSS.

    python -m benchmarks.bench_occlusion_incremental [--arch resnet18|vgg16] [--rounds 1] [--threads N] [--memory]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import torch

from benchmarks.harness import Row, Table
from convscope.backends.torch.incremental import WHOLE_AREA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MEMORY_CHILD = """
import json, resource, sys, torch, torchvision
from convscope.methods import Occlusion
torch.set_num_threads(int(sys.argv[2]))
torch.manual_seed(0)
model = getattr(torchvision.models, sys.argv[1])(weights=None).eval()
x = torch.randn(1, 3, 224, 224)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
occ = Occlusion(model, window=16, stride=8, max_batch=64)
occ.attribute(x, 3)
print(json.dumps({"peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "before_kb": before,
                  "path": occ.last_report.path, "cache": occ.last_report.cache_bytes}))
"""


def _timed(fn: Callable[[], torch.Tensor]) -> tuple[float, float, torch.Tensor]:
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - cpu, time.perf_counter() - wall, out


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _where_time_goes(report: object) -> list[str]:
    if report.path != "incremental":  # type: ignore[attr-defined]
        return [f"the incremental row took the plain path: {report.reason}"]  # type: ignore[attr-defined]
    nodes = report.nodes  # type: ignore[attr-defined]
    totals = report.totals()  # type: ignore[attr-defined]
    spent = totals["seconds"] or 1.0
    whole, full = totals["whole_seconds"], totals["full_seconds"]
    regions = spent - whole - full

    def share(seconds: float) -> str:
        return f"{seconds:.1f} s ({seconds / spent:.0%})"

    top = sorted(nodes, key=lambda n: -n.seconds)[:5]
    return [f"incremental path: {report.reason}; multiply-adds done {totals['mac_share']:.1%} of a full pass "  # type: ignore[attr-defined]
            f"(predicted {report.estimate:.1%}); region reads copied {totals['gathered'] / 2 ** 30:.2f} GiB; "  # type: ignore[attr-defined]
            f"clean cache at most {report.cache_bytes / 2 ** 20:.0f} MiB",  # type: ignore[attr-defined]
            f"CPU time in the nodes: on regions {share(regions)}; on whole maps after the box grew past "
            f"{WHOLE_AREA:.0%} of the map {share(whole)}; outside the local rules (flatten, linear layers) {share(full)}",
            "slowest nodes: " + ", ".join(f"{n.name} {n.seconds:.1f} s ({n.macs / max(n.full_macs, 1):.0%} of its "
                                          "multiply-adds)" for n in top)]


def _memory(arch: str, threads: int) -> str:
    proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, arch, str(threads)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")})
    if proc.returncode != 0:
        return f"memory run failed: {proc.stderr.strip()[-300:]}"
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return (f"peak RSS of the incremental call alone, in a fresh process: {got['peak_kb'] / 2 ** 20:.2f} GB (after "
            f"building the model: {got['before_kb'] / 2 ** 20:.2f} GB; path {got['path']}, clean cache "
            f"{got['cache'] / 2 ** 20:.0f} MiB); target < 4 GB")


def run(quick: bool = False, arch: str = "resnet18", rounds: int = 1, threads: int | None = None,
        memory: bool = False) -> list[Table]:
    import captum.attr as ca
    import torchvision

    from convscope.methods import Occlusion

    warnings.filterwarnings("ignore", module="captum")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    size = 64 if quick else 224
    x = torch.randn(1, 3, size, size)
    inc = Occlusion(model, window=16, stride=8, max_batch=64, incremental=True if quick else "auto")
    fns = {
        "captum": lambda: ca.Occlusion(model).attribute(x, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8),
                                                        baselines=0.0, target=3, perturbations_per_eval=64),
        "convscope, incremental=False": lambda: Occlusion(model, window=16, stride=8, max_batch=64,
                                                          incremental=False).attribute(x, 3),
        "convscope, incremental": lambda: inc.attribute(x, 3),
    }
    load = os.getloadavg()[0]
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    wall: dict[str, list[float]] = {name: [] for name in fns}
    maps: dict[str, torch.Tensor] = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            c, w, maps[name] = _timed(fn)
            cpu[name].append(c)
            wall[name].append(w)
    windows = ((size - 16) // 8 + 1) ** 2
    table = Table(f"occlusion 16/8 ({windows} windows), batch 64: {arch} [1, 3, {size}, {size}] on cpu, "
                  f"{torch.get_num_threads()} threads", "captum")
    for name in fns:
        table.rows.append(Row(name, statistics.median(cpu[name]),
                              note=f"median of {rounds}; wall {statistics.median(wall[name]):.1f} s"))
    ratio = table.ratio("convscope, incremental")
    target = None if quick else {"vgg16": 4, "resnet18": 3}.get(arch)
    table.notes.append(f"incremental: {1 / ratio:.2f}x faster than Captum"
                       + (f" (target >= {target}x: {'met' if 1 / ratio >= target else 'NOT met'})" if target else "")
                       + f", {table.seconds('convscope, incremental=False') / table.seconds('convscope, incremental'):.2f}x "
                         "faster than incremental=False")
    table.notes.append("largest |difference| relative to the largest value: incremental vs incremental=False "
                       f"{_relative(maps['convscope, incremental'], maps['convscope, incremental=False']):.2e}, "
                       f"vs Captum {_relative(maps['convscope, incremental'], maps['captum']):.2e}")
    table.notes += _where_time_goes(inc.last_report)
    if memory:
        table.notes.append(_memory(arch, torch.get_num_threads()))
    table.notes.append(f"CPU time of this process; load average {load:.1f} before the run, {os.getloadavg()[0]:.1f} "
                       f"after, on {os.cpu_count()} cores (a shared machine)")
    return [table]


if __name__ == "__main__":
    def option(name: str, default: str) -> str:
        return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default

    for t in run(quick="--quick" in sys.argv, arch=option("--arch", "resnet18"), rounds=int(option("--rounds", "1")),
                 threads=int(option("--threads", "0")) or None, memory="--memory" in sys.argv):
        print(t.markdown())
