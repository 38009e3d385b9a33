"""Fresh output tensors that are cheap to fill on CPU: large ones are advised for huge pages.

A freshly allocated multi-megabyte CPU tensor usually comes straight from ``mmap``, and its first
write page-faults once per 4 KiB page; for an op that only writes its output once (like
``unpool``), those faults can cost more than the op itself. On Linux with transparent huge pages
in ``madvise`` mode we ask for 2 MiB pages over the tensor (``madvise(MADV_HUGEPAGE)``, the
same advice PyTorch gives under ``THP_MEM_ALLOC_ENABLE=1``), which cuts the faults 512-fold.
The advice is a hint on memory we just allocated and no one else uses: where it is not
available or fails, nothing changes.

Example::

    out = empty_output((32, 512, 28, 28), torch.float32, torch.device("cpu"))
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable, Sequence

import torch

HUGE_PAGE = 2 << 20  # bytes in one transparent huge page on x86-64 and arm64 Linux
MIN_ADVISED_BYTES = 4 << 20  # below this, a huge page or two would not pay for the system call
_MADV_HUGEPAGE = 14
_THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """libc's ``madvise`` when huge pages are granted on advice only (mode ``[madvise]``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open(_THP_MODE_FILE) as f:
            if "[madvise]" not in f.read():
                return None  # "[always]" needs no advice, "[never]" ignores it
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def advise_huge_pages(t: torch.Tensor) -> None:
    """Hint the kernel to back the whole 2 MiB pages inside ``t``'s memory with huge pages."""
    madvise = _madvise()
    if madvise is None or t.device.type != "cpu" or t.nbytes < MIN_ADVISED_BYTES:
        return
    start = -(-t.data_ptr() // HUGE_PAGE) * HUGE_PAGE  # first huge-page boundary inside t
    end = (t.data_ptr() + t.nbytes) // HUGE_PAGE * HUGE_PAGE
    if end > start:
        madvise(start, end - start, _MADV_HUGEPAGE)  # a hint: failure leaves 4 KiB pages


def empty_output(shape: Sequence[int], dtype: torch.dtype, device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """``torch.empty`` for an output about to be written in full (huge-page advised on CPU)."""
    out = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    advise_huge_pages(out)
    return out
