"""ROAD, max-sensitivity, infidelity and HOG similarity side by side with Quantus 0.6, Captum and
scikit-image, on the same model, images, maps and draws.

Model: torchvision ResNet-18 (``weights=None``, eval mode; for ROAD a one-channel first
convolution, since Quantus's ROAD fails on colour images with one-channel maps: see
``convscope.evaluate.road``). Maps: convscope's Saliency summed over channels (ROAD, infidelity;
ROAD also with smooth one-blob maps, whose removed regions are large discs, the hard case for
an iterative solver);
max-sensitivity recomputes them with convscope's Saliency in every library (so the rows differ in
the metric's own work and batching, not in the attribution). Each pair's results are checked to
agree before timing. Rows are this process's CPU time (``time.process_time``), calls interleaved,
ratios to the reference row (lower is faster). Torch runs on one thread for every row: on the
shared 2-core machine a second thread spun against other jobs and made small tensor operations
20 times slower, which would measure the load, not the code.

    python -m benchmarks.bench_evaluate_road_yeh [--quick]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from benchmarks.harness import Table, interleaved

try:  # torchvision before quantus, which imports TensorFlow
    import torchvision
except ImportError:  # pragma: no cover - a test dependency
    torchvision = None


def _resnet(channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    if channels != 3:
        net.conv1 = torch.nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
    return net.eval()


def _saliency_maps(net: torch.nn.Module, x: torch.Tensor, y: list[int]) -> torch.Tensor:
    from convscope.methods.gradient import Saliency

    return Saliency(net).attribute(x, y).sum(1, keepdim=True)


def _blobs(n: int, size: int) -> torch.Tensor:
    """Smooth one-blob maps (distinct values), whose removed regions are one growing disc."""
    g = torch.Generator().manual_seed(5)
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    centres = torch.rand(n, 2, generator=g) * size
    d2 = (yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2
    return (torch.exp(-d2 / (size * size / 8)) + 1e-6 * torch.rand(n, size, size, generator=g))[:, None]


def road_table(n: int, size: int, percentages: list[int], blobs: bool = False) -> Table:
    import quantus

    from convscope.evaluate.road import road

    net = _resnet(1)
    x = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(1))
    y = net(x).argmax(1).tolist()
    maps = _blobs(n, size) if blobs else _saliency_maps(net, x, y)
    metric = quantus.ROAD(percentages=percentages, noise=0.0, normalise=False, disable_warnings=True)
    theirs = lambda: metric(model=net, x_batch=x.numpy(), y_batch=np.array(y), a_batch=maps.numpy(),  # noqa: E731
                            device="cpu", batch_size=n)
    ours = lambda: road(net, x, y, maps, percentages=percentages, noise=0.0, output="accuracy", max_batch=32)  # noqa: E731
    want = theirs()
    if not np.allclose(ours().values.mean(0).numpy(), [want[p] for p in percentages]):
        raise AssertionError("ROAD accuracies differ from Quantus's")
    table = Table(f"ROAD: ResNet-18 (1 channel), {n} images of {size}x{size}, {len(percentages)} percentages, "
                  f"{'one-blob' if blobs else 'saliency'} maps",
                  reference="Quantus ROAD")
    interleaved(table, {"Quantus ROAD": theirs, "convscope road": ours}, rounds=1, clock=time.process_time)
    table.notes.append("noise 0 on both sides; accuracies per percentage checked equal; percentages "
                       f"{percentages}")
    return table


def sensitivity_table(n: int, size: int, draws: int) -> Table:
    import quantus
    from captum.metrics import sensitivity_max

    from convscope.evaluate.draws import keyed_draws
    from convscope.evaluate.sensitivity import max_sensitivity
    from convscope.methods.gradient import Saliency

    net = _resnet(3)
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(2))
    y = net(x).argmax(1).tolist()
    explain = Saliency(net)
    radius = 0.02
    samples = torch.arange(n).repeat_interleave(draws)
    shifts = radius * (2 * keyed_draws("uniform", 0, samples, torch.arange(draws).repeat(n), x.shape[1:], "cpu") - 1)
    state = {"k": 0}

    def quantus_replay(arr: np.ndarray, indices: np.ndarray, **kwargs) -> np.ndarray:
        k = state["k"] % draws
        state["k"] += 1
        return arr + shifts.view(n, draws, -1)[:, k].numpy()

    def quantus_explain(model, inputs, targets, **kwargs) -> np.ndarray:
        return explain.attribute(torch.as_tensor(inputs), torch.as_tensor(targets).tolist()).numpy()

    def captum_explain(inputs, target):
        inputs = inputs[0] if isinstance(inputs, tuple) else inputs
        return (explain.attribute(inputs, torch.as_tensor(target).tolist()),)

    metric = quantus.MaxSensitivity(nr_samples=draws, perturb_func=quantus_replay, normalise=False, abs=False,
                                    disable_warnings=True)
    rows = {
        "Quantus MaxSensitivity": lambda: metric(model=net, x_batch=x.numpy(), y_batch=np.array(y), a_batch=None,
                                                 explain_func=quantus_explain, device="cpu", batch_size=n),
        "Captum sensitivity_max": lambda: sensitivity_max(captum_explain, x, perturb_func=lambda t: t + shifts,
                                                          n_perturb_samples=draws, target=torch.tensor(y)),
        "convscope max_sensitivity": lambda: max_sensitivity(explain, x, y, radius=radius, n_perturb_samples=draws,
                                                             seed=0, max_batch=32),
    }
    values = [np.asarray(fn(), dtype=float) for fn in rows.values()]
    if not all(np.allclose(v, values[-1], rtol=1e-3) for v in values):
        raise AssertionError(f"max-sensitivity differs: {values}")
    table = Table(f"max-sensitivity: ResNet-18, Saliency, {n} images of {size}x{size}, {draws} draws",
                  reference="Quantus MaxSensitivity")
    interleaved(table, rows, rounds=1, clock=time.process_time)
    table.notes.append("the same shifts replayed into all three; values checked equal to 1e-3")
    return table


def infidelity_table(n: int, size: int, draws: int) -> Table:
    from captum.metrics import infidelity as captum_infidelity

    from convscope.evaluate.infidelity import GaussianNoise, infidelity

    net = _resnet(3)
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(3))
    y = net(x).argmax(1).tolist()
    maps = _saliency_maps(net, x, y)
    perturbation = GaussianNoise(0.1)
    samples = torch.arange(n).repeat_interleave(draws)
    fixed = perturbation(x[samples], samples, torch.arange(draws).repeat(n), 0)
    rows = {
        "Captum infidelity": lambda: captum_infidelity(net, lambda t: (fixed, t - fixed), x, maps.expand_as(x).contiguous(),
                                                       target=torch.tensor(y), n_perturb_samples=draws,
                                                       max_examples_per_batch=None),
        "convscope infidelity": lambda: infidelity(net, x, y, maps, perturbation=perturbation, n_perturb_samples=draws,
                                                   seed=0, max_batch=32),
    }
    values = [np.asarray(fn(), dtype=float) for fn in rows.values()]
    if not np.allclose(values[0], values[1], rtol=1e-3):
        raise AssertionError(f"infidelity differs: {values}")
    table = Table(f"infidelity: ResNet-18, {n} images of {size}x{size}, {draws} Gaussian draws",
                  reference="Captum infidelity")
    interleaved(table, rows, rounds=1, clock=time.process_time)
    table.notes.append("Quantus's Infidelity is another quantity (see convscope.evaluate.infidelity): not timed; "
                       "values checked equal to 1e-3")
    return table


def hog_table(n: int, size: int) -> Table:
    from skimage.feature import hog as skimage_hog

    from convscope.evaluate.hog import hog_similarity

    g = torch.Generator().manual_seed(4)
    a, b = torch.rand(n, size, size, generator=g), torch.rand(n, size, size, generator=g)

    def loop() -> np.ndarray:
        kw = dict(orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), block_norm="L2-Hys")
        return np.array([np.corrcoef(skimage_hog(p.double().numpy(), **kw), skimage_hog(q.double().numpy(), **kw))[0, 1]
                         for p, q in zip(a, b)])

    if not np.allclose(loop(), hog_similarity(a, b).numpy(), atol=1e-6):
        raise AssertionError("HOG similarity differs from scikit-image's")
    table = Table(f"HOG similarity: {n} pairs of {size}x{size} maps", reference="scikit-image loop")
    interleaved(table, {"scikit-image loop": loop, "convscope hog_similarity": lambda: hog_similarity(a, b)},
                rounds=3, clock=time.process_time)
    return table


def run(quick: bool) -> list[Table]:
    torch.set_num_threads(1)
    if quick:
        return [road_table(2, 64, [10, 50, 90]), road_table(2, 64, [10, 50, 90], blobs=True), sensitivity_table(2, 64, 5), infidelity_table(4, 64, 10),
                hog_table(16, 64)]
    return [road_table(2, 224, [10, 50, 90]), road_table(2, 224, [10, 50, 90], blobs=True), sensitivity_table(2, 224, 10), infidelity_table(4, 224, 10),
            hog_table(64, 224)]


if __name__ == "__main__":
    for t in run(quick="--quick" in sys.argv[1:]):
        print(t.markdown())
