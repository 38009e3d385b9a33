"""The mining pass: it stops each forward pass at the last mined layer, but only after a whole
first pass has shown that no mined layer runs twice (results: see the brute-force test in
tests/unit/test_atlas_topk.py)."""

from __future__ import annotations

import pytest
import torch
from nets import TinyVGG
from torch import nn

from convscope.atlas import mine
from convscope.errors import ConvscopeError


class _Twice(nn.Module):
    """Runs ``block`` once, then (after a head) again: a reused module."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.head(self.block(x)))


def test_later_batches_stop_at_the_last_mined_layer() -> None:
    torch.manual_seed(0)
    model = TinyVGG().eval()
    calls = []
    handle = model.classifier.register_forward_hook(lambda *_: calls.append(1))
    try:
        mine(model, torch.utils.data.TensorDataset(torch.randn(12, 3, 16, 16)), ["features.0", "features.3"], k=2,
             batch_size=4)
    finally:
        handle.remove()
    assert len(calls) == 1  # the first of three batches only
    assert not any(m._forward_hooks for m in model.modules())


def test_a_layer_that_runs_twice_is_refused_on_the_first_batch() -> None:
    data = torch.utils.data.TensorDataset(torch.randn(6, 3, 8, 8))
    with pytest.raises(ConvscopeError, match="ran twice"):
        mine(_Twice().eval(), data, ["block.0"], k=2, batch_size=2)
