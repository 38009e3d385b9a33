"""max_pool_with_switches and unpool, checked against autograd, a naive loop and hand values.

The oracle for ``unpool(values, switches)`` is ``torch.autograd.grad(F.max_poolNd(x), x, values)``;
the oracle for "is this configuration bad" is PyTorch itself (it raises, or returns ``-inf`` for
a window made of padding only).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import unittest.mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from reference.autograd_pool import POOL, autograd_unpool

from convscope.errors import ConvscopeError
from convscope.ops import Switches, max_pool_with_switches, native, pooling, unpool

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
LAST = {4: torch.channels_last, 5: torch.channels_last_3d}  # by tensor rank


def torch_rejects(shape: tuple[int, ...], *args: object) -> bool:
    """Whether PyTorch raises for this pooling, or makes a window of padding only (-inf output)."""
    x = torch.randn(shape, dtype=torch.float64)  # finite, so -inf can only come from padding
    try:
        return bool(torch.isinf(POOL[len(shape) - 2](x, *args)).any())
    except RuntimeError:
        return True


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as ``kind``: contiguous, channels_last, or a strided (non-contiguous) view."""
    if kind == "channels_last" and t.dim() in LAST:
        return t.contiguous(memory_format=LAST[t.dim()])
    if kind == "strided":
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t.contiguous()


