"""The C unpooling kernel (convscope/ops/native.py): exact against autograd, built once, optional.

Oracle: ``autograd_unpool`` (tests/reference/autograd_pool.py), autograd's max-pool gradient on
the CPU, bitwise (the kernel adds shared switches in the order, and for bfloat16 with the
rounding, of PyTorch's max-pool backward). float16 has no kernel: it takes PyTorch's backward
(tests/unit/test_pooling.py). Where no C compiler exists the
kernel is skipped and unpool takes its PyTorch route, which tests/unit/test_pooling.py checks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import unittest.mock
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference.autograd_pool import autograd_unpool

from convscope.errors import ConvscopeError
from convscope.ops import Switches, max_pool_with_switches, native, pooling, unpool

DTYPES = [torch.bfloat16, torch.float32, torch.float64]
SCALES = [1e-6, 1.0, 1e3, 3e4]  # sums round at every scale; bfloat16 keeps float32's exponent range


def random_reals(shape: tuple, gen: torch.Generator, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """Normal draws times ``scale``: sums at shared switches round (and may overflow) in every dtype."""
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def assert_bitwise(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Same dtype, same values exactly (NaN where the other has NaN: inf - inf in an overflowing sum)."""
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
needs_kernel = pytest.mark.skipif(native.unpool_kernel(torch.float32) is None,
                                  reason=f"no native kernel: {native.unavailable_reason()}")


@contextlib.contextmanager
def kernel_threads(n: int) -> Iterator[None]:
    """torch's thread count set to ``n``, every output large enough to use them all; both undone after."""
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with unittest.mock.patch.object(pooling, "_BYTES_PER_THREAD", 1):
            yield
    finally:
        torch.set_num_threads(saved)


@pytest.fixture
def fresh_library() -> Iterator[None]:
    """Forget the loaded library before and after the test, so patched settings take effect and go away."""
    native._library.cache_clear()
    yield
    native._library.cache_clear()


def test_kernel_is_used_wherever_a_compiler_is() -> None:
    """A broken build would silently cost speed: where cc exists, the kernel must load."""
    if native._compiler() is None or os.environ.get("CONVSCOPE_NATIVE") == "0":
        pytest.skip("no C compiler here, or the kernel is switched off")
    assert native.unavailable_reason() is None
    assert all(native.unpool_kernel(dt) for dt in DTYPES)
    x = torch.randn(2, 3, 8, 8)
    pooled, sw = max_pool_with_switches(x, 2)
    with unittest.mock.patch.object(pooling, "_unpool_by_scatter_add", side_effect=AssertionError("not taken")):
        unpool(pooled, sw)  # the contiguous float32 CPU route is the kernel


@needs_kernel
@settings(max_examples=80, deadline=None)
@given(dims=st.sampled_from([1, 2, 3]), data=st.data())
def test_kernel_is_the_max_pool_gradient_bitwise(dims: int, data: st.DataObject) -> None:
    """Random reals (so the order and rounding of additions at shared switches show), in every float dtype:
    bfloat16 rounds after every addition, as PyTorch's max-pool backward does."""
    k = tuple(data.draw(st.integers(1, 4)) for _ in range(dims))
    s = tuple(data.draw(st.integers(1, 3)) for _ in range(dims))
    p = tuple(data.draw(st.integers(0, ki // 2)) for ki in k)
    shape = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4)),
             *(data.draw(st.integers(4, 13 if dims < 3 else 7)) for _ in range(dims)))
    dtype = data.draw(st.sampled_from(DTYPES))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    x = torch.randn(shape, generator=gen).to(dtype)
    try:
        pooled, sw = max_pool_with_switches(x, k, s, p)
    except ConvscopeError:
        return  # a geometry PyTorch mishandles (tested in test_pooling.py)
    values = random_reals(pooled.shape, gen, dtype, data.draw(st.sampled_from(SCALES)))
    got = pooling._unpool_by_native_kernel(values, sw)
    assert_bitwise(got, autograd_unpool(x, values, k, s, p, (1,) * dims, False))


