"""Feature visualization: rendering 16 channels in one batch, side by side with the floor and
with torch-lucent.

Rows, each ``steps`` optimization steps on a batch of 16 images (one per channel 0..15 of
``layer``, objective: the channel's mean activation):

- ``forward+backward``: the floor, ``steps`` plain forward passes + backward passes to the input
  at batch 16 (a forward hook reads the layer; ``torch.autograd.grad`` w.r.t. the input);
- ``forward+backward, ending at <layer>``: the same with each forward pass ended at the layer, as
  convscope's passes end (its objective reads nothing later): the ratio to this row is what the
  optimization loop itself adds;
- ``convscope``: ``featurevis.render`` with the FFT, decorrelated-colour, sigmoid
  parameterization and the standard transforms (pad, jitter, scale, rotate, jitter, resize);
- ``convscope, no transforms``: the same without transforms: what the loop itself adds;
- ``lucent``: ``lucent.optvis.render.render_vis`` with ``param.image(fft=True, decorrelate=True)``
  and its standard transforms, ``fixed_image_size`` = the image size (so it resizes back to the
  same size as convscope does), no display; its hooks are removed after each call (lucent
  leaves them on the model). The recipes match (pad 12, jitter 8, scale 0.9..1.1, rotate
  -10..10, jitter 4 at 224 px); convscope resamples once where lucent resamples four times
  (kornia translations and rotation), and lucent's ``loss.backward()`` also computes every
  weight gradient of the model, which convscope never does.

Targets: convscope <= 1.3x the floor; convscope <= 1.0x lucent. Models: torchvision resnet18
(``weights=None``, eval mode, ImageNet normalization, layer ``layer2``) at 128x128 (quick: 64x64)
and the zoo's ShapesVGG architecture (untrained, no normalization, layer ``features.3``) at 64x64.
CPU: this process's CPU time on one thread, calls interleaved.

    python -m benchmarks.bench_featurevis [--quick]
"""

from __future__ import annotations

import copy
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from benchmarks.harness import Table, full_float32, interleaved, synced

BATCH = 16


class _Reached(BaseException):
    """Ends a truncated floor pass at the objective's layer."""


def _floor(model: nn.Module, layer: str, size: int, steps: int, device: torch.device,
           truncated: bool = False) -> Callable[[], object]:
    """``steps`` forward + backward passes at batch 16 reading channel i of ``layer`` for image i;
    ``truncated``: each forward pass ends at ``layer``."""
    x = torch.rand(BATCH, 3, size, size, device=device)
    module = model.get_submodule(layer)
    index = torch.arange(BATCH, device=device)

    def record(_m: nn.Module, _a: object, out: torch.Tensor, seen: list[torch.Tensor]) -> None:
        seen.append(out)
        if truncated:
            raise _Reached

    def run() -> None:
        seen: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda m, a, out: record(m, a, out, seen))
        try:
            for _ in range(steps):
                seen.clear()
                leaf = x.detach().requires_grad_()
                try:
                    model(leaf)
                except _Reached:
                    pass
                score = seen[0][index, index].mean((1, 2)).sum()
                torch.autograd.grad(score, leaf)
        finally:
            handle.remove()

    return run


def _ours(model: nn.Module, layer: str, size: int, steps: int, normalize: bool,
          transforms: str | None = "standard") -> Callable[[], object]:
    from convscope.featurevis import channels, render
    from convscope.images import Preprocess

    pre = Preprocess(size=size, crop=size) if normalize else None  # ImageNet mean/std
    return lambda: render(model, channels(layer, range(BATCH)), steps=steps, size=size, preprocess=pre,
                          transforms=transforms, progress=False)


def _lucent(model: nn.Module, layer: str, size: int, steps: int, normalize: bool) -> Callable[[], object]:
    from lucent.optvis import objectives, param, render

    twin = copy.deepcopy(model)  # lucent hooks every module and never removes the hooks
    name = layer.replace(".", "_")

    def run() -> object:
        objective = sum((objectives.channel(name, c, batch=c) for c in range(1, BATCH)),
                        objectives.channel(name, 0, batch=0))
        try:
            return render.render_vis(twin, objective, lambda: param.image(size, batch=BATCH, fft=True, decorrelate=True),
                                     thresholds=(steps,), preprocess=normalize, progress=False, show_image=False,
                                     fixed_image_size=size)
        finally:
            for m in twin.modules():
                m._forward_hooks.clear()

    return run


def _lucent_status() -> str | None:
    """None when torch-lucent imports with this torch, else why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import lucent.optvis.render  # noqa: F401
    except Exception as error:  # noqa: BLE001 - any failure means: not comparable here
        return f"torch-lucent is not usable with torch {torch.__version__}: {type(error).__name__}: {error}"
    return None


def _models(quick: bool) -> list[tuple[str, nn.Module, str, int, bool]]:
    import torchvision

    from convscope.zoo.architectures import ShapesVGG

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    torch.manual_seed(0)
    vgg = ShapesVGG().eval()
    return [("resnet18", resnet, "layer2", 64 if quick else 128, True), ("ShapesVGG", vgg, "features.3", 64, False)]


def run(quick: bool) -> list[Table]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = 8 if quick else 32
    rounds = 3 if quick else 5
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    if device.type == "cpu":
        torch.set_num_threads(1)  # on a shared machine, idle-spinning worker threads swamp CPU time
    full_float32(device)
    lucent = _lucent_status()  # lucent runs on "cuda:0" whenever CUDA is available, as the model then does
    tables = []
    for arch, model, layer, size, normalize in _models(quick):
        model = model.to(device)
        table = Table(f"render 16 channels of {arch} {layer}, {BATCH}x3x{size}x{size}, {steps} steps on {device.type}",
                      reference="forward+backward")
        fns = {"forward+backward": synced(_floor(model, layer, size, steps, device), device),
               f"forward+backward, ending at {layer}": synced(_floor(model, layer, size, steps, device, True), device),
               "convscope": synced(_ours(model, layer, size, steps, normalize), device),
               "convscope, no transforms": synced(_ours(model, layer, size, steps, normalize, None), device)}
        if lucent is None:
            fns["lucent"] = _lucent(model, layer, size, steps, normalize)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interleaved(table, fns, rounds, clock)
        cut = f"forward+backward, ending at {layer}"
        note = (f"convscope / floor = {table.ratio('convscope'):.2f} (target <= 1.3), without transforms "
                f"{table.ratio('convscope, no transforms'):.2f}; convscope's passes end at {layer} (its objective "
                f"reads nothing later), so against passes that end there too (what the loop itself adds): "
                f"{table.ratio('convscope', cut):.2f}, without transforms {table.ratio('convscope, no transforms', cut):.2f}")
        if lucent is None:
            note += f"; convscope / lucent = {table.ratio('convscope', 'lucent'):.2f} (target <= 1.0)"
        table.notes.append(note + f"; {'CPU time of this process, 1 thread' if device.type == 'cpu' else 'wall time'}")
        if lucent is not None:
            table.notes.append(lucent)
        tables.append(table)
    return tables


if __name__ == "__main__":
    for t in run(quick="--quick" in sys.argv):
        print(t.markdown())