@st.composite
def pool_case(draw: st.DrawFn, dims: int = 2) -> dict:
    """A random pooling problem: shape, parameters, dtype, layout, tie-heavy or not."""
    k = tuple(draw(st.integers(1, 5)) for _ in range(dims))
    return {
        "shape": (draw(st.integers(1, 3)), draw(st.integers(1, 3)),
                  *(draw(st.integers(1, 12 if dims < 3 else 6)) for _ in range(dims))),
        "kernel_size": k,
        "stride": draw(st.none() | st.tuples(*[st.integers(1, 5)] * dims)),
        "padding": tuple(draw(st.integers(0, ki // 2)) for ki in k),
        "dilation": tuple(draw(st.integers(1, 3)) for _ in range(dims)),
        "ceil_mode": draw(st.booleans()),
        "dtype": draw(st.sampled_from(DTYPES)),
        "layout": draw(st.sampled_from(["contiguous", "channels_last", "strided"])),
        "ties": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def check_case(case: dict, device: str = "cpu") -> None:
    """unpool == autograd's max-pool gradient, exactly, or both we and PyTorch reject the case."""
    gen = torch.Generator().manual_seed(case["seed"])
    shape, dtype = case["shape"], case["dtype"]
    args = (case["kernel_size"], case["stride"], case["padding"], case["dilation"], case["ceil_mode"])
    torch_args = (args[0], args[1] or args[0], *args[2:])
    x = torch.randint(0, 4, shape, generator=gen) if case["ties"] else torch.randn(shape, generator=gen)
    x = layout(x.to(dtype=dtype, device=device), case["layout"])
    try:
        pooled, sw = max_pool_with_switches(x, *args)
    except ConvscopeError:
        assert torch_rejects(shape, *torch_args), "we rejected a configuration PyTorch handles"
        return
    assert not torch_rejects(shape, *torch_args), "we accepted a configuration PyTorch mishandles"
    ref_pooled, ref_idx = POOL[x.dim() - 2](x, *torch_args, return_indices=True)
    assert torch.equal(pooled, ref_pooled) and torch.equal(sw.indices, ref_idx)
    if device == "cpu":  # every CPU route adds in the backward's order, with its rounding: any reals
        values = torch.randn(pooled.shape, generator=gen).mul_(3).to(dtype)
    else:  # CUDA's atomic adds: small integers, whose sums are exact in every dtype and any order
        values = torch.randint(-3, 4, pooled.shape, generator=gen).to(dtype=dtype, device=device)
    values = layout(values, case["layout"])
    expected = autograd_unpool(x, values, *torch_args)
    got = unpool(values, sw)
    assert got.dtype == dtype and got.device == x.device and got.shape == x.shape
    assert torch.equal(got, expected)
    if dtype == torch.float64:  # arbitrary reals as well: same exact answer in double precision
        real = layout(torch.randn(pooled.shape, generator=gen, dtype=dtype).to(device), case["layout"])
        torch.testing.assert_close(unpool(real, sw), autograd_unpool(x, real, *torch_args), rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60, deadline=None)
@given(case=pool_case(dims=2))
def test_unpool_is_the_max_pool_gradient_2d(case: dict, device: str) -> None:
    check_case(case, device)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=30, deadline=None)
@given(case=st.sampled_from([1, 3]).flatmap(pool_case))
def test_unpool_is_the_max_pool_gradient_1d_3d(case: dict, device: str) -> None:
    check_case(case, device)


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from([1, 2, 3]).flatmap(pool_case))
def test_unpool_without_the_c_kernel_is_the_max_pool_gradient(case: dict) -> None:
    """The CPU routes where no C compiler exists (or CONVSCOPE_NATIVE=0, or Windows): bitwise on
    random reals too, float16 and bfloat16 with overlapping windows included."""
    with unittest.mock.patch.object(native, "unpool_kernel", lambda dtype: None):
        check_case(case)


@pytest.mark.parametrize(("dtype", "c_kernel", "route"), [
    (torch.float16, True, "_unpool_by_max_pool_backward"), (torch.float16, False, "_unpool_by_max_pool_backward"),
    (torch.bfloat16, False, "_unpool_by_max_pool_backward"), (torch.float32, False, "_unpool_by_scatter_add")])
def test_cpu_route_by_dtype(dtype: torch.dtype, c_kernel: bool, route: str) -> None:
    """float16, and bfloat16 without the C kernel, take PyTorch's max-pool backward (its rounding,
    and faster than scatter_add_); float32 without the kernel takes scatter_add_."""
    pooled, sw = max_pool_with_switches(torch.randn(2, 3, 9, 9).to(dtype), 3, 2)
    taken = unittest.mock.Mock(wraps=getattr(pooling, route))
    no_kernel = unittest.mock.patch.object(native, "unpool_kernel", lambda dtype: None)
    with no_kernel if not c_kernel else contextlib.nullcontext(), unittest.mock.patch.object(pooling, route, taken):
        unpool(pooled, sw)
    taken.assert_called_once()


def _scatter_add_in_blocks_of_3_planes(values: torch.Tensor, sw: Switches) -> torch.Tensor:
    """The CPU scatter route with cache blocks of three planes (so blocks, and a ragged last one, occur)."""
    plane_bytes = sw.plane_size * values.element_size()
    with unittest.mock.patch.object(pooling, "_cache_block_bytes", lambda: 3 * plane_bytes), \
            unittest.mock.patch.object(pooling, "_UNBLOCKED_BYTES", 0):
        return pooling._unpool_by_scatter_add(values, sw)


NATIVE = [pooling._unpool_by_native_kernel] if native.unpool_kernel(torch.float64) else []  # test_native.py says why not


@pytest.mark.parametrize("route", [pooling._unpool_by_scatter_add, pooling._unpool_by_max_unpool,
                                   _scatter_add_in_blocks_of_3_planes, pooling._unpool_by_max_pool_backward,
                                   *NATIVE])
@settings(max_examples=40, deadline=None)
@given(case=st.sampled_from([1, 2, 3]).flatmap(pool_case))
def test_every_route_is_the_max_pool_gradient_where_it_is_used(case: dict, route) -> None:
    """Each route on the CPU, whichever device would pick it (CUDA takes max-unpool and scatter-add)."""
    gen = torch.Generator().manual_seed(case["seed"])
    args = (case["kernel_size"], case["stride"], case["padding"], case["dilation"], case["ceil_mode"])
    x = torch.randint(0, 4, case["shape"], generator=gen).double()
    try:
        pooled, sw = max_pool_with_switches(x, *args)
    except ConvscopeError:
        return
    if route is pooling._unpool_by_max_unpool and sw.overlapping:
        return  # max-unpool writes: it is only taken where no two windows share a position
    values = torch.randn(pooled.shape, generator=gen, dtype=torch.float64)
    expected = autograd_unpool(x, values, args[0], args[1] or args[0], *args[2:])
    torch.testing.assert_close(route(values, sw), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "strided"])
def test_alexnet_pooling_every_dtype_and_layout(device: str, dtype: torch.dtype, kind: str) -> None:
    case = {"shape": (2, 4, 13, 13), "kernel_size": 3, "stride": 2, "padding": 0, "dilation": 1,
            "ceil_mode": False, "dtype": dtype, "layout": kind, "ties": True, "seed": 7}
    check_case(case, device)
    check_case({**case, "shape": (3, 2, 12, 11), "padding": 1, "ceil_mode": True, "ties": False}, device)


def test_hand_computed_overlap_adds_and_max_unpool2d_overwrites() -> None:
    # 3x3 input whose maximum, 9, sits in the centre: all four 2x2 stride-1 windows pick it
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 5.0], [6.0, 7.0, 8.0]]).view(1, 1, 3, 3)
    pooled, sw = max_pool_with_switches(x, 2, stride=1)
    assert pooled.flatten().tolist() == [9.0] * 4 and sw.indices.flatten().tolist() == [4] * 4
    values = torch.tensor([1.0, 10.0, 100.0, 1000.0]).view(1, 1, 2, 2)
    expected = torch.zeros(1, 1, 3, 3)
    expected[0, 0, 1, 1] = 1111.0
    assert torch.equal(unpool(values, sw), expected)
    overwritten = F.max_unpool2d(values, sw.indices, 2, stride=1, output_size=(3, 3))
    assert overwritten[0, 0, 1, 1] in (1.0, 10.0, 100.0, 1000.0)  # keeps one value, not the sum
    assert not torch.equal(overwritten, expected)