@needs_kernel
@settings(max_examples=40, deadline=None)
@given(dims=st.sampled_from([2, 3]), channels=st.sampled_from([1, 3, 16, 37, 70]), threads=st.sampled_from([1, 3, 8]),
       data=st.data())
def test_channels_last_kernel_is_the_max_pool_gradient_bitwise(dims: int, channels: int, threads: int,
                                                               data: st.DataObject) -> None:
    """channels_last values: one slab per sample, or (more threads than samples) blocks of 16+ channels
    with a ragged last one; the result stays channels_last."""
    shape = (data.draw(st.integers(1, 3)), channels, *(data.draw(st.integers(3, 9)) for _ in range(dims)))
    k = data.draw(st.sampled_from([2, 3]))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    dtype = data.draw(st.sampled_from(DTYPES))
    x = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=fmt)
    pooled, sw = max_pool_with_switches(x, (k,) * dims, stride=(2,) * dims)
    values = random_reals(pooled.shape, gen, dtype, data.draw(st.sampled_from(SCALES))).contiguous(memory_format=fmt)
    with kernel_threads(threads):
        got = pooling._unpool_by_native_kernel(values, sw)
    if pooling._is_channels_last(values):  # else (one channel, or 1x1 pooled maps) both layouts are the same
        assert got.is_contiguous(memory_format=fmt) and not got.is_contiguous()
    expected = autograd_unpool(x, values, (k,) * dims, (2,) * dims, (0,) * dims, (1,) * dims, False)
    assert_bitwise(got, expected)


@pytest.mark.parametrize(("n", "c", "threads", "block"), [
    (8, 64, 2, 64),     # enough samples for the threads: one slab of all channels per sample
    (32, 512, 2, 512),
    (1, 64, 2, 32),     # one sample, two threads: two blocks of 32 channels
    (1, 512, 16, 32),   # one sample on 16 threads: halved until every thread has a block
    (1, 40, 8, 16),     # never below 16 channels (a ragged last block of 8)
    (2, 8, 4, 8),       # fewer than 16 channels: one block of all of them
])
def test_channel_block_sizes(n: int, c: int, threads: int, block: int) -> None:
    with kernel_threads(threads):
        assert pooling._channel_block(n, c) == block


@needs_kernel
def test_channels_last_out_of_range_index_names_the_sample() -> None:
    x = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    pooled, sw = max_pool_with_switches(x, 2)
    bad = sw.indices.clone()
    bad[1, 2, 0, 0] = -1
    with pytest.raises(ConvscopeError, match="sample 1 lie outside"):
        pooling._unpool_by_native_kernel(pooled, Switches(bad, x.shape, 2, 2, 0, 1))


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 5, 300])
def test_thread_split_covers_every_row_once(threads: int) -> None:
    """Row ranges per thread, fewer rows than threads, and more threads than the kernel allows."""
    x = torch.randn(1, 3, 9, 9, generator=torch.Generator().manual_seed(threads))
    pooled, sw = max_pool_with_switches(x, 3, stride=2)
    values = torch.randn(pooled.shape, generator=torch.Generator().manual_seed(1))
    with kernel_threads(threads):
        got = pooling._unpool_by_native_kernel(values, sw)
    assert torch.equal(got, autograd_unpool(x, values, (3, 3), (2, 2), (0, 0), (1, 1), False))


@needs_kernel
def test_non_contiguous_values_and_empty_batch() -> None:
    x = torch.randn(2, 4, 10, 10)
    _, sw = max_pool_with_switches(x, 2)
    strided = torch.randn(2, 4, 5, 10)[..., ::2]
    assert not strided.is_contiguous()
    assert torch.equal(pooling._unpool_by_native_kernel(strided, sw),
                       autograd_unpool(x, strided, (2, 2), (2, 2), (0, 0), (1, 1), False))
    pooled0, sw0 = max_pool_with_switches(torch.randn(0, 4, 10, 10), 2)
    assert pooling._unpool_by_native_kernel(pooled0, sw0).shape == (0, 4, 10, 10)


