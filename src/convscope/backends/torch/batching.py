"""The batch knob: split many model evaluations into chunks of at most ``max_batch`` samples.

``max_batch`` is an int, None (no limit) or ``"auto"``. With ``"auto"`` the first chunk holds
one sample and is run under an allocation meter; the chunk size is then
``memory_budget(device) // bytes_per_sample``. Should a chunk still run out of memory (a CUDA
``OutOfMemoryError`` or the CPU allocator's "can't allocate memory"), the size is halved and
the same chunk is run again. Results never depend on the chunking, so a retry is harmless.

The meter counts every new tensor each operation creates (forward and backward) for one sample,
an upper bound of what that sample keeps alive. The budget is half the free memory (CUDA:
``torch.cuda.mem_get_info``; CPU: ``MemAvailable`` and the cgroup limit), and at most
:data:`CPU_BUDGET_CAP` on a CPU, where bigger batches stop paying off.

Example::

    batches = Batches("auto", x.device)
    for rows, out in batches.map(len(x), lambda rows: model(x[rows])):
        ...
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, TypeVar

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from convscope.backends.torch.memory import is_out_of_memory
from convscope.errors import ConvscopeError

MaxBatch = int | Literal["auto"] | None
T = TypeVar("T")


def check_max_batch(max_batch: MaxBatch) -> MaxBatch:
    """``max_batch`` if it is None, a positive int or ``"auto"`` (sized from free memory)."""
    if max_batch == "auto" and isinstance(max_batch, str):
        return max_batch
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise ConvscopeError(f"max_batch={max_batch!r} must be a positive int, 'auto' or None",
                             "max_batch is the most samples per model evaluation, e.g. max_batch=16; "
                             "'auto' sizes it from free memory.")
    return max_batch

CPU_BUDGET_CAP = 512 << 20  # bytes: beyond this CPU throughput no longer grows, only peak memory does
BUDGET_FRACTION = 0.5


def _cpu_available() -> int:
    """Bytes available to this process: MemAvailable, lowered by a cgroup v2 limit if any."""
    available = 4 << 30  # a guess where /proc is missing
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            available = min(available, int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(available, 0)


def memory_budget(device: torch.device) -> int:
    """Bytes one chunk of evaluations may use on ``device``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * BUDGET_FRACTION)
    return int(min(_cpu_available() * BUDGET_FRACTION, CPU_BUDGET_CAP))


class AllocationMeter(TorchDispatchMode):
    """Sums the bytes of every new tensor created by the operations run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, Tensor) and t.untyped_storage().data_ptr() not in inputs:  # not a view/in-place
                self.bytes += t.untyped_storage().nbytes()
        return out


def expansion_rows(items: slice, per: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Rows ``items`` of a sample-major expansion of every sample into ``per`` evaluations, as
    ``(sample on the host, sample on device, k on device)`` with ``row = sample * per + k``.
    Indexing device tensors with host indices copies them over, and that copy waits for all the
    work queued on the device: made on the device, the indices let the next chunk queue at once.

    Example: ``expansion_rows(slice(4, 7), 3, x.device)`` -> samples ``[1, 2, 2]``, ks ``[1, 0, 1]``.
    """
    host = torch.arange(items.start, items.stop) // per
    rows = torch.arange(items.start, items.stop, device=device)
    return host, rows // per, rows % per


class Batches:
    """Runs ``fn`` over consecutive slices of ``range(total)`` of at most ``max_batch`` items.

    With ``"auto"`` the size learned (and any back-off) carries over to later ``map`` calls.
    """

    def __init__(self, max_batch: MaxBatch, device: torch.device | None = None) -> None:
        self.auto = max_batch == "auto"
        self.size: int | None = None if self.auto else max_batch  # type: ignore[assignment]
        self.device = device or torch.device("cpu")

    def map(self, total: int, fn: Callable[[slice], T]) -> Iterator[tuple[slice, T]]:
        """Yield ``(rows, fn(rows))`` for slices covering ``range(total)`` in order."""
        start = 0
        while start < total:
            size = total - start if self.size is None and not self.auto else min(self.size or 1, total - start)
            rows = slice(start, start + size)
            try:
                result = self._measured(fn, rows) if self.auto and self.size is None else fn(rows)
            except Exception as error:
                if not (self.auto and self._out_of_memory(error)):
                    raise
                self._back_off(size, error)
                continue
            yield rows, result
            start = rows.stop

    def _out_of_memory(self, error: BaseException) -> bool:
        """Whether ``error`` says the device ran out of memory."""
        return is_out_of_memory(error)

    def _measured(self, fn: Callable[[slice], T], rows: slice) -> T:
        with AllocationMeter() as meter:
            result = fn(rows)
        per_item = max(meter.bytes // max(rows.stop - rows.start, 1), 1)
        self.size = max(1, memory_budget(self.device) // per_item)
        return result

    def _back_off(self, size: int, error: BaseException) -> None:
        if size <= 1:
            raise ConvscopeError("out of memory even with one sample per model evaluation",
                                 "Free memory (smaller model or input, fewer targets) or use a device "
                                 "with more memory.") from error
        self.size = size // 2
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
