"""Unpooling speed, side by side: convscope's unpool, F.max_unpool2d, the max-pool gradient
routes, and a bandwidth floor (zero-fill the output, copy the pooled values into it).

Every route is checked against the gradient before it is timed (F.max_unpool2d is exact only
when windows do not overlap). The "gradient: aten" row is the max-pool backward kernel on a
plain allocation (convscope's CPU route before it moved to scatter_add_, which measured as fast
or faster on both CPUs tried); the "alt" row prices int32 switches converted back to int64 at
each unpool.
Routes are timed round-robin over several rounds and each keeps its best median, so a burst of
load from other processes on a shared machine does not land on one row only.

    python -m benchmarks.bench_unpool_torch [--quick] [--threads N] [--device cuda]

Two threads by default (the issue's setting). On a machine shared with other busy processes,
two-thread timings measure the scheduler more than the op (a parallel region waits for its
descheduled thread, and every row collapses towards one time slice); ``--threads 1`` then gives
the steadier ratios. ``--device cuda`` times the same routes on a GPU (each call followed by a
synchronise; ``--threads`` is then irrelevant). On the CPU, float16 and bfloat16 tables follow:
unpool and each of its CPU routes for those types.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.harness import Row, Table, measure, synced
from convscope.ops import Switches, max_pool_with_switches, native, pooling, unpool
from convscope.ops.allocation import empty_output

CASES = [  # (input shape, kernel, stride): the two targets, then AlexNet/ZF-style overlapping windows
    ((8, 64, 112, 112), 2, 2),
    ((32, 512, 28, 28), 2, 2),
    ((8, 96, 55, 55), 3, 2),
]
FRESH = "fresh output: empty + zero_ (no unpooling)"
_NO_RESULT = ("bandwidth", FRESH)  # rows that do not unpool
WRONG = "WRONG: differs from the max-pool gradient (overwrites shared switches)"
BANDWIDTH_NOTE = "preallocated output: zero_ + copy_ of n values"


def bandwidth(x: torch.Tensor, values: torch.Tensor) -> Callable[[], object]:
    """The reference row: zero a preallocated output of ``x``'s size and copy ``values`` into it."""
    out, n = torch.empty_like(x), values.numel()
    return lambda: (out.zero_(), out.view(-1)[:n].copy_(values.view(-1)))


def routes(x: torch.Tensor, values: torch.Tensor, sw: Switches) -> dict[str, Callable[[], object]]:
    """Every way to unpool ``values``, the bandwidth floor first (it is the reference row)."""
    (k, _), (s, _) = sw.kernel_size, sw.stride
    idx = sw.indices
    xg = x.clone().requires_grad_()
    graph = F.max_pool2d(xg, k, s)
    idx32 = idx.to(torch.int32)

    def int32_switches() -> torch.Tensor:
        widened = dataclasses.replace(sw, indices=idx32.long())
        widened._trust_indices()
        return unpool(values, widened)

    last = torch.channels_last
    _, sw_last = max_pool_with_switches(x.contiguous(memory_format=last), k, s)
    values_last = values.contiguous(memory_format=last)
    cpu_routes = {  # unpool's CPU routes one by one: the C kernel, and scatter_add_ where no compiler is
        "route: native C kernel": lambda: pooling._unpool_by_native_kernel(values, sw),
        "route: scatter_add_ (no compiler)": lambda: pooling._unpool_by_scatter_add(values, sw),
        FRESH: lambda: empty_output(x.shape, x.dtype, x.device).zero_(),
        "channels_last: convscope unpool": lambda: unpool(values_last, sw_last),
        "channels_last: scatter_add_ (no compiler)": lambda: pooling._unpool_by_scatter_add(values_last, sw_last),
    } if x.device.type == "cpu" and native.unpool_kernel(x.dtype) else {}
    return {
        "bandwidth": bandwidth(x, values),
        "convscope unpool": lambda: unpool(values, sw),
        **cpu_routes,
        "F.max_unpool2d": lambda: F.max_unpool2d(values, idx, k, s, output_size=x.shape[2:]),
        "gradient: aten max_pool2d backward": lambda: torch.ops.aten.max_pool2d_with_indices_backward(
            values, x, [k, k], [s, s], [0, 0], [1, 1], False, idx),
        "gradient: autograd.grad": lambda: torch.autograd.grad(graph, xg, values, retain_graph=True)[0],
        "alt: int32 switches (to int64, then unpool)": int32_switches,
    }