def test_max_unpool2d_is_wrong_for_alexnet_pooling_but_unpool_is_right() -> None:
    x = torch.randn(2, 8, 27, 27, generator=torch.Generator().manual_seed(0))
    pooled, sw = max_pool_with_switches(x, 3, stride=2)
    values = torch.rand_like(pooled) + 1.0  # positive, so sums differ from any single value
    expected = autograd_unpool(x, values, 3, 2)
    assert torch.equal(unpool(values, sw), expected)
    overwritten = F.max_unpool2d(values, sw.indices, 3, stride=2, output_size=x.shape[2:])
    assert not torch.allclose(overwritten, expected)
    shared = torch.bincount(sw.indices.flatten(2)[0, 0], minlength=27 * 27) > 1
    assert shared.any()  # positions that several windows chose: exactly where the two differ
    diff = (overwritten != expected)[0, 0].flatten()
    assert torch.equal(diff, shared)


def test_matches_a_naive_loop_and_switches_point_at_window_maxima() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 3, (2, 2, 7, 6), generator=gen).double()
    k, s, p, d = (3, 2), (2, 1), (1, 0), (1, 2)
    pooled, sw = max_pool_with_switches(x, k, s, p, d, ceil_mode=True)
    values = torch.randn(pooled.shape, generator=gen, dtype=torch.float64)
    naive = torch.zeros_like(x)
    for n, c, oh, ow in itertools.product(*map(range, pooled.shape)):
        taps = [(oh * s[0] - p[0] + i * d[0], ow * s[1] - p[1] + j * d[1]) for i in range(k[0]) for j in range(k[1])]
        inside = [(h, w) for h, w in taps if 0 <= h < 7 and 0 <= w < 6]
        h, w = divmod(int(sw.indices[n, c, oh, ow]), 6)
        assert (h, w) in inside and x[n, c, h, w] == max(x[n, c, a, b] for a, b in inside) == pooled[n, c, oh, ow]
        naive[n, c, h, w] += values[n, c, oh, ow]
    torch.testing.assert_close(unpool(values, sw), naive, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_unpool_gradcheck_and_gradient_is_a_gather(kind: str) -> None:
    gen = torch.Generator().manual_seed(1)
    x = layout(torch.randn(2, 2, 7, 6, generator=gen, dtype=torch.float64), kind)
    pooled, sw = max_pool_with_switches(x, 3, stride=2, padding=1)
    values = layout(torch.randn(pooled.shape, generator=gen, dtype=torch.float64), kind).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: unpool(v, sw), (values,))
    assert torch.autograd.gradgradcheck(lambda v: unpool(v, sw), (values,))
    upstream = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad(unpool(values, sw), values, upstream)
    # oracle: torch's own double backward of max-pool, d/dv <grad_x(max_pool, v), upstream>
    xr = x.detach().requires_grad_()
    (grad_x,) = torch.autograd.grad(F.max_pool2d(xr, 3, 2, 1), xr, values, create_graph=True)
    (expected,) = torch.autograd.grad(grad_x, values, upstream)
    assert torch.equal(grad, expected)


def test_large_output_takes_the_huge_page_path_and_stays_exact() -> None:
    x = torch.randn(1, 20, 256, 256, generator=torch.Generator().manual_seed(2))  # 5 MiB output
    pooled, sw = max_pool_with_switches(x, 3, stride=2, padding=1)
    assert torch.equal(unpool(pooled, sw), autograd_unpool(x, pooled, 3, 2, 1))


