"""CAM methods side by side with pytorch-grad-cam: Score-CAM, Grad-CAM and Grad-CAM's aug_smooth.

Score-CAM on torchvision ResNet-18 (``weights=None``, eval mode, layer ``layer4``, 224x224) and on
the zoo's shapes-resnet (layer ``layer3``, 64x64 Shapes images); Grad-CAM and Grad-CAM with
``aug_smooth`` (ours: ``AugSmooth(GradCAM(...), normalise=True)``) on the same. Both
libraries get the same model, input, targets and batch size (pytorch-grad-cam's
``ScoreCAM.batch_size`` = our ``max_batch``), and their maps are checked to agree (pytorch-grad-cam's
normalised, cv2-resized output vs ours normalised the same way). Score-CAM also runs as ``convscope, exact_forward()``: every masked
input evaluated on the model itself instead of convscope's inference twin. On CPU each row is this
process's CPU time, calls interleaved (a busy machine skews less); ratios are ours / theirs.

``python -m benchmarks.bench_cam --pointing-game`` prints instead the pointing game and the
mass inside the mask of every registered method on shapes-vgg (500 held-out Shapes images), then
Grad-CAM's pointing game at every layer (``--layers`` prints that table alone), why the default
layer's maps miss, and with ``--misses PNG`` a picture of the first misses of each class.
``--smoothing`` prints the gradient CAMs' pointing game with ``eigen_smooth`` and ``AugSmooth``.

    python -m benchmarks.bench_cam [--quick] [--pointing-game | --layers | --smoothing] [--misses PNG]
"""

from __future__ import annotations

import copy
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.harness import Table, interleaved


