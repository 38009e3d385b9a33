"""C kernels for the CPU, built at first use with the system's C compiler and loaded with ctypes.

PyTorch's generic ``scatter_add_`` pays a strided, bounds-checked loop per element; the plain C
loop in ``native_unpool.c`` unpools a zeroed, cache-sized row at a time in 0.65-0.85x its time
(benchmarks/bench_unpool_torch.py). The source is plain C with pthreads: ``cc -O2 -shared``
builds it in well under a second, once per source, compiler and machine; the library lands in
the cache directory (``$CONVSCOPE_CACHE/native``) as a checksummed entry, and later processes
load it without compiling.

Nothing depends on it: without a compiler (or with ``CONVSCOPE_NATIVE=0``, or on Windows) every
caller keeps its PyTorch route, and :func:`unavailable_reason` says why.

Example::

    kernel = unpool_kernel(torch.float32)  # None when no compiler is at hand
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from convscope.cache import cache_dir, read_checked, write_checked

SOURCE = Path(__file__).with_name("native_unpool.c")
FLAGS = ("-O2", "-shared", "-fPIC", "-pthread")  # no -march: the cached library may move between CPUs
COMPILE_TIMEOUT_S = 120
_KERNELS = {torch.float32: "convscope_unpool_f32", torch.float64: "convscope_unpool_f64",
            torch.bfloat16: "convscope_unpool_bf16"}  # float16: PyTorch's max-pool backward is faster

UnpoolKernel = Callable[[int, int, int, int, int, int, int, int, int], int]
"""``kernel(out, values, idx, n, plane, pooled, channels, channel_block, threads) -> first bad n or -1``
(pointers to ``[n, plane, channels]`` output and ``[n, pooled, channels]`` values and indices)."""


def unpool_kernel(dtype: torch.dtype) -> UnpoolKernel | None:
    """The C unpooling kernel for ``dtype`` (bfloat16, float32, float64), or None where there is none."""
    lib = _library()[0]
    if lib is None or dtype not in _KERNELS:
        return None
    return getattr(lib, _KERNELS[dtype])


def unavailable_reason() -> str | None:
    """Why the native kernels are not in use (None when they are)."""
    return _library()[1]


def _compiler() -> list[str] | None:
    """``$CC`` split like a shell would (``ccache gcc`` works), else the first of cc, gcc, clang on PATH."""
    found = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    command = shlex.split(os.environ.get("CC", "")) or ([found] if found else [])
    return command or None


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str | None]:
    """The loaded library and None, or None and the reason (computed once per process)."""
    if os.environ.get("CONVSCOPE_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "disabled by CONVSCOPE_NATIVE"
    if os.name != "posix":
        return None, f"no native kernels on {platform.system()}"
    try:
        compiler = _compiler()
    except ValueError as exc:  # shlex: an unclosed quote in $CC
        return None, f"cannot read CC={os.environ.get('CC')!r}: {exc}"
    if compiler is None:
        return None, "no C compiler found (set CC, or install cc, gcc or clang)"
    try:
        path = _built(compiler)
        lib = ctypes.CDLL(str(path))
        for name in _KERNELS.values():
            fn = getattr(lib, name)
            fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 6
            fn.restype = ctypes.c_int64
    except (OSError, AttributeError, subprocess.SubprocessError, RuntimeError) as exc:
        return None, f"could not build or load {SOURCE.name} with {shlex.join(compiler)}: {exc}"
    return lib, None


def _built(compiler: list[str]) -> Path:
    """The library's path in the cache, compiled first unless a verified copy is there."""
    version = subprocess.run([*compiler, "--version"], check=False, capture_output=True, text=True,
                             timeout=COMPILE_TIMEOUT_S).stdout
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(FLAGS).encode(),
                                     platform.machine().encode(), platform.system().encode()])).hexdigest()
    path = cache_dir() / "native" / f"{SOURCE.stem}-{key[:16]}.so"
    if not isinstance(read_checked(path), str):
        return path
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / path.name
        done = subprocess.run([*compiler, *FLAGS, str(SOURCE), "-o", str(out)], check=False, capture_output=True,
                              text=True, timeout=COMPILE_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip()[-500:] or f"exit status {done.returncode}")
        write_checked(path, out.read_bytes(), {"source": SOURCE.name, "compiler": shlex.join(compiler),
                                               "version": version.strip().splitlines()[:1], "flags": FLAGS})
    return path