@needs_kernel
def test_out_of_range_index_is_refused_not_written() -> None:
    """Indices edited behind the record's back: the kernel skips them and unpool raises, naming the plane."""
    x = torch.randn(1, 2, 4, 4)
    pooled, sw = max_pool_with_switches(x, 2)
    bad = sw.indices.clone()
    bad[0, 1, 0, 0] = 10**9
    record = Switches(bad, x.shape, 2, 2, 0, 1)
    with pytest.raises(ConvscopeError, match="sample 0, channel 1 lie outside"):
        pooling._unpool_by_native_kernel(pooled, record)  # check_indices bypassed on purpose
    with pytest.raises(ConvscopeError, match="outside the input plane"):
        unpool(pooled, record)  # the public route checks first


def test_switched_off_by_environment() -> None:
    """CONVSCOPE_NATIVE=0: no kernel, and unpool is still exact (own process: the library is per process)."""
    code = ("import torch; from convscope.ops import native, max_pool_with_switches, unpool\n"
            "x = torch.randn(2, 3, 9, 9); p, sw = max_pool_with_switches(x, 3, 2)\n"
            "xr = x.requires_grad_(); g = torch.autograd.grad(torch.nn.functional.max_pool2d(xr, 3, 2), xr, p)[0]\n"
            "print(native.unavailable_reason(), torch.equal(unpool(p, sw), g))")
    env = {**os.environ, "CONVSCOPE_NATIVE": "0"}
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "disabled by CONVSCOPE_NATIVE True"


def test_missing_compiler_and_broken_source_fall_back(fresh_library: None, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "gcc '-O2")  # an unclosed quote: said, not raised
    assert "cannot read CC=" in native.unavailable_reason()
    native._library.cache_clear()
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert "could not build or load" in native.unavailable_reason()
    assert native.unpool_kernel(torch.float32) is None
    x = torch.randn(2, 3, 9, 9)
    pooled, sw = max_pool_with_switches(x, 3, stride=2)
    assert torch.equal(unpool(pooled, sw), autograd_unpool(x, pooled, (3, 3), (2, 2), (0, 0), (1, 1), False))
    real_cc = shutil.which("cc") or shutil.which("gcc")
    if real_cc is None:
        return  # the broken-source half needs a compiler to fail with
    native._library.cache_clear()
    monkeypatch.setenv("CC", f"env {real_cc}")  # a command with arguments, as in CC="ccache gcc"
    assert native.unavailable_reason() is None
    native._library.cache_clear()
    broken = tmp_path / "broken.c"
    broken.write_text("int convscope_unpool_f32( {\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    reason = native.unavailable_reason()
    assert "could not build or load broken.c" in reason and "error" in reason
    assert len(list((tmp_path / "cache").rglob("*.so"))) == 1, "a failed build must leave nothing to load"


@needs_kernel
def test_built_once_then_loaded_and_rebuilt_when_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path))
    compiler = native._compiler()
    path = native._built(compiler)
    assert path.exists() and path.with_name(path.name + ".json").exists()
    builds = []
    real_run = subprocess.run

    def counting_run(cmd: list[str], *args: object, **kwargs: object) -> subprocess.CompletedProcess:
        if "-shared" in cmd:
            builds.append(cmd)
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(native.subprocess, "run", counting_run)
    assert native._built(compiler) == path and builds == []  # verified copy reused
    path.write_bytes(path.read_bytes()[:100])  # truncated: fails its checksum
    assert native._built(compiler) == path and len(builds) == 1
    assert path.stat().st_size > 100
