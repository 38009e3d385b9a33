"""Vision transformers: Grad-CAM beside pytorch-grad-cam with its ViT reshape transform, and the
cost of the attention methods (attention recorded through fused attention) beside the bare passes.

torchvision's ``vit_b_16`` (``weights=None``, the zero-initialised head given random weights so
gradients flow), eval mode, 2 images of 224 x 224 (``--quick``: a 4-block ViT on 64 x 64). Rows:
a forward pass alone and a forward + backward pass (the floors); pytorch-grad-cam's ``GradCAM``
at the last block's ``ln_1`` with the reshape transform of its documentation; convscope's
``GradCAM`` (no layer given: the same layer, found from the model), ``AttentionRollout`` (one
forward pass, attention recomputed from the fused kernel's queries and keys) and ``GradRollout``
(one forward and one backward pass). The maps are checked equal in ``tests/unit/test_vit.py``.
Each row is this process's CPU time, calls interleaved; ratios are to pytorch-grad-cam.

    python -m benchmarks.bench_vit [--quick]
"""

from __future__ import annotations

import sys
import time
import warnings

import torch
import torchvision
from torch import nn

from benchmarks.harness import Table, interleaved


def _model(quick: bool) -> tuple[nn.Module, torch.Tensor, int]:
    torch.manual_seed(0)
    if quick:
        model = torchvision.models.VisionTransformer(image_size=64, patch_size=8, num_layers=4, num_heads=4,
                                                     hidden_dim=96, mlp_dim=192, num_classes=10)
        size = 64
    else:
        model, size = torchvision.models.vit_b_16(weights=None), 224
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model.eval(), torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)), size // (
        8 if quick else 16)


def run(quick: bool = False) -> list[Table]:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from convscope.methods import AttentionRollout, GradCAM, GradRollout

    model, x, grid = _model(quick)
    classes = [1, 7]
    layer = model.encoder.layers[-1].ln_1

    def reshape(t: torch.Tensor) -> torch.Tensor:  # pytorch-grad-cam's documented ViT transform
        return t[:, 1:, :].reshape(t.size(0), grid, grid, t.size(2)).transpose(2, 3).transpose(1, 2)

    theirs = pgc.GradCAM(model=model, target_layers=[layer], reshape_transform=reshape)
    targets = [ClassifierOutputTarget(c) for c in classes]

    def forward_backward() -> None:
        leaf = x.clone().requires_grad_()
        out = model(leaf)
        torch.autograd.grad(out[torch.arange(2), torch.tensor(classes)].sum(), leaf)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    fns = {
        "pytorch-grad-cam GradCAM": lambda: theirs(input_tensor=x, targets=targets),
        "convscope GradCAM": lambda: GradCAM(model).attribute(x, classes),
        "convscope AttentionRollout": lambda: AttentionRollout(model).attribute(x, classes),
        "convscope GradRollout": lambda: GradRollout(model).attribute(x, classes),
        "forward pass alone": forward,
        "forward + backward alone": forward_backward,
    }
    name = "4-block ViT, 64 px" if quick else "vit_b_16, 224 px"
    table = Table(f"Grad-CAM and attention rollout on {name}, 2 images", reference="pytorch-grad-cam GradCAM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interleaved(table, fns, rounds=3 if quick else 5, clock=time.process_time)
    theirs.__del__()
    table.notes.append("CPU time of this process per call (2 threads). convscope's GradCAM differentiates the score "
                       "down to the layer only (torch.autograd.grad on its output); pytorch-grad-cam calls backward() "
                       "through the whole model into every parameter. AttentionRollout is a forward pass with the "
                       "attention computed explicitly; GradRollout adds one backward pass to the attention weights.")
    return [table]


if __name__ == "__main__":
    for t in run(quick="--quick" in sys.argv):
        print(t.markdown())
