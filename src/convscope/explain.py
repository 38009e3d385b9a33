"""``convscope explain``: run registered attribution methods on image files and write pictures.

For every image x method an overlay PNG (the map scaled as the method's display kind says,
:func:`convscope.render.heat`: ``|.|`` summed over colour and clipped at the 99.5th percentile for
gradients, the positive part for CAMs and occlusion, min..max for RISE; over the image), with
``method="all"`` also one side-by-side sheet per image (the input, then every method), and
``maps.json`` (see :class:`MapIndex`).

Without ``target`` each image's predicted class is explained. A PyTorch method whose passes score
the clean input (the gradient and gradient-CAM families) picks it in its own forward pass
(:class:`~convscope.targets.Predicted`); otherwise one prediction pass per batch comes first, and
with ``method="all"`` the classes the first method picked serve the rest.

The maps are computed on the model's crop of each image (what the model classifies). By default
they are drawn on the user's whole picture: the crop's region is mapped back to the picture
(:mod:`convscope.picture`) and everything outside it, where the model saw nothing, is the plain
picture. ``crop=True`` draws them on the crop instead.

Memory does not grow with the number of images: the files are read a batch at a time
(:func:`~convscope.images.images_per_batch`), each batch explained by every method and its PNGs
and ``maps.json`` written before the next is read. ``max_batch`` bounds the samples of every
model evaluation (``"auto"``: sized from free memory, see :mod:`convscope.methods.batching`).

A map that is all zero or constant shows no place: it is drawn as the plain picture captioned
as blank, recorded in ``maps.json`` under ``"blank"`` and reported on stderr.

LRP on a PyTorch model also writes ``<image>-lrp-conservation.png`` (the relevance at every cut
of the model as a share of the score, :func:`~convscope.methods.lrp.conservation`) and the same
numbers under ``"conservation"`` in the image's ``maps.json`` entry.

Detectors and segmenters (PyTorch): ``box`` (with ``target``) explains the detection of class
``target`` whose box best matches ``box`` (:class:`~convscope.targets_vision.Detection`; an image
where none matches is a clear error, before any map), ``region`` (a box, or a mask PNG of the
picture's size) the segmentation class ``target`` summed over that region
(:class:`~convscope.targets_vision.Region`). Boxes and masks are given in pixels of the picture
files (:mod:`convscope.regions` moves them to the model's crop); every picture shows the asked box
or region outlined in white and the matched detection's box in cyan, and ``maps.json`` records them.

A Keras model (``load_model("model.keras")``) takes the same path: its NHWC maps are transposed to
[N, C, H, W] for rendering.

Example::

    paths = explain(load_model("zoo:shapes-vgg"), ["a.png"], method="all", out=Path("out"))
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from convscope import picture as pictures
from convscope import regions, render
from convscope.backends.torch.session import eval_mode
from convscope.errors import ConvscopeError
from convscope.images import ImageBatch, ImageStream, images_per_batch
from convscope.methods import AugSmooth, Method, display_kind
from convscope.methods.batching import MaxBatch, check_max_batch
from convscope.methods.lrp import LRP, conservation
from convscope.methods.registry import applicable, get_method
from convscope.models import LoadedModel
from convscope.targets import Predicted, Target
from convscope.targets_vision import Detection, Region

SHEET_TILE = 160  # pixels: the height of each tile of an image's "-all" sheet


def heat_map(attribution: torch.Tensor, kind: str = "magnitude") -> np.ndarray:
    """One sample's map [C, H, W] as a 2-D heat map in [0, 1], scaled as its method's display
    ``kind`` says (:func:`convscope.render.heat`; ``magnitude``: ``|.|`` summed over channels)."""
    return render.heat(attribution.detach().float().cpu().numpy(), kind)


def _explained(loaded: LoadedModel, method: Method, x: object, classes: list[int] | None
               ) -> tuple[object, list[int]]:
    """The maps of ``method`` for ``classes`` (None: each sample's predicted class) and those classes.
    A PyTorch method whose passes score the clean input explains :class:`~convscope.targets.Predicted`
    and reports the classes it picked: one forward pass per chunk serves prediction and attribution."""
    if classes is not None:
        return method.attribute(x, target=classes), classes
    if method.scores_input and isinstance(loaded.model, torch.nn.Module):
        picked = Predicted()
        maps = method.attribute(x, target=picked)
        return maps, picked.classes()
    classes = _predicted(loaded, x)
    return method.attribute(x, target=classes), classes


def blank_reason(attribution: torch.Tensor, cam: bool) -> str | None:
    """Why a map shows no place (None when it does): all zero, or one constant value. ``cam``: the
    map is a CAM (a ReLU of weighted layer channels), whose all-zero map has a known cause."""
    low, high = float(attribution.min()), float(attribution.max())
    if low != high:
        return None
    if high == 0.0:
        return ("all zero: nothing positive at this layer for this class" if cam else
                "all zero: the score does not respond to this input under this method")
    return f"constant ({high:.3g} everywhere): it points at no place"


def _predicted(loaded: LoadedModel, x: object) -> list[int]:
    """The predicted class of each sample (a Keras model takes the NHWC batch its preprocess made)."""
    if isinstance(loaded.model, torch.nn.Module):
        with torch.no_grad():
            return loaded.model(x).argmax(1).tolist()
    return np.asarray(loaded.model(x, training=False)).argmax(1).tolist()


def _channels_first(maps: object) -> torch.Tensor:
    """Maps as [N, C, H, W] torch tensors: a Keras model's NHWC maps are transposed."""
    if isinstance(maps, torch.Tensor):
        return maps
    return torch.tensor(np.moveaxis(np.asarray(maps), -1, 1))  # a copy: TF's arrays are read-only


#: the on/off options of the command line: option -> (its flag, the methods that take it, an example)
FLAGS = {"eigen_smooth": ("--eigen-smooth", "the CAM methods", "--method grad_cam"),
         "adaptive": ("--adaptive", "occlusion", "--method occlusion")}


def _options(cls: type[Method], layer: str | None, flags: dict[str, bool], asked_alone: bool) -> dict[str, object]:
    """The options of ``cls`` among ``layer`` and the on/off ``flags`` (:data:`FLAGS`; the ones it declares it takes)."""
    takes = cls.options
    options: dict[str, object] = {"layer": layer} if layer is not None and "layer" in takes else {}
    for name, on in flags.items():
        if on and name not in takes and asked_alone:
            flag, methods, example = FLAGS[name]
            raise ConvscopeError(f"{flag} applies to {methods}; {cls.__name__} has no such option",
                                 f"Drop {flag}, or pick a method that takes it such as {example}.")
        if on and name in takes:
            options[name] = True
    return options


class MapIndex:
    """``maps.json``: what a run has written so far, rewritten atomically after every batch.

    ``{"complete": bool, "model": str, "view": "picture" | "crop", "images": {image: [entry per
    method]}, "sheets": {image: png}, "crops": {image: [left, top, right, bottom]}}``; an entry
    holds the method, target, options, the raw map's shape, min and max, ``"blank"`` (why the map
    shows no place, or null) and its ``"png"``. ``"complete"`` stays false until the last batch
    is done, so an interrupted run leaves an index of exactly the PNGs it wrote. The PNGs a
    previous index in the same folder lists are removed when the first new one is written: the
    folder then never mixes two runs.
    """

    def __init__(self, out: Path, header: dict[str, Any]) -> None:
        self.path = out / "maps.json"
        self.data: dict[str, Any] = {"complete": False, **header, "images": {}, "sheets": {}, "crops": {}}
        self.started = False

    def start(self) -> None:
        """Before the first PNG: remove the previous run's PNGs, then index this run's."""
        if self.started:
            return
        for name in _listed_pngs(self.path):
            (self.path.parent / name).unlink(missing_ok=True)
        self.started = True
        self.save()

    def add(self, image: str, entry: dict[str, Any], box: list[float]) -> None:
        self.data["images"].setdefault(image, []).append(entry)
        self.data["crops"][image] = box

    def save(self, complete: bool = False) -> Path:
        self.data["complete"] = complete
        return render.write_atomic(self.path, json.dumps(self.data, indent=2).encode())


def _listed_pngs(path: Path) -> list[str]:
    """The PNG file names an existing ``maps.json`` lists (none if there is no readable one)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and value.endswith(".png") and Path(value).name == value:
            found.append(value)

    walk(data.get("images", data) if isinstance(data, dict) else data)
    walk(data.get("sheets", {}) if isinstance(data, dict) else {})
    return found


class _Views:
    """What the maps of one batch are drawn on: each image's crop, or its whole picture."""

    def __init__(self, batch: ImageBatch, crop: bool) -> None:
        self.batch, self.crop = batch, crop
        self.images = list(batch.pixels) if crop else [pictures.open_picture(f) for f in batch.files]

    def overlay(self, i: int, heat: np.ndarray) -> np.ndarray:
        if self.crop:
            return render.overlay(self.images[i], heat, alpha=0.6)
        return pictures.overlay_on_picture(self.images[i], self.batch.boxes[i], heat, alpha=0.6)

    def tile(self, i: int, image: np.ndarray) -> np.ndarray:
        """``image`` (drawn on view ``i``) at its sheet size: :data:`SHEET_TILE` high, its aspect kept."""
        height, width = self.images[i].shape[:2]
        return render.resize(image, (SHEET_TILE, max(1, round(SHEET_TILE * width / height))))


def explain(loaded: LoadedModel, images: Sequence[str | Path], *, method: str = "grad_cam", target: int | None = None,
            layer: str | None = None, eigen_smooth: bool = False, aug_smooth: bool = False,
            out: Path = Path("convscope-explain"), max_batch: MaxBatch = "auto", crop: bool = False,
            progress: bool | None = None, adaptive: bool = False, box: regions.Box | None = None,
            region: regions.Box | str | Path | None = None) -> list[Path]:
    """Write the overlays (and sheets, and maps.json) into ``out``; return the written paths.
    ``eigen_smooth`` applies to the CAM methods (with ``method="all"``, to those only), ``adaptive``
    to occlusion (:class:`~convscope.methods.Adaptive`'s defaults: approximate, faster);
    ``aug_smooth`` wraps every method in :class:`~convscope.methods.AugSmooth`; ``max_batch``: most
    samples per model evaluation (an int, ``"auto"`` or None for no limit); ``crop``: draw on the
    model's crop instead of the whole picture; ``progress``: a progress bar on stderr (None: when
    stderr is a terminal); ``box``/``region``: a detection or a segmentation region to explain (see the
    module doc)."""
    asked = _Asked.check(loaded, target, box, region, aug_smooth)
    names = applicable(loaded.model) if method == "all" else [get_method(method).name]
    max_batch = check_max_batch(max_batch)
    methods = {}
    for name in names:
        cls = get_method(name)
        kwargs = _options(cls, layer, {"eigen_smooth": eigen_smooth, "adaptive": adaptive}, asked_alone=len(names) == 1)
        made = cls(loaded.model, max_batch=max_batch, **kwargs)
        methods[name] = (AugSmooth(made) if aug_smooth else made, kwargs, "layer" in cls.options)
    stream = ImageStream(images, loaded.preprocess, images_per_batch(max_batch))
    index = MapIndex(out, {"model": {"name": loaded.name, "weights": loaded.weights}, "method": method if method == "all" else names[0],
                           "view": "crop" if crop else "picture"})
    written: list[Path] = []
    bar = tqdm(total=len(stream) * len(names), desc="explain", unit="map" if len(names) > 1 else "image",
               disable=None if progress is None else not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        for batch in stream:
            written += _explain_batch(loaded, batch, methods, target, aug_smooth, crop, out, index, bar, asked)
            index.save()
        written.append(index.save(complete=True))
    except BaseException:
        if index.started:
            index.save(complete=False)
        raise
    finally:
        bar.close()
    return written


def _explain_batch(loaded: LoadedModel, batch: ImageBatch, methods: dict[str, tuple[Method, dict, bool]],
                   target: int | None, aug_smooth: bool, crop: bool, out: Path, index: MapIndex,
                   bar: tqdm, asked: _Asked | None = None) -> list[Path]:
    """Explain one batch of images with every method; write its PNGs and index them."""
    targets = [target] * len(batch.names) if target is not None else None  # None: predicted with the first map
    views = _Views(batch, crop)
    vision = asked.target(loaded, batch) if asked is not None else None
    sheets = len(methods) > 1
    tiles = [[views.tile(i, image)] for i, image in enumerate(views.images)] if sheets else []
    labels: list[list[str]] = [["input"] for _ in batch.names]
    written: list[Path] = []
    for name, (method, kwargs, cam) in methods.items():
        bar.set_postfix_str(name, refresh=False)
        if vision is not None:
            found = method.attribute(batch.tensor, target=vision.target)
        else:
            found, targets = _explained(loaded, method, batch.tensor, targets)
        maps = _channels_first(found)
        index.start()
        for i, image_name in enumerate(batch.names):
            blank = blank_reason(maps[i], cam)
            marked = vision.draw(views, i, views.images[i]) if vision is not None else views.images[i]
            if blank is None:
                shown = views.overlay(i, heat_map(maps[i], display_kind(method)))
                tile = shown = vision.draw(views, i, shown) if vision is not None else shown
                labels[i].append(name)
            else:  # no place to show: the plain image, captioned
                kind = blank.split(":")[0].split(" (")[0]  # "all zero", "constant"
                tile, shown = marked, pictures.captioned(marked, f"blank: {kind}")
                labels[i].append(f"{name}: {kind}")
                where = f" at layer {', '.join(method.last_layers)}" if cam and getattr(method, "last_layers", ()) else ""
                tqdm.write(f"convscope: {image_name}: the {name} map for class {targets[i]}{where} is blank "
                           f"({blank})", file=sys.stderr)
            if sheets:
                tiles[i].append(views.tile(i, tile))
            written.append(render.save_png(out / f"{Path(image_name).stem}-{name}.png", shown))
            index.add(image_name, {
                "method": name, "target": int(targets[i]), "eigen_smooth": "eigen_smooth" in kwargs,
                "adaptive": "adaptive" in kwargs,
                "aug_smooth": aug_smooth, "shape": list(maps[i].shape),
                "min": float(maps[i].min()), "max": float(maps[i].max()), "blank": blank,
                "png": written[-1].name, **(vision.entries[i] if vision is not None else {})}, _box(batch, i))
        if isinstance(method, LRP) and isinstance(loaded.model, torch.nn.Module):
            written += _conservation(loaded, method, batch, targets, out, index)
        bar.update(len(batch.names))
        del maps
    if sheets:
        if vision is not None:
            tiles = [[views.tile(i, vision.draw(views, i, views.images[i])), *rest[1:]] for i, rest in enumerate(tiles)]
        for i, image_name in enumerate(batch.names):
            sheet = render.grid(tiles[i], labels=labels[i], ncols=min(8, len(tiles[i])))
            written.append(render.save_png(out / f"{Path(image_name).stem}-all.png", sheet))
            index.data["sheets"][image_name] = written[-1].name
    return written


def _conservation(loaded: LoadedModel, method: LRP, batch: ImageBatch, targets: list[int], out: Path,
                  index: MapIndex) -> list[Path]:
    """LRP's conservation report of each image: ``<image>-lrp-conservation.png`` (relevance / score at
    every cut of the model) and its numbers in the image's ``maps.json`` entry."""
    report = conservation(loaded.model, batch.tensor, targets, composite=method.composite, canonize=method.canonize)
    written = []
    for i, image_name in enumerate(batch.names):
        written.append(render.save_png(out / f"{Path(image_name).stem}-lrp-conservation.png", report.picture(i)))
        index.data["images"][image_name][-1]["conservation"] = {
            "score": float(report.score[i]), "png": written[-1].name,
            "layers": [{"layer": name, "relevance": _finite(s[i]), "drift": _finite(d[i])}
                       for name, s, d in report.rows()]}
    return written


def _finite(value: float) -> float | None:
    """``value``, or None for NaN (JSON has no NaN)."""
    return value if value == value else None


@dataclass(frozen=True)
class _Marks:
    """The target of one batch for ``--box``/``--region``, what each picture shows of it (boxes in
    picture pixels: white the asked one, cyan the matched detection; masks of the model's crop)
    and what ``maps.json`` records of it per image."""

    target: Target
    boxes: list[list[tuple[regions.Box, tuple[int, int, int], int]]]  # box, colour, line width
    masks: list[np.ndarray | None]
    entries: list[dict[str, Any]]

    def draw(self, views: _Views, i: int, image: np.ndarray) -> np.ndarray:
        crop, size, shape = views.batch.boxes[i], int(views.batch.tensor.shape[-1]), image.shape[:2]
        mask = self.masks[i]
        if mask is not None:
            image = render.draw_outline(image, regions.mask_on_view(mask, crop, shape, views.crop), WHITE)
        for box, colour, width in self.boxes[i]:
            image = render.draw_box(image, regions.on_view(box, crop, shape, views.crop, size), colour, width)
        return image


WHITE, CYAN = (255, 255, 255), (0, 255, 255)


def _rounded(box: regions.Box) -> list[float]:
    return [round(v, 2) for v in box]


@dataclass(frozen=True)
class _Asked:
    """What ``--box``/``--region`` ask for, in pixels of the pictures (a region: a box or a mask file)."""

    label: int
    box: regions.Box | None
    region: regions.Box | Path | None

    @staticmethod
    def check(loaded: LoadedModel, target: int | None, box: regions.Box | None,
              region: regions.Box | str | Path | None, aug_smooth: bool = False) -> _Asked | None:
        if box is None and region is None:
            return None
        flag = "--box" if box is not None else "--region"
        if box is not None and region is not None:
            raise ConvscopeError("--box (a detection) and --region (a segmentation region) exclude each other",
                                 "Give --box for a detector, --region for a segmenter.")
        if target is None:
            raise ConvscopeError(f"{flag} needs --target CLASS: the class of the "
                                 f"{'detection' if box is not None else 'region'} to explain",
                                 f"Add e.g. --target 3 {flag} ...")
        if aug_smooth:  # a mirrored copy holds the object at the mirrored place, not in the box
            raise ConvscopeError(f"--aug-smooth mirrors the images, which moves what {flag} points at",
                                 f"Drop --aug-smooth when explaining with {flag}.")
        if not isinstance(loaded.model, torch.nn.Module):
            raise ConvscopeError(f"{flag} explains PyTorch detectors and segmenters, not a {type(loaded.model).__name__}",
                                 f"Drop {flag}, or load a PyTorch model.")
        if isinstance(region, str) and not isinstance(region, Path):
            region = Path(region)
        return _Asked(int(target), box, region)

    def target(self, loaded: LoadedModel, batch: ImageBatch) -> _Marks:
        """The batch's target, checked against the model's detections (a detection)."""
        size, n = int(batch.tensor.shape[-1]), len(batch.names)
        asked = self.box if self.box is not None else self.region
        boxes: list[list[tuple[regions.Box, tuple[int, int, int], int]]] = [[] for _ in range(n)]
        masks: list[np.ndarray | None] = [None] * n
        entries: list[dict[str, Any]] = [{} for _ in range(n)]
        if isinstance(asked, Path):
            for i, crop in enumerate(batch.boxes):
                masks[i] = regions.mask_in_crop(asked, loaded.preprocess, (crop.width, crop.height))
                entries[i] = {"region": {"mask": asked.name}}
            return _Marks(Region(self.label, mask=torch.from_numpy(np.stack(masks))), boxes, masks, entries)
        assert asked is not None
        moved = [regions.to_crop(asked, crop, size, repr(name)) for crop, name in zip(batch.boxes, batch.names)]
        if self.region is not None:
            for i in range(n):
                boxes[i].append((asked, WHITE, 2))
                entries[i] = {"region": {"box": _rounded(asked)}}
            # as masks of the input's size: a segmenter whose output is smaller is refused, not misread
            inside = np.stack([render.shapes.box_mask((size, size), b) for b in moved])
            return _Marks(Region(self.label, mask=torch.from_numpy(inside)), boxes, masks, entries)
        detection = Detection(self.label, moved)
        with torch.no_grad(), eval_mode(loaded.model):
            output = loaded.model(batch.tensor)
        for i, match in enumerate(detection.matches(output, names=batch.names)):
            assert match.box is not None
            found = regions.to_picture(match.box, batch.boxes[i], size)
            boxes[i] += [(found, CYAN, 2), (asked, WHITE, 1)]  # the asked box drawn thin, on top
            entries[i] = {"box": _rounded(asked), "matched": {"box": _rounded(found), "score": round(match.score, 6),
                                                               "iou": round(match.iou, 4)}}
        return _Marks(detection, boxes, masks, entries)


def _box(batch: ImageBatch, i: int) -> list[float]:
    box = batch.boxes[i]
    return [round(v, 2) for v in (box.left, box.top, box.right, box.bottom)]


__all__ = ["MapIndex", "blank_reason", "explain", "heat_map"]