def test_backward_refuses_indices_edited_after_the_forward() -> None:
    pooled, sw = max_pool_with_switches(torch.randn(1, 1, 4, 4), 2)
    out = unpool(pooled.detach().requires_grad_(), sw)
    sw.indices.zero_()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_inputs_are_not_mutated_and_pooled_stays_differentiable() -> None:
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    x_before = x.detach().clone()
    pooled, sw = max_pool_with_switches(x, 2)
    values = torch.randn_like(pooled)
    v_before = values.clone()
    unpool(values, sw)
    assert torch.equal(x.detach(), x_before) and torch.equal(values, v_before)
    (g,) = torch.autograd.grad(pooled.sum(), x)
    assert g.sum() == pooled.numel()


def test_nn_maxpool2d_parameters_and_record() -> None:
    pool = torch.nn.MaxPool2d(3, stride=2, padding=1, dilation=1, ceil_mode=True)
    x = torch.randn(2, 3, 10, 10)
    pooled, sw = max_pool_with_switches(x, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
    assert torch.equal(pooled, pool(x))
    assert sw.input_shape == x.shape and sw.pooled_shape == pooled.shape and sw.plane_size == 100
    assert (sw.kernel_size, sw.stride, sw.padding, sw.dilation, sw.ceil_mode) == ((3, 3), (2, 2), (1, 1), (1, 1), True)
    assert sw.overlapping and sw.indices.dtype == torch.int64  # 8 bytes per pooled element
    assert "int64[2, 3, 6, 6]" in repr(sw)
    assert max_pool_with_switches(x, 2)[1].stride == (2, 2)  # stride=None is kernel_size


@pytest.mark.parametrize(("k", "s", "d", "overlap"), [
    (2, 2, 1, False), (3, 2, 1, True), (3, 3, 1, False), (1, 1, 1, False), (2, 1, 1, True),
    (2, 2, 2, True), (3, 3, 2, False), (2, 3, 1, False), (5, 2, 3, True)])
def test_overlapping_matches_brute_force(k: int, s: int, d: int, overlap: bool) -> None:
    taps = [{o * s + j * d for j in range(k)} for o in range(3 * k)]
    brute = any(a & b for a, b in itertools.combinations(taps, 2))
    assert brute == overlap
    _, sw = max_pool_with_switches(torch.randn(1, 1, 40, 40), k, s, 0, d)
    assert sw.overlapping == overlap


# ---------------------------------------------------------------- bad input: clear errors


def raises(match: str):
    return pytest.raises(ConvscopeError, match=match)


@pytest.mark.parametrize(("shape", "args"), [
    ((1, 1, 1, 1), ((1, 2), 1, (0, 1), (1, 2), False)),   # one window of padding only, no ceil_mode
    ((1, 1, 1, 1), (2, 2, 1, 3, True)),                   # dilation + padding + ceil_mode
    ((2, 3, 8, 1), ((2, 3), (2, 3), 1, (1, 2), True)),    # the same along one axis only
])
def test_padding_only_windows_are_rejected_before_torch_runs(shape: tuple, args: tuple) -> None:
    assert torch_rejects(shape, *args)  # PyTorch itself would return -inf here
    with raises("covers only padding"):
        max_pool_with_switches(torch.randn(shape), *args)


@pytest.mark.parametrize(("args", "match"), [
    ((2, 2, 2), "more than half the kernel"),
    ((0,), "kernel_size, stride and dilation must be >= 1"),
    ((2, 0), "must be >= 1"),
    ((2, 2, -1), "padding >= 0"),
    ((2, 2, 0, 0), "must be >= 1"),
    ((9,), "no window fits"),
    (((2, 2, 2),), "3 entries for 2-D|needs a 5-D input"),
    ((2, (1, 2, 3)), "needs a 5-D input"),
    ((2, 2, "1"), "not an int or a tuple"),
])
def test_invalid_pooling_parameters(args: tuple, match: str) -> None:
    with raises(match):
        max_pool_with_switches(torch.randn(1, 1, 8, 8), *args)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2), st.integers(1, 4), st.booleans())
def test_rejects_exactly_what_torch_mishandles_1d(n: int, k: int, s: int, p: int, d: int, ceil: bool) -> None:
    x = torch.randn(1, 1, n)
    try:
        max_pool_with_switches(x, (k,), (s,), (p,), (d,), ceil)
        ours = False
    except ConvscopeError:
        ours = True
    assert ours == torch_rejects((1, 1, n), k, s, p, d, ceil)