def _pgc_normalise(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    flat = flat - flat.amin(1, keepdim=True)
    return (flat / (1e-7 + flat.amax(1, keepdim=True))).view_as(maps)


def _as_pgc(raw: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Our raw ReLU'd map as pytorch-grad-cam shows it: normalised, resized, normalised again."""
    up = F.interpolate(_pgc_normalise(raw), size=size, mode="bilinear", align_corners=False)
    return _pgc_normalise(up)[:, 0].numpy()


def _pair(kind: str, model: torch.nn.Module, layer: str, x: torch.Tensor, classes: list[int],
          max_batch: int) -> tuple[Callable[[], np.ndarray], Callable[[], np.ndarray]]:
    """(pytorch-grad-cam call, convscope call) for one method, each returning pgc-style maps."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from convscope.methods import AugSmooth, GradCAM, ScoreCAM

    theirs_model = copy.deepcopy(model)  # pytorch-grad-cam runs .backward() into the parameters
    targets = [ClassifierOutputTarget(c) for c in classes]
    size = (x.shape[-2], x.shape[-1])
    if kind == "aug_smooth":  # Grad-CAM over the image and its mirror times 0.9, 1.0, 1.1; maps normalised first
        cam = pgc.GradCAM(model=theirs_model, target_layers=[theirs_model.get_submodule(layer)])
        smooth = AugSmooth(GradCAM(model, layer, max_batch=max_batch), normalise=True)
        return (lambda: cam(input_tensor=x, targets=targets, aug_smooth=True)), \
            (lambda: smooth.attribute(x, classes)[:, 0].numpy())
    if kind == "score_cam":
        cam = pgc.ScoreCAM(model=theirs_model, target_layers=[theirs_model.get_submodule(layer)])
        cam.batch_size = max_batch
        ours = ScoreCAM(model, layer, upsample=False, align_corners=True, max_batch=max_batch)
    else:
        cam = pgc.GradCAM(model=theirs_model, target_layers=[theirs_model.get_submodule(layer)])
        ours = GradCAM(model, layer, upsample=False, max_batch=max_batch)
    return (lambda: cam(input_tensor=x, targets=targets)), (lambda: _as_pgc(ours.attribute(x, classes), size))


def _quiet_tqdm() -> None:
    """pytorch-grad-cam's Score-CAM draws a tqdm bar per batch; keep the output readable."""
    import functools

    import tqdm

    tqdm.tqdm.__init__ = functools.partialmethod(tqdm.tqdm.__init__, disable=True)  # type: ignore[method-assign]


def _flat_channels(model: torch.nn.Module, layer: str, x: torch.Tensor) -> tuple[int, int]:
    """(channels whose activation map is constant, all channels), over the batch."""
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    flat = seen[0].flatten(2)
    return int((flat.amax(2) == flat.amin(2)).sum()), flat.shape[0] * flat.shape[1]


def _forward_share(model: torch.nn.Module, x: torch.Tensor, evaluations: int, max_batch: int,
                   clock: Callable[[], float], layout: torch.memory_format = torch.contiguous_format) -> float:
    """Seconds of ``evaluations`` bare model evaluations in batches of ``max_batch``."""
    batch = x[:1].expand(max_batch, *x.shape[1:]).contiguous(memory_format=layout)
    start = clock()
    with torch.no_grad():
        for lo in range(0, evaluations, max_batch):
            model(batch[:min(max_batch, evaluations - lo)])
    return clock() - start


def _exact(call: Callable[[], np.ndarray]) -> np.ndarray:
    from convscope.backends.torch.inference import exact_forward

    with exact_forward():
        return call()


def _where_the_time_goes(model: torch.nn.Module, layer: str, x: torch.Tensor, max_batch: int,
                         clock: Callable[[], float], ours: float) -> str:
    """Masks evaluated, and the bare model evaluations' share, on the model and on its twin."""
    from convscope.backends.torch.inference import InferenceSession

    flat, total = _flat_channels(model, layer, x)
    evaluations = total - flat
    twin = InferenceSession(model, [layer], x.device)
    layout = torch.channels_last if twin.channels_last else torch.contiguous_format
    bare = _forward_share(model, x, evaluations, max_batch, clock)
    fast = _forward_share(twin.twin, x, evaluations, max_batch, clock, layout)
    return (f"where the time goes: {total} masks, {flat} of them flat (one shared evaluation), so convscope runs "
            f"{evaluations} masked inputs in batches of {max_batch}, pytorch-grad-cam {total}. Those evaluations "
            f"take {bare:.2f} s on the model itself and {fast:.2f} s on convscope's inference twin "
            f"({len(twin.folded)} batch norms folded into their convolutions"
            f"{', channels-last' if twin.channels_last else ''}): {fast / ours:.0%} of convscope's time")


def _cases(quick: bool) -> list[tuple[str, torch.nn.Module, str, torch.Tensor, list[int], int]]:
    import torchvision

    from convscope import zoo
    from convscope.data import Shapes

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    n = 1 if quick else 2
    images, _, labels = Shapes(8 if quick else 16, seed=2).arrays()
    shapes_x = zoo.preset("shapes-resnet").to_tensor(images)
    return [("resnet18", resnet, "layer4", torch.rand(n, 3, 224, 224, generator=torch.Generator().manual_seed(0)),
             [3, 7][:n], 16),
            ("shapes-resnet", zoo.load("shapes-resnet", progress=False), "layer3", shapes_x, labels.tolist(), 64)]


def run(quick: bool) -> list[Table]:
    warnings.filterwarnings("ignore")
    _quiet_tqdm()
    clock = time.process_time
    tables = []
    for name, model, layer, x, classes, max_batch in _cases(quick):
        for kind in ("score_cam", "grad_cam", "aug_smooth"):
            theirs, ours = _pair(kind, model, layer, x, classes, max_batch)
            agree = float(np.abs(theirs() - ours()).max())
            shape = ", ".join(map(str, x.shape))
            table = Table(f"{kind}: {name} [{shape}] {layer}, batch {max_batch}", reference="pytorch-grad-cam")
            heavy = kind == "score_cam" and name == "resnet18"
            calls = {"pytorch-grad-cam": theirs, "convscope": ours}
            if kind == "score_cam":  # the same computation on the user's model itself: what the twin saves
                calls["convscope, exact_forward()"] = lambda: _exact(ours)
            interleaved(table, calls, 1 if quick and heavy else 3, clock)
            table.notes.append(f"convscope / pytorch-grad-cam = {table.ratio('convscope'):.2f}; max |difference| of "
                               f"the normalised maps = {agree:.1e}; CPU time of this process")
            if kind == "score_cam":
                table.notes.append(_where_the_time_goes(model, layer, x, max_batch, clock, table.seconds("convscope")))
            tables.append(table)
    return tables


TOLERANCE = 4  # pixels on a 64 px image: Zhang et al.'s 15 px on ~224 px images, scaled


def pointing_game_table(n: int = 500, max_batch: int = 100) -> str:
    """Markdown: pointing game and mass inside the mask of every registered method on shapes-vgg
    (``Shapes(n, seed=2)``, true labels; maps with several channels reduced by ``abs().sum(1)``)."""
    from convscope import zoo
    from convscope.data import Shapes
    from convscope.methods import methods
    from convscope.evaluate import mass_inside, pointing_game
    from convscope.evaluate.localisation import dilate

    model = zoo.load("shapes-vgg", progress=False)
    images, masks, labels = Shapes(n, seed=2).arrays()
    x, target = zoo.preset("shapes-vgg").to_tensor(images), torch.from_numpy(labels)
    lines = [f"### pointing game: shapes-vgg, {n} held-out Shapes images (seed 2), true labels", "",
             f"| method | pointing game | within {TOLERANCE} px | mass inside mask | seconds |",
             "|---|---:|---:|---:|---:|"]
    for name, info in methods().items():
        start = time.perf_counter()
        try:
            maps = info.cls(model, max_batch=max_batch).attribute(x, target)
        except Exception as error:  # noqa: BLE001 - report the method, keep going
            lines.append(f"| {name} | - | - | - | fails: {type(error).__name__}: {str(error)[:60]} |")
            continue
        seconds = time.perf_counter() - start
        if maps.shape[1] > 1:
            maps = maps.abs().sum(1, keepdim=True)
        hits = float(pointing_game(maps, masks).float().mean())
        near = float(pointing_game(maps, masks, tolerance=TOLERANCE).float().mean())
        mass = float(torch.nanmean(mass_inside(maps, masks)))
        lines.append(f"| {name} | {hits:.1%} | {near:.1%} | {mass:.1%} | {seconds:.1f} |")
    lines += ["", f"- the masks cover {float(masks.mean()):.1%} of the pixels on average (chance level of "
              "both metrics); maps with several channels are reduced by abs().sum(1)",
              f"- pointing game: strict (the maximum inside the mask); within {TOLERANCE} px: Zhang et al.'s "
              "tolerance of 15 px on ~224 px images, scaled to 64 px (chance level: the masks grown by "
              f"{TOLERANCE} px cover {float(dilate(torch.from_numpy(masks), TOLERANCE).float().mean()):.1%} "
              "of the pixels)"]
    return "\n".join(lines) + "\n"


SMOOTHED = ("cam", "grad_cam", "grad_cam_plus_plus", "x_grad_cam", "hires_cam", "layer_cam")


def smoothing_table(n: int = 500) -> str:
    """Markdown: the strict and tolerant pointing game of the gradient CAMs on shapes-vgg, plain,
    with ``eigen_smooth``, wrapped in ``AugSmooth`` (raw and normalised means) and with both."""
    from convscope import zoo
    from convscope.data import Shapes
    from convscope.methods import AugSmooth, methods
    from convscope.evaluate import pointing_game

    model = zoo.load("shapes-vgg", progress=False)
    images, masks, labels = Shapes(n, seed=2).arrays()
    x, target = zoo.preset("shapes-vgg").to_tensor(images), torch.from_numpy(labels)
    variants = {"plain": lambda c: c(model), "eigen_smooth": lambda c: c(model, eigen_smooth=True),
                "aug_smooth": lambda c: AugSmooth(c(model)),
                "aug_smooth, normalised": lambda c: AugSmooth(c(model), normalise=True),
                "both": lambda c: AugSmooth(c(model, eigen_smooth=True))}
    lines = [f"### CAM smoothing: shapes-vgg, the same {n} images; strict / within {TOLERANCE} px", "",
             "| method | " + " | ".join(variants) + " |", "|---|" + "---:|" * len(variants)]
    for name in SMOOTHED:
        cells = []
        for build in variants.values():
            maps = build(methods()[name].cls).attribute(x, target)
            hits, near = (float(pointing_game(maps, masks, tolerance=t).float().mean()) for t in (0, TOLERANCE))
            cells.append(f"{hits:.1%} / {near:.1%}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "- aug_smooth: the mean over the image and its mirror, each multiplied by 0.9, 1.0 and 1.1 "
              "(six passes); normalised: each map scaled to [0, 1] before the mean, as pytorch-grad-cam does; "
              "both: aug_smooth around the eigen_smooth map"]
    lines += _pgc_smoothing(model, x, labels, masks)
    return "\n".join(lines) + "\n"


def _pgc_smoothing(model: torch.nn.Module, x: torch.Tensor, labels: np.ndarray, masks: np.ndarray) -> list[str]:
    """pytorch-grad-cam's Grad-CAM with its aug_smooth and eigen_smooth on the same images, when installed."""
    try:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        return ["- pytorch-grad-cam is not installed: its rows are left out"]
    from convscope.methods import AugSmooth, GradCAM
    from convscope.methods.cam import default_layer
    from convscope.evaluate import pointing_game

    _quiet_tqdm()
    targets = [ClassifierOutputTarget(int(c)) for c in labels]
    found = []
    for option in ("aug_smooth", "eigen_smooth"):
        with pgc.GradCAM(model=model, target_layers=[model.get_submodule(default_layer(model, x[:1]))]) as cam:
            maps = torch.from_numpy(np.concatenate([cam(input_tensor=x[i:i + 100], targets=targets[i:i + 100],
                                                        **{option: True}) for i in range(0, len(x), 100)]))[:, None]
        hits = pointing_game(maps, masks)
        found.append(f"{option} {float(hits.float().mean()):.1%} / "
                     f"{float(pointing_game(maps, masks, tolerance=TOLERANCE).float().mean()):.1%}")
        if option == "aug_smooth":
            ours = AugSmooth(GradCAM(model), normalise=True).attribute(x, torch.from_numpy(labels))
            found[-1] += (f" (its maps differ from the normalised column's by at most "
                          f"{float((ours - maps).abs().max()):.1e}, and the hit differs on "
                          f"{int((pointing_game(ours, masks) != hits).sum())} of {len(x)} images)")
    return ["- pytorch-grad-cam's Grad-CAM, same images: " + "; ".join(found)]


def grad_cam_layers_table(n: int = 500, misses_png: str | None = None) -> str:
    """Markdown: Grad-CAM's pointing game on shapes-vgg at every layer of ``features``, and the
    misses at the default layer: their classes, why they miss, and (``misses_png``) a picture."""
    from collections import Counter

    from convscope import zoo
    from convscope.data import CLASSES, Shapes
    from convscope.methods import GradCAM
    from convscope.evaluate import pointing_game

    model = zoo.load("shapes-vgg", progress=False)
    images, masks, labels = Shapes(n, seed=2).arrays()
    x, target = zoo.preset("shapes-vgg").to_tensor(images), torch.from_numpy(labels)
    lines = [f"### grad_cam by layer: shapes-vgg, the same {n} images", "",
             f"| layer | map size | pointing game | within {TOLERANCE} px |", "|---|---:|---:|---:|"]
    for i in range(2, len(model.features)):
        layer = f"features.{i}"
        method = GradCAM(model, layer, max_batch=100)
        maps = method.attribute(x, target)
        size = "x".join(map(str, GradCAM(model, layer, upsample=False).attribute(x[:1], target[:1]).shape[2:]))
        hits = pointing_game(maps, masks)
        near = pointing_game(maps, masks, tolerance=TOLERANCE)
        lines.append(f"| {layer} | {size} | {float(hits.float().mean()):.1%} | {float(near.float().mean()):.1%} |")
    maps = GradCAM(model, max_batch=100).attribute(x, target)
    raw = GradCAM(model, max_batch=100, upsample=False).attribute(x, target)
    hits = pointing_game(maps, masks)
    missed, total = Counter(labels[~hits.numpy()]), Counter(labels.tolist())
    lines += ["", "- misses at the default layer, by class: " + ", ".join(
        f"{CLASSES[c]} {missed.get(c, 0)}/{total[c]}" for c in sorted(total)), "- " + _miss_reasons(raw, maps, masks, hits)]
    if misses_png:
        from convscope import render

        render.save_png(misses_png, _misses_sheet(images, maps, masks, hits, [CLASSES[c] for c in labels]))
        lines.append(f"- the first misses of each class, drawn: {misses_png}")
    return "\n".join(lines) + "\n"


def _miss_reasons(raw: torch.Tensor, maps: torch.Tensor, masks: np.ndarray, hits: torch.Tensor) -> str:
    """How the misses break down: peak cell on the map's border, map zero everywhere, and peaks
    that are a plateau of tied pixels (all of which must lie in the mask), some of them inside."""
    flat, inside = maps.flatten(1), torch.from_numpy(masks).bool()
    h, w = raw.shape[-2:]
    cell = raw.flatten(1).argmax(1)
    row, col = cell // w, cell % w
    border = (row == 0) | (row == h - 1) | (col == 0) | (col == w - 1)
    zero = flat.amax(1) <= 0
    at_peak = flat == flat.amax(1, keepdim=True)
    plateau = at_peak.sum(1) > 1
    some_inside = (at_peak & inside.flatten(1)).any(1)
    miss = ~hits
    rows = inside.any(2)  # [N, H]: rows the object covers
    top = rows.float().argmax(1)
    bottom = rows.shape[1] - 1 - rows.flip(1).float().argmax(1)
    peak_row = flat.argmax(1) // maps.shape[-1]
    above, below = int(((peak_row < top) & miss).sum()), int(((peak_row > bottom) & miss).sum())
    return (f"of the {int(miss.sum())} misses: {above} peak above the object's top row and {below} below its "
            f"bottom row; {int((miss & border).sum())} have their peak cell on the border "
            f"of the {h}x{w} map (of {int(border.sum())} such maps), {int((miss & zero).sum())} maps are zero "
            f"everywhere, {int((miss & plateau).sum())} peaks are a plateau of tied pixels (in "
            f"{int((miss & plateau & some_inside).sum())} of them some tied pixels are inside the mask)")


def _misses_sheet(images: np.ndarray, maps: torch.Tensor, masks: np.ndarray, hits: torch.Tensor,
                  names: list[str], per_class: int = 6) -> np.ndarray:
    """A grid of missed images: the map over the image, the mask's outline in cyan, the peak in red."""
    from convscope import render

    tiles, labels = [], []
    for name in dict.fromkeys(names):
        chosen = [i for i in np.flatnonzero(~hits.numpy()) if names[i] == name][:per_class]
        for i in chosen:
            heat = maps[i, 0].numpy()
            tile = render.overlay(images[i], render.normalize(heat), alpha=0.6)
            mask = masks[i].astype(bool)
            inner = mask.copy()
            inner[1:-1, 1:-1] &= mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
            tile[mask & ~inner] = (0, 255, 255)
            peak_y, peak_x = np.unravel_index(int(heat.argmax()), heat.shape)
            tile[max(0, peak_y - 1):peak_y + 2, max(0, peak_x - 1):peak_x + 2] = (255, 0, 0)
            tiles.append(tile)
            labels.append(name)
    return render.grid(tiles, labels, ncols=per_class, tile_size=(128, 128), interpolation="nearest")


if __name__ == "__main__":
    png = sys.argv[sys.argv.index("--misses") + 1] if "--misses" in sys.argv else None
    if "--layers" in sys.argv:
        print(grad_cam_layers_table(misses_png=png))
    elif "--smoothing" in sys.argv:
        print(smoothing_table())
    elif "--pointing-game" in sys.argv:
        print(pointing_game_table())
        print(grad_cam_layers_table(misses_png=png))
    else:
        for t in run(quick="--quick" in sys.argv):
            print(t.markdown())
