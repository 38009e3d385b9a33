"""The batch knob: fixed and automatic chunk sizes, the allocation meter, and the back-off after
an out-of-memory error (simulated with the messages torch raises on CPU and CUDA), which must
neither change results nor swallow other errors."""

from __future__ import annotations

import pytest
import torch
from nets import make, sample
from torch import nn

from convscope.backends.torch import batching
from convscope.errors import ConvscopeError
from convscope.methods import IntegratedGradients, Occlusion, Saliency, SmoothGrad
from convscope.methods.base import check_max_batch, chunks
from convscope.methods.batching import AllocationMeter, Batches, is_out_of_memory

TINY, X = make("tiny_vgg").eval(), sample("tiny_vgg", n=5)


def test_check_max_batch_accepts_auto_ints_and_none() -> None:
    assert check_max_batch("auto") == "auto" and check_max_batch(3) == 3 and check_max_batch(None) is None
    for bad in (0, -1, 2.5, True, "big"):
        with pytest.raises(ConvscopeError, match="max_batch"):
            check_max_batch(bad)  # type: ignore[arg-type]
    assert chunks(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]


@pytest.mark.parametrize("max_batch, expected", [(None, [(0, 7)]), (3, [(0, 3), (3, 6), (6, 7)])])
def test_fixed_sizes(max_batch: int | None, expected: list[tuple[int, int]]) -> None:
    got = [(r.start, r.stop) for r, _ in Batches(max_batch).map(7, lambda r: None)]
    assert got == expected


def test_the_meter_counts_new_tensors_not_views() -> None:
    a = torch.zeros(1000)
    with AllocationMeter() as meter:
        b = a * 2          # 4000 new bytes
        b.view(10, 100)    # a view: nothing new
        b.add_(1)          # in place: nothing new
    assert meter.bytes == 4000


def test_auto_starts_with_one_item_then_fills_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "memory_budget", lambda device: 10 * 4000)
    batches = Batches("auto")
    sizes = [r.stop - r.start for r, _ in batches.map(25, lambda r: torch.zeros(r.stop - r.start, 1000) + 1)]
    assert sizes[0] == 1 and set(sizes[1:-1]) == {batches.size} and 5 <= batches.size <= 10 and sum(sizes) == 25


class Fragile(nn.Module):
    """``inner``, failing like an exhausted allocator whenever a batch holds more than ``limit`` samples.

    ``sizes`` lists every batch size seen, also by copies of the module (convscope's inference
    twin is a deep copy): the log goes through ``list.append``, which ``deepcopy`` shares. Only
    real batches are logged, not the symbolic one of the twin's ``torch.fx`` trace.
    """

    def __init__(self, inner: nn.Module, limit: int, error: type[Exception], message: str) -> None:
        super().__init__()
        self.inner, self.limit, self.error, self.message = inner, limit, error, message
        self.sizes: list[int] = []
        self._log = self.sizes.append

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            self._log(x.shape[0])
        if x.shape[0] > self.limit:
            raise self.error(self.message)
        return self.inner(x)


CPU_OOM = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 123456789 bytes. Error code 12"
CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


@pytest.mark.parametrize("error, message", [(RuntimeError, CPU_OOM), (torch.OutOfMemoryError, CUDA_OOM)])
@pytest.mark.parametrize("make_method", [
    lambda m: IntegratedGradients(m, steps=8, max_batch="auto"),
    lambda m: SmoothGrad(m, samples=6, max_batch="auto"),
    lambda m: Occlusion(m, window=8, stride=4, max_batch="auto"),
    lambda m: Saliency(m, max_batch="auto"),
])
def test_auto_backs_off_after_out_of_memory_with_the_same_results(make_method, error, message,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "memory_budget", lambda device: 1 << 24)  # too optimistic for the model below
    fragile = Fragile(TINY, 3, error, message)
    got = make_method(fragile).attribute(X, [0, 1, 2, 3, 4])
    reference = make_method(TINY)
    reference.max_batch = None  # the same settings, everything in one call
    torch.testing.assert_close(got, reference.attribute(X, [0, 1, 2, 3, 4]), rtol=1e-5, atol=1e-7)
    assert fragile.sizes[0] == 1  # the measuring call
    assert any(s > 3 for s in fragile.sizes) and fragile.sizes[-1] <= 3  # it ran out, backed off and finished


def test_out_of_memory_with_one_sample_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConvscopeError, match="out of memory even with one sample"):
        IntegratedGradients(Fragile(TINY, 0, RuntimeError, CPU_OOM), steps=4, max_batch="auto").attribute(X, 0)


@pytest.mark.parametrize("error, message", [(RuntimeError, CPU_OOM), (torch.OutOfMemoryError, CUDA_OOM)])
def test_out_of_memory_without_auto_names_the_knob(error, message) -> None:
    with pytest.raises(ConvscopeError, match="ran out of memory on a batch of 5 samples.*max_batch") as caught:
        Saliency(Fragile(TINY, 3, error, message)).attribute(X, 0)
    assert isinstance(caught.value.__cause__, error)  # the allocator's own message stays reachable


def test_other_errors_are_not_retried() -> None:
    fragile = Fragile(TINY, 0, ValueError, "a bug, not memory")
    with pytest.raises(ConvscopeError, match="a bug, not memory"):
        Saliency(fragile, max_batch="auto").attribute(X, 0)
    assert fragile.sizes == [1]


def test_is_out_of_memory_follows_the_cause_chain() -> None:
    try:
        try:
            raise RuntimeError(CPU_OOM)
        except RuntimeError as inner:
            raise ConvscopeError("the model's forward pass failed") from inner
    except ConvscopeError as outer:
        assert is_out_of_memory(outer)
    assert is_out_of_memory(MemoryError()) and not is_out_of_memory(ValueError("memory"))


def test_auto_on_a_real_budget_gives_the_same_maps() -> None:
    expected = IntegratedGradients(TINY, steps=6).attribute(X, 2)
    torch.testing.assert_close(IntegratedGradients(TINY, steps=6, max_batch="auto").attribute(X, 2), expected,
                               rtol=1e-5, atol=1e-8)


def test_expansion_rows_by_hand() -> None:
    host, sample, k = batching.expansion_rows(slice(4, 9), 3, torch.device("cpu"))  # rows 4..8 of n x 3
    assert host.tolist() == sample.tolist() == [1, 1, 2, 2, 2] and k.tolist() == [1, 2, 0, 1, 2]
    assert host.device.type == "cpu"
    rows = torch.arange(4, 9)
    assert torch.equal(sample * 3 + k, rows)  # row = sample * per + k