def test_wrong_rank_and_dtype_of_input() -> None:
    with raises("needs a 4-D input .N, C, H, W.*unsqueeze"):
        max_pool_with_switches(torch.randn(3, 8, 8), 2)
    with raises("floating-point input"):
        max_pool_with_switches(torch.ones(1, 1, 4, 4, dtype=torch.int64), 2)
    with raises("needs a torch.Tensor"):
        max_pool_with_switches([[1.0]], 2)  # type: ignore[arg-type]


def test_bad_values_for_unpool() -> None:
    x = torch.randn(2, 3, 8, 8)
    pooled, sw = max_pool_with_switches(x, 2)
    _, other = max_pool_with_switches(torch.randn(2, 3, 10, 10), 2)
    with raises(r"values have shape \(2, 3, 4, 4\).*\(2, 3, 5, 5\)"):
        unpool(pooled, other)  # switches from another shape
    with raises("floating-point values"):
        unpool(pooled.long(), sw)
    with raises("floating-point values"):
        unpool(pooled > 0, sw)
    with raises("values are on meta but the switches are on cpu"):
        unpool(pooled.to("meta"), sw)
    with raises("needs a Switches record"):
        unpool(pooled, sw.indices)  # type: ignore[arg-type]
    with raises("needs a torch.Tensor"):
        unpool(pooled.tolist(), sw)  # type: ignore[arg-type]


def test_hand_built_switches_are_checked() -> None:
    x = torch.randn(1, 2, 6, 6)
    _, idx = F.max_pool2d(x, 2, return_indices=True)
    good = Switches(idx, x.shape, 2, 2, 0, 1)
    assert torch.equal(unpool(torch.ones(1, 2, 3, 3), good), autograd_unpool(x, torch.ones(1, 2, 3, 3), 2))
    with raises("int64 tensor, got torch.int32"):
        Switches(idx.int(), x.shape, 2, 2, 0, 1)
    with raises("int64 tensor, got torch.float32"):
        Switches(idx.float(), x.shape, 2, 2, 0, 1)
    with raises(r"indices have shape \(1, 2, 3, 3\).*gives \(1, 2, 2, 2\)"):
        Switches(idx, (1, 2, 5, 5), 2, 2, 0, 1)  # switches from another input shape
    with raises(r"indices have shape \(1, 2, 3, 3\).*gives \(2, 6, 3\)"):
        Switches(idx, (2, 6, 6), 2, 2, 0, 1)  # a 1-D record cannot hold 2-D indices
    with raises("is not .N, C, .spatial. with 1 to 3"):
        Switches(idx, (6, 6), 2, 2, 0, 1)
    with raises("3 entries for 2-D"):
        Switches(idx, x.shape, (2, 2, 2), 2, 0, 1)
    with raises("covers only padding"):
        Switches(idx, (1, 2, 1, 1), (1, 2), 1, (0, 1), (1, 2))
    far = Switches(idx * 100, x.shape, 2, 2, 0, 1)  # right shape, indices out of the 6x6 plane
    with raises(r"range over \[\d+, \d+\], outside the input plane \[0, 35\]"):
        unpool(torch.ones(1, 2, 3, 3), far)
    with raises(r"range over \[-"):
        unpool(torch.ones(1, 2, 3, 3), Switches(idx - 100, x.shape, 2, 2, 0, 1))


def test_indices_modified_in_place_are_rechecked() -> None:
    pooled, sw = max_pool_with_switches(torch.randn(1, 1, 4, 4), 2)
    unpool(pooled, sw)  # trusted: no scan needed
    sw.indices[0, 0, 0, 0] = 10**9  # an in-place edit bumps the version counter
    with raises("outside the input plane"):
        unpool(pooled, sw)


def test_empty_batch_and_single_window() -> None:
    pooled, sw = max_pool_with_switches(torch.randn(0, 3, 4, 4), 2)
    assert unpool(pooled, sw).shape == (0, 3, 4, 4)
    x = torch.randn(1, 1, 5, 5)
    pooled, sw = max_pool_with_switches(x, 5)
    back = unpool(pooled, sw)
    assert back.sum() == pooled.sum() and back.flatten()[x.flatten().argmax()] == pooled.flatten()[0]
    assert math.prod(back.shape) == 25
