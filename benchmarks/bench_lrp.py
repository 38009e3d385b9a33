"""LRP side by side with Zennit 0.5.1: VGG-16 and ResNet-18 at 224 px, batch 8.

Both libraries get the same model (torchvision, ``weights=None``, seeded weights with non-zero
biases and batch-norm statistics, eval mode), input, class and composite; Zennit runs with its own
canonizers (``VGGCanonizer``, ``ResNetCanonizer`` with the batch norm merged exactly, as in
``tests/unit/test_lrp_models.py``), convscope with ``canonize=True``. The maps are checked to agree
(largest difference relative to the largest value), then the calls are timed in alternation.
Each row is this process's CPU time; ratios are convscope / Zennit (the issue's target: at most 1.0).

    python -m benchmarks.bench_lrp [--quick]
"""

from __future__ import annotations

import sys
import time
import warnings

import torch

from benchmarks.harness import Table, interleaved

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat")
BOX = {"low": -3.0, "high": 3.0}


def _seeded(name: str, seed: int = 0) -> torch.nn.Module:
    """torchvision's ``name`` (``weights=None``) with seeded weights, biases and batch-norm statistics."""
    import torchvision

    model = getattr(torchvision.models, name)(weights=None)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, (2 / p[0].numel()) ** 0.5, generator=g)
            elif pname.endswith("bias"):
                p.normal_(0, 0.1, generator=g)
            else:
                p.uniform_(0.5, 1.5, generator=g)
        for bname, b in model.named_buffers():
            if bname.endswith("running_var"):
                b.uniform_(0.5, 2.0, generator=g)
            elif bname.endswith("running_mean"):
                b.normal_(0, 0.1, generator=g)
    return model.eval()


def _zennit_canonizer(arch: str):  # noqa: ANN202 - a zennit canonizer
    from zennit.canonizers import MergeBatchNorm, SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    if arch.startswith("vgg"):
        return VGGCanonizer()

    class ExactMerge(SequentialMergeBatchNorm):  # Zennit leaves the merged norm computing x / sqrt(1 + eps)
        @staticmethod
        def merge_batch_norm(modules: list[torch.nn.Module], batch_norm: torch.nn.Module) -> None:
            MergeBatchNorm.merge_batch_norm(modules, batch_norm)
            batch_norm.running_var.data.fill_(1.0 - batch_norm.eps)

    canonizer = ResNetCanonizer()
    canonizer.canonizers = (ExactMerge(), *canonizer.canonizers[1:])
    return canonizer


def _zennit_call(model: torch.nn.Module, arch: str, name: str, x: torch.Tensor, cls: int):  # noqa: ANN202
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlusFlat

    kinds = {"epsilon_plus_flat": EpsilonPlusFlat, "epsilon_gamma_box": EpsilonGammaBox,
             "epsilon_alpha2_beta1_flat": EpsilonAlpha2Beta1Flat}
    extra = BOX if "box" in name else {}

    def call() -> torch.Tensor:
        comp = kinds[name](canonizers=[_zennit_canonizer(arch)], **extra)
        with Gradient(model=model, composite=comp) as attributor:
            _, relevance = attributor(x, lambda out: out * torch.eye(out.shape[1])[[cls]])
        return relevance

    return call


def _ours_call(model: torch.nn.Module, name: str, x: torch.Tensor, cls: int):  # noqa: ANN202
    from convscope.methods.lrp import LRP, composite

    method = LRP(model, composite=composite(name, **(BOX if "box" in name else {})))
    return lambda: method.attribute(x, cls)


def run(quick: bool) -> list[Table]:
    warnings.filterwarnings("ignore")
    tables = []
    archs = ("vgg16", "resnet18")
    names = COMPOSITES[:1] if quick else COMPOSITES
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    for arch in archs:
        model = _seeded(arch)
        for name in names:
            theirs, ours = _zennit_call(model, arch, name, x, 3), _ours_call(model, name, x, 3)
            a, b = ours(), theirs()
            agree = float((a - b).abs().max() / b.abs().max())
            table = Table(f"LRP {name}: {arch} [8, 3, 224, 224]", reference="zennit")
            interleaved(table, {"zennit": theirs, "convscope": ours}, 2 if quick else 3, time.process_time)
            table.notes.append(f"convscope / Zennit = {table.ratio('convscope'):.2f}; max |difference| / max |map| "
                               f"= {agree:.1e}; CPU time of this process")
            tables.append(table)
            print(table.markdown(), flush=True)
    return tables


if __name__ == "__main__":
    torch.manual_seed(0)
    run("--quick" in sys.argv)
