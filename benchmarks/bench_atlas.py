"""The dataset atlas: mining throughput, batched projections, memory.

1. Mining (top-9 of every channel of ``features.0/3/6`` of an untrained ShapesVGG) over N Shapes
   images held in memory, against the model's plain forward pass over the same batches.
   Target: mining time <= 1.25x forward time (throughput >= 0.8x).
2. Projections for k=9 x all channels of ``features.6`` (64 channels, 576 pairs; quick: 16
   channels) in batches of 64 - on exact receptive-field crops (the default) and on whole
   images (``crop=False``) - against Captum's ``NeuronDeconvolution`` called once per
   (image, unit) (scaled by the activation, the maps agree within 1e-5). Target: >= 10x faster.
3. Peak RSS of a mining run over 1k vs 10k Shapes images (both sizes in quick mode too), each
   in a fresh subprocess, beside the RSS before mining (imports and model): memory is bounded
   by k x channels, not by the data set size.

Timings 1 and 2 are this process's CPU time with one torch thread: on a machine shared with
other busy processes, two threads spend most of their CPU time spin-waiting for each other in
every parallel op, which measures the load (and the number of ops), not the work. The memory
runs report the peak RSS during mining (Linux: the peak mark is reset after the imports).

    python -m benchmarks.bench_atlas [--quick]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings

import torch
from torch import nn

from benchmarks.harness import Row, Table, interleaved

LAYERS = ["features.0", "features.3", "features.6"]


def _model() -> nn.Module:
    from convscope.zoo.architectures import ShapesVGG

    torch.manual_seed(0)
    model = ShapesVGG().eval()
    for m in model.modules():  # Captum's neuron hooks cannot follow an in-place ReLU
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return model


def _data(n: int) -> torch.Tensor:
    from convscope import zoo
    from convscope.data import Shapes

    return zoo.preset("shapes-vgg").to_tensor(Shapes(n).arrays()[0])


def _mining(quick: bool) -> Table:
    from convscope.atlas import mine

    model, x = _model(), _data(256 if quick else 2048)
    data = torch.utils.data.TensorDataset(x)

    def forward() -> None:
        with torch.inference_mode():
            for lo in range(0, len(x), 64):
                model(x[lo:lo + 64])

    table = Table(f"atlas mining, ShapesVGG, {len(x)} Shapes images, k=9, 3 layers", reference="plain forward")
    # this process's CPU time, calls interleaved: a busy shared machine skews both rows alike
    interleaved(table, {"plain forward": forward,
                         "convscope mine": lambda: mine(model, data, LAYERS, k=9, batch_size=64)},
                 rounds=9, clock=time.process_time)
    ratio = table.ratio("convscope mine")
    table.notes.append(f"mining throughput = {1 / ratio:.2f}x the plain forward throughput (target >= 0.8x)")
    return table


def _projections(quick: bool) -> Table:
    import captum.attr as ca

    from convscope.atlas import mine, project_units

    warnings.filterwarnings("ignore", module="captum")
    model, x = _model(), _data(128)
    acc = mine(model, torch.utils.data.TensorDataset(x), ["features.6"], k=9).results["features.6"]
    channels = 16 if quick else acc.channels
    pairs = [(c, j) for c in range(channels) for j in range(9)]
    images = x[torch.as_tensor([int(acc.images[c, j]) for c, j in pairs])]
    chans = [c for c, _ in pairs]
    coords = [tuple(int(v) for v in acc.coords()[c, j]) for c, j in pairs]
    layer = model.features[6]

    def ours(crop: bool) -> torch.Tensor:
        return project_units(model, "features.6", images, chans, coords, method="deconvnet", max_batch=64, crop=crop)

    def captum() -> torch.Tensor:
        out = []
        for i, (c, (y, xx)) in enumerate(zip(chans, coords)):
            attr = ca.NeuronDeconvolution(model, layer)
            out.append(attr.attribute(images[i:i + 1], neuron_selector=(c, y, xx)))
        return torch.cat(out)

    with torch.no_grad():
        acts = model.features[:7](images)
    ys, xs = torch.as_tensor(coords).unbind(1)
    a = acts[torch.arange(len(pairs)), torch.as_tensor(chans), ys, xs]
    anchor = a.view(-1, 1, 1, 1) * captum()
    diff = {crop: (ours(crop) - anchor).abs().max().item() for crop in (True, False)}
    table = Table(f"atlas projections, features.6, {len(pairs)} (image, unit) pairs (k=9 x {channels} channels)",
                  reference=CAPTUM)
    # this process's CPU time, calls interleaved (as for mining)
    interleaved(table, {CAPTUM: captum, WHOLE: lambda: ours(False), CROPPED: lambda: ours(True)},
                rounds=3, clock=time.process_time)
    for name, crop in ((CROPPED, True), (WHOLE, False)):
        table.notes.append(f"{name}: speed-up {1 / table.ratio(name):.1f}x (target >= 10x); "
                           f"max |difference| of the maps {diff[crop]:.2e} (target 1e-5)")
    return table


CAPTUM = "Captum NeuronDeconvolution per pair"
WHOLE = "convscope project_units, whole images (crop=False)"
CROPPED = "convscope project_units, receptive-field crops"

_RSS = """
import json, resource, sys, time, torch
torch.set_num_threads(1)
from convscope.atlas import mine
from convscope.zoo.architectures import ShapesVGG
torch.manual_seed(0)
model = ShapesVGG().eval()

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key))

try:  # Linux: "5" resets the peak-RSS mark, so the peak below is the mining run's own
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before, peak = status("VmRSS:"), lambda: status("VmHWM:")
except OSError:
    before, peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
mine(model, f"shapes:{sys.argv[1]}", ["features.0", "features.3", "features.6"], k=9)
print(json.dumps({"rss_mb": peak(), "before_mb": before, "seconds": time.perf_counter() - start}))
"""


def _memory(quick: bool) -> Table:
    sizes = (1000, 10000)
    table = Table(f"atlas mining memory, Shapes {sizes[0]} vs {sizes[1]} images, k=9, 3 layers (fresh subprocesses)",
                  reference=f"{sizes[0]} images")
    found = {}
    for n in sizes:
        out = subprocess.run([sys.executable, "-c", _RSS, str(n)], capture_output=True, text=True, check=True)
        found[n] = json.loads(out.stdout.strip().splitlines()[-1])
        table.rows.append(Row(f"{n} images", found[n]["seconds"],
                              note=f"peak RSS while mining {found[n]['rss_mb']:.0f} MB "
                                   f"(RSS before mining {found[n]['before_mb']:.0f} MB)"))
    a, b = (found[n]["rss_mb"] for n in sizes)
    table.notes.append(f"peak RSS {a:.0f} MB for {sizes[0]} images, {b:.0f} MB for {sizes[1]}: it grows {b / a:.2f}x "
                       f"for {sizes[1] // sizes[0]}x the images (bounded: ~1x)")
    return table


def run(quick: bool) -> list[Table]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see the module doc
    try:
        timed = [_mining(quick), _projections(quick)]
    finally:
        torch.set_num_threads(threads)
    for table in timed:
        table.notes.append("CPU time of this process with torch.set_num_threads(1), calls interleaved")
    return [*timed, _memory(quick)]


if __name__ == "__main__":
    for t in run("--quick" in sys.argv):
        print(t.markdown())
