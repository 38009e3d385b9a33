"""Side-by-side timing: every row of a table is measured in the same run, and reported as a
ratio to the table's reference row, because absolute times on shared machines mean little.

A benchmark module ``benchmarks/bench_<topic>.py`` defines ``run(quick: bool) -> list[Table]``;
``benchmarks/run.py`` runs them all and writes BENCHMARKS.md.

Example::

    t = Table("unpool [8,64,112,112]", reference="bandwidth")
    t.add("bandwidth", lambda: out.zero_().copy_(src), bytes_moved=nbytes)
    t.add("convscope", lambda: unpool(v, s), bytes_moved=nbytes)
    print(t.markdown())
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def measure(fn: Callable[[], object], *, repeat: int = 7, warmup: int = 2, min_time: float = 0.05) -> float:
    """Median seconds of one call of ``fn``; each sample loops until ``min_time`` has passed."""
    for _ in range(warmup):
        fn()
    loops = 1
    while True:  # find a loop count that makes one sample last at least min_time
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time or loops >= 1 << 16:
            break
        loops *= 2
    samples = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - start) / loops)
    return statistics.median(samples)


@dataclass
class Row:
    name: str
    seconds: float
    bytes_moved: int | None = None
    note: str = ""


@dataclass
class Table:
    """Rows timed in one run; ratios are to the ``reference`` row (lower is faster)."""

    title: str
    reference: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, fn: Callable[[], object], *, bytes_moved: int | None = None,
            note: str = "", **measure_kw: float) -> Row:
        row = Row(name, measure(fn, **measure_kw), bytes_moved, note)  # type: ignore[arg-type]
        self.rows.append(row)
        return row

    def add_failure(self, name: str, error: BaseException) -> None:
        self.rows.append(Row(name, float("nan"), note=f"fails: {type(error).__name__}: {str(error)[:80]}"))

    def seconds(self, name: str) -> float:
        return next(r.seconds for r in self.rows if r.name == name)

    def ratio(self, name: str, to: str | None = None) -> float:
        return self.seconds(name) / self.seconds(to or self.reference)

    def markdown(self) -> str:
        ref = self.seconds(self.reference)
        has_bw = any(r.bytes_moved for r in self.rows)
        head = "| implementation | time (ms) | ratio to " + self.reference + " |" + (" GB/s |" if has_bw else "") + " note |"
        lines = [f"### {self.title}", "", head, "|---|---:|---:|" + ("---:|" if has_bw else "") + "---|"]
        for r in self.rows:
            ok = r.seconds == r.seconds  # not NaN
            cells = [r.name, f"{r.seconds * 1e3:.3f}" if ok else "-", f"{r.seconds / ref:.2f}x" if ok else "-"]
            if has_bw:
                cells.append(f"{r.bytes_moved / r.seconds / 1e9:.2f}" if ok and r.bytes_moved else "")
            cells.append(r.note)
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def full_float32(device: torch.device) -> None:
    """Turn off TF32 on CUDA (cuDNN uses it for float32 convolutions by default), so maps compared
    across libraries and batch layouts differ by float32 rounding only."""
    if device.type == "cuda":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


def synced(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """``fn`` followed by a CUDA synchronise when ``device`` is a GPU (so timings see the work)."""
    if device.type != "cuda":
        return fn
    import torch

    return lambda: (fn(), torch.cuda.synchronize())


def interleaved(table: Table, fns: dict[str, Callable[[], object]], rounds: int,
                clock: Callable[[], float]) -> None:
    """Time the calls in alternation (A B A B ...), one median per row: on a shared machine a
    change of load then hits every row alike, which sequential timing does not guarantee."""
    for fn in fns.values():  # warm-up
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            gc.collect()
            start = clock()
            fn()
            samples[name].append(clock() - start)
    for name, times in samples.items():
        table.rows.append(Row(name, statistics.median(times), note=f"median of {rounds}, interleaved"))