def unpool_table(shape: tuple[int, ...], kernel: int, stride: int, quick: bool,
                 device: torch.device = torch.device("cpu")) -> Table:
    """One table: every route on one input shape, each verified against the gradient first."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device)
    pooled, sw = max_pool_with_switches(x, kernel, stride)
    values = torch.randn(pooled.shape, generator=gen).to(device)
    plain = routes(x, values, sw)
    todo = {name: synced(fn, device) for name, fn in plain.items()}
    expected = plain["gradient: autograd.grad"]()  # the oracle every other route must equal
    # CPU routes add in a fixed order (bitwise equal); CUDA atomics add shared switches in any order
    same = torch.equal if device.type == "cpu" or not sw.overlapping else \
        (lambda a, b: torch.allclose(a, b, rtol=1e-6, atol=1e-6))
    notes = {name: "" if same(fn(), expected) else WRONG for name, fn in plain.items() if name not in _NO_RESULT}
    notes["bandwidth"] = BANDWIDTH_NOTE
    if FRESH in plain:
        notes[FRESH] = "the page faults a new output costs, for scale"
    best = round_robin(todo, quick)
    overlap = " (overlapping)" if sw.overlapping else ""
    cpu_native = native.unpool_kernel(values.dtype) is not None
    where = "" if device.type == "cpu" else f" on {torch.cuda.get_device_name(device)}"
    table = Table(f"unpool {list(shape)} -> {list(pooled.shape)}, {kernel}x{kernel} stride {stride}{overlap}{where}",
                  reference="bandwidth")
    out_bytes, v_bytes = values.element_size() * x.numel(), values.nbytes
    for name, seconds in best.items():
        moved = {"bandwidth": out_bytes + 2 * v_bytes, FRESH: out_bytes}.get(
            name, out_bytes + v_bytes + sw.indices.nbytes)
        table.rows.append(Row(name, seconds, moved, notes[name]))
    table.notes += [
        ("CUDA, each call synchronised; " if device.type == "cuda" else f"{torch.get_num_threads()} threads, ") +
        f"load average {os.getloadavg()[0]:.1f} at the end; GB/s counts "
        "output + values + int64 switches (bandwidth row: output + 2x values).",
        "CPU route of convscope unpool: " + (f"the native C kernel ({' '.join(native._compiler() or [])})" if cpu_native else
                                            f"scatter_add_ (no native kernel: {native.unavailable_reason()})"),
        ("fresh output row: allocating and zeroing a new output of this size, before any unpooling; every "
         "route that returns a new tensor pays it (page faults once outputs outgrow the allocator's reuse, "
         "about 32 MB), the preallocated bandwidth row does not."),
        ("int32 switches would halve switch memory (4 instead of 8 bytes per pooled element) but pay the "
         "conversion back to int64 in their row."),
    ]
    return table


def round_robin(todo: dict[str, Callable[[], object]], quick: bool) -> dict[str, float]:
    """Each callable's best median time over rounds that visit every row in turn, so a burst of
    load from other processes spreads over all rows."""
    best = {name: float("inf") for name in todo}
    for _ in range(1 if quick else 5):
        for name, fn in todo.items():
            best[name] = min(best[name], measure(fn, repeat=5, min_time=0.02 if quick else 0.05))
    return best


def half_table(dtype: torch.dtype, shape: tuple[int, ...], kernel: int, stride: int, quick: bool) -> Table:
    """float16 or bfloat16 on the CPU: unpool and each of its routes, verified bitwise first."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(dtype)
    pooled, sw = max_pool_with_switches(x, kernel, stride)
    values = torch.randn(pooled.shape, generator=gen).to(dtype)
    todo: dict[str, Callable[[], object]] = {
        "bandwidth": bandwidth(x, values),
        "convscope unpool": lambda: unpool(values, sw),
        "route: PyTorch's max-pool backward": lambda: pooling._unpool_by_max_pool_backward(values, sw),
        "route: scatter_add_": lambda: pooling._unpool_by_scatter_add(values, sw),
    }
    if native.unpool_kernel(dtype):
        todo["route: native C kernel"] = lambda: pooling._unpool_by_native_kernel(values, sw)
    xg = x.clone().requires_grad_()
    expected = torch.autograd.grad(F.max_pool2d(xg, kernel, stride), xg, values)[0]
    notes = {name: "" if torch.equal(fn(), expected) else "differs from the max-pool gradient in the last bit"
             for name, fn in todo.items() if name != "bandwidth"}
    notes["bandwidth"] = BANDWIDTH_NOTE
    best = round_robin(todo, quick)
    overlap = " (overlapping)" if sw.overlapping else ""
    table = Table(f"{str(dtype).removeprefix('torch.')} unpool {list(shape)} -> {list(pooled.shape)}, "
                  f"{kernel}x{kernel} stride {stride}{overlap}", reference="bandwidth")
    moved = x.nbytes + values.nbytes + sw.indices.nbytes
    table.rows += [Row(name, t, x.nbytes + 2 * values.nbytes if name == "bandwidth" else moved, notes[name])
                   for name, t in best.items()]
    table.notes.append(f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at the end; "
                       "a note marks each route whose result is not bitwise the max-pool gradient.")
    return table


def run(quick: bool, threads: int = 2, device: str = "cpu") -> list[Table]:
    """All tables; ``quick`` shortens the timing loops (for smoke runs, not for numbers)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tables = [unpool_table(shape, k, s, quick, torch.device(device)) for shape, k, s in CASES]
        if device == "cpu":
            tables += [half_table(dtype, shape, k, s, quick) for dtype in (torch.bfloat16, torch.float16)
                       for shape, k, s in (CASES[0], CASES[2])]
        return tables
    finally:
        torch.set_num_threads(saved)


if __name__ == "__main__":
    args = sys.argv[1:]
    n_threads = int(args[args.index("--threads") + 1]) if "--threads" in args else 2
    on = args[args.index("--device") + 1] if "--device" in args else "cpu"
    for t in run(quick="--quick" in args, threads=n_threads, device=on):
        print(t.markdown())
