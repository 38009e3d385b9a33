"""What the server knows and computes: one model, its data, uploads, caches and jobs.

The web layer (:mod:`convscope.serve.app`) only translates requests into calls on a
:class:`Workspace` and its answers into JSON or PNG; every computation is here, in Python, through
the library's own functions (layer tables, receptive fields, probes, the registered methods, the
atlas, feature visualization). Model calls are serialised by one lock (hooks and rule modes act on
the one model), and their results are cached: a layer's activations on an image (so switching
channels only draws), each map by (image, method, target, layer), the predictions.

Images are named by id: ``d<i>`` for the i-th image of DATA (``shapes:N`` or a folder, read by
:func:`convscope.atlas.open_source`), ``u<hex>`` for an upload. Atlases and feature visualizations
are written under the work folder (``atlas/<layer>/``, ``featurevis/<layer>/c<c>.png``) and maps
under ``maps/`` (each PNG with its description in a ``.json`` beside it), so ``convscope serve --export`` finds everything that was computed.

Example::

    ws = Workspace(load_model("zoo:shapes-vgg"), "shapes:64", Path("convscope-serve"))
    ws.map_png("d0", "grad_cam", "pred", None)["target"]
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convscope import render
from convscope.atlas import open_source
from convscope.atlas.store import Atlas, model_hash, open_atlas
from convscope.atlas.topk import TopK
from convscope.errors import ConvscopeError, did_you_mean
from convscope.loaded import LoadedModel
from convscope.serve.answers import Missing
from convscope.serve.jobs import Job, Jobs
from convscope.serve.uploads import MAX_BYTES, Upload, read_upload

THUMB = 96  #: pixels: the side of a channel's thumbnail in the layer grid


class LRU:
    """A thread-safe cache that forgets its least recently used entries beyond ``size``. A value
    is made outside the lock (two threads may both make it; the first stored wins)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:  # noqa: ANN401
        """The value of ``key`` (marked as recently used), or None."""
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def get_or(self, key: Any, make: Any) -> Any:  # noqa: ANN401
        found = self.get(key)
        if found is not None:
            return found
        value = make()
        with self._lock:
            value = self._items.setdefault(key, value)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def folder_name(layer: str) -> str:
    """A layer name as one safe folder name (``features.3`` stays, ``a/b`` becomes ``a_b``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", layer).strip(".") or "_"


@dataclass(frozen=True)
class AtlasArrays:
    """One layer's atlas read once (each read checks the file's checksum): top-k, patches, projections."""

    topk: TopK
    patches: np.ndarray
    projections: np.ndarray | None


class Workspace:
    """One model and what has been computed on it (see the module doc)."""

    def __init__(self, loaded: LoadedModel, data: str | None, work: Path, *, max_upload: int = MAX_BYTES) -> None:
        self.loaded = loaded
        self.data = data
        self.source = open_source(data, loaded.preprocess) if data else None
        self.data_root = Path(data) if data and not str(data).startswith("shapes:") else None
        self.work = Path(work)
        self.max_upload = max_upload
        self.lock = threading.RLock()
        self.jobs = Jobs()
        self.uploads: dict[str, Upload] = {}
        self._maps: LRU = LRU(512)
        self._acts: LRU = LRU(32)
        self._preds: LRU = LRU(256)
        self._pictures: LRU = LRU(256)
        self._rows: list[dict[str, Any]] | None = None
        self._atlases: dict[str, Atlas | None] = {}
        self._atlas_arrays: dict[str, AtlasArrays] = {}
        self.torch = isinstance(loaded.model, torch.nn.Module)
        self._hash = model_hash(loaded.model) if self.torch else None
        self._load_uploads()

    # --- images ---------------------------------------------------------------------------

    def images(self) -> list[dict[str, str]]:
        """Every image the page may choose: DATA's, then the uploads."""
        found = [{"id": f"d{i}", "name": self.source.name(i)} for i in range(len(self.source))] if self.source else []
        return found + [{"id": f"u{key}", "name": f"upload {key[:8]}"} for key in self.uploads]

    def pixels(self, image: str) -> np.ndarray:
        """The model's crop of ``image`` as uint8 [H, W, 3] (what the maps are drawn on)."""
        return self.picture(image)[0]

    def picture(self, image: str) -> tuple[np.ndarray, Any]:
        """``image`` as a person sees it (:meth:`pixels`) and as the model does (its preprocessed
        batch of one: [1, 3, H, W] for PyTorch, NHWC for Keras); cached."""

        def make() -> tuple[np.ndarray, Any]:
            if image.startswith("u") and image[1:] in self.uploads:
                from PIL import Image

                crop = np.array(self.loaded.preprocess.pixels(Image.fromarray(self.uploads[image[1:]].pixels)))  # writable
            elif image.startswith("d") and image[1:].isdigit() and self.source and int(image[1:]) < len(self.source):
                batch = self.source.take(np.asarray([int(image[1:])]))
                if not len(batch.index):
                    reason = batch.skipped[0][2] if batch.skipped else "unreadable"
                    raise ConvscopeError(f"image {image} cannot be read ({reason})", "Choose another image.")
                crop = batch.pixels[0]
            else:
                raise Missing(f"there is no image {image!r}", "GET /api/images lists the images.")
            return crop, self.loaded.preprocess.to_tensor(crop)

        return self._pictures.get_or(image, make)

    def add_upload(self, data: bytes) -> str:
        """Check and keep an uploaded picture; returns its image id."""
        upload = read_upload(data, self.max_upload)
        self.uploads[upload.key] = upload
        render.write_atomic(self.work / "uploads" / f"{upload.key}.png", upload.png)
        return f"u{upload.key}"

    def _load_uploads(self) -> None:
        for path in sorted((self.work / "uploads").glob("*.png")):
            try:
                upload = read_upload(path.read_bytes(), max(self.max_upload, path.stat().st_size))
            except ConvscopeError:
                continue
            self.uploads[path.stem] = Upload(path.stem, upload.pixels, upload.png)

    # --- the model ------------------------------------------------------------------------

    def model_info(self) -> dict[str, Any]:
        rows = self.layer_rows()
        return {"name": self.loaded.name, "weights": self.loaded.weights, "framework": "torch" if self.torch else "keras",
                "input": self.loaded.preprocess.crop, "params": sum(r["params"] for r in rows),
                "classes": self.class_names(), "layers": rows, "data": self.data,
                "atlas_layers": [r["name"] for r in rows if self.atlas(r["name"]) is not None]}

    def class_names(self) -> list[str]:
        names = self.loaded.class_names
        if names:
            return list(names)
        return []

    def layer_rows(self) -> list[dict[str, Any]]:
        """The layer table with receptive fields (size and stride of a central unit's field)."""
        if self._rows is None:
            with self.lock:
                self._rows = self._layer_rows()
        return self._rows

    def _layer_rows(self) -> list[dict[str, Any]]:
        size = self.loaded.preprocess.crop
        if self.torch:
            from convscope.layers import layer_table

            table = layer_table(self.loaded.model, torch.zeros(1, 3, size, size))
        else:
            from convscope.tf.layers import layer_table as keras_table
            from convscope.tf.layers import probe_for

            table = keras_table(self.loaded.model, probe_for(self.loaded.model, size))
        rows = []
        for r in table:
            shape = list(r.output_shape) if r.output_shape else None
            spatial = shape is not None and len(shape) == 4
            channels = (shape[1] if self.torch else shape[3]) if spatial else None
            rows.append({"name": r.name, "depth": r.depth, "kind": r.kind, "shape": shape, "params": r.params,
                         "channels": channels, "field": self._field(r.name, shape) if spatial and self.torch else None})
        return rows

    def _field(self, layer: str, shape: list[int]) -> dict[str, int] | None:
        """Receptive field of the unit at the centre of ``layer``'s map: its size and the layer's stride."""
        from convscope.atlas.receptive import receptive_field

        try:
            field = receptive_field(self.loaded.model, layer, (3, self.loaded.preprocess.crop, self.loaded.preprocess.crop))
            y0, y1, x0, x1 = field.box(shape[2] // 2, shape[3] // 2)
        except Exception:  # noqa: BLE001 - a layer whose field cannot be read shows none
            return None
        stride = field.axes[0].scale if field.axes else None
        return {"size": max(y1 - y0, x1 - x0), "stride": stride}

    def layer(self, name: str) -> dict[str, Any]:
        """A row of the layer table with channels, or a clear error naming close ones."""
        rows = {r["name"]: r for r in self.layer_rows() if r["channels"]}
        if name not in rows:
            raise ConvscopeError(f"the model has no layer with channels named {name!r}",
                                 did_you_mean(name, list(rows), "layer"))
        return rows[name]

    def _torch_only(self, what: str) -> None:
        if not self.torch:
            raise ConvscopeError(f"{what} reads PyTorch modules; this is a Keras model",
                                 "Use `convscope project MODEL IMAGES --layer L --channel C --top K` for a "
                                 "channel's strongest units, or the model's PyTorch version.")

    # --- predictions and activations ------------------------------------------------------

    def predictions(self, image: str, top: int = 5) -> list[dict[str, Any]]:
        def make() -> list[dict[str, Any]]:
            x = self.picture(image)[1]
            with self.lock:
                if self.torch:
                    with torch.no_grad():
                        logits = self.loaded.model(x)
                    probs = torch.softmax(logits.float(), 1)[0].numpy()
                else:
                    out = np.asarray(self.loaded.model(x, training=False))[0]
                    probs = np.exp(out - out.max()) / np.exp(out - out.max()).sum() if out.min() < 0 or out.sum() > 1.001 else out
            names = self.class_names()
            order = np.argsort(-probs, kind="stable")[:top]
            return [{"class": int(k), "name": names[k] if k < len(names) else f"class {k}", "p": float(probs[k])}
                    for k in order]

        return self._preds.get_or(image, make)

    def activations(self, image: str, layer: str) -> np.ndarray:
        """``layer``'s output on ``image`` as float32 [C, h, w] (cached): recorded by a forward hook
        on a PyTorch model, by a probed call of a Keras model (its NHWC output transposed)."""
        self.layer(layer)

        def make() -> np.ndarray:
            x = self.picture(image)[1]
            if not self.torch:
                from convscope.backends.tf.model import keras_net

                with self.lock:
                    record = keras_net(self.loaded.model).run(x, [layer])
                return np.moveaxis(np.asarray(record.acts[layer])[0], -1, 0).astype(np.float32)
            from convscope.backends.torch.probes import Probes
            from convscope.backends.torch.session import eval_mode

            with self.lock, eval_mode(self.loaded.model), torch.no_grad(), Probes(self.loaded.model, [layer]) as probes:
                self.loaded.model(x)
                return probes.output(layer)[0].float().numpy().copy()

        return self._acts.get_or((image, layer), make)

    def channel_activation(self, image: str, layer: str, channel: int) -> dict[str, Any]:
        """Channel ``channel`` of ``layer`` on ``image``: its map over the crop (``max(a, 0) / max``), stats."""
        acts = self.activations(image, layer)
        self._check_channel(layer, channel)
        a = acts[channel]
        top = float(a.max())
        heat = np.clip(a, 0, None) / top if top > 0 else np.zeros_like(a)
        picture = render.overlay(self.pixels(image), heat, alpha=0.65, interpolation="nearest")
        y, x = np.unravel_index(int(a.argmax()), a.shape)
        return {"png": data_url(render.to_png_bytes(picture)), "max": top, "mean": float(a.mean()),
                "at": [int(y), int(x)], "size": list(a.shape)}

    def _check_channel(self, layer: str, channel: int) -> None:
        count = self.layer(layer)["channels"]
        if not 0 <= channel < count:
            raise ConvscopeError(f"{layer} has channels 0..{count - 1}, not {channel}", "Choose one of them.")

    # --- the layer grid and the channel view ----------------------------------------------

    def layer_view(self, layer: str, image: str | None) -> dict[str, Any]:
        row = self.layer(layer)
        atlas = self.atlas(layer) if self.torch else None
        best = self.atlas_arrays(layer).topk.values.max(axis=1) if atlas is not None else None
        acts = self.activations(image, layer) if image else None
        rendered = self.featurevis_done(layer)
        channels = []
        for c in range(row["channels"]):
            channels.append({"c": c, "atlas_max": None if best is None else float(best[c]),
                             "act_max": None if acts is None else float(acts[c].max()),
                             "act_mean": None if acts is None else float(acts[c].mean()),
                             "featurevis": c in rendered})
        return {"layer": row, "atlas": atlas is not None, "featurevis": len(rendered), "channels": channels}

    def thumbnail(self, layer: str, channel: int, image: str | None) -> bytes:
        """A channel's picture for the grid: its atlas top patch, else its feature visualization,
        else its activation on ``image``."""
        self._check_channel(layer, channel)
        atlas = self.atlas(layer) if self.torch else None
        if atlas is not None:
            tile = self.atlas_arrays(layer).patches[channel, 0]
        elif (path := self.featurevis_path(layer, channel)).exists():
            return path.read_bytes()
        elif image:
            acts = self.activations(image, layer)[channel]
            top = float(acts.max())
            tile = render.overlay(self.pixels(image), np.clip(acts, 0, None) / top if top > 0 else np.zeros_like(acts),
                                  alpha=0.65, interpolation="nearest")
        else:
            tile = np.full((THUMB, THUMB, 3), 230, np.uint8)
        return render.to_png_bytes(render.resize(tile, (THUMB, THUMB), "nearest"))

    def channel_view(self, layer: str, channel: int, image: str | None) -> dict[str, Any]:
        self._check_channel(layer, channel)
        row = self.layer(layer)
        view: dict[str, Any] = {"layer": layer, "channel": channel, "channels": row["channels"], "atlas": None,
                                "featurevis": None, "activation": None}
        atlas = self.atlas(layer) if self.torch else None
        if atlas is not None:
            from convscope.atlas.pages import card_image
            from convscope.atlas.topk import EMPTY

            arrays, names = self.atlas_arrays(layer), atlas.manifest.get("names", {})
            acc, proj = arrays.topk, arrays.projections
            used = acc.images[channel] != EMPTY
            strip = card_image(arrays.patches[channel], None if proj is None else proj[channel])
            scale = max(1, 96 // arrays.patches.shape[2])
            strip = render.resize(strip, (strip.shape[0] * scale, strip.shape[1] * scale), "nearest")
            view["atlas"] = {"k": atlas.k, "png": data_url(render.to_png_bytes(strip)), "projections": proj is not None,
                             "values": [float(v) for v in acc.values[channel][used]],
                             "images": [names.get(str(int(n)), f"#{n}") for n in acc.images[channel][used]]}
        path = self.featurevis_path(layer, channel)
        if path.exists():
            view["featurevis"] = data_url(path.read_bytes())
        if image:
            view["activation"] = self.channel_activation(image, layer, channel)
        return view

    # --- maps -----------------------------------------------------------------------------

    def methods(self) -> list[dict[str, Any]]:
        from convscope.methods.registry import applicable, methods

        runs = set(applicable(self.loaded.model))
        return [{"name": info.name, "description": info.description, "layer": "layer" in info.cls.options}
                for info in methods().values() if info.name in runs]

    def map_png(self, image: str, method: str, target: str | int, layer: str | None) -> dict[str, Any]:
        """The map of ``method`` for ``target`` (a class index or ``"pred"``) on ``image``, drawn over
        its crop as the method's display kind says; cached, and kept under ``maps/`` for the export."""
        from convscope.explain import blank_reason, heat_map
        from convscope.methods import display_kind
        from convscope.methods.registry import check_runs_on, get_method

        cls = get_method(method)
        check_runs_on(self.loaded.model, cls.name)
        takes_layer = "layer" in cls.options
        if layer and takes_layer:
            self.layer(layer)
        cls_index = self.predictions(image, 1)[0]["class"] if target in ("pred", None, "") else int(target)
        key = (image, cls.name, cls_index, layer if takes_layer else None)
        if (known := self._maps.get(key)) is not None:
            return {**known, "cached": True}
        x = self.picture(image)[1]
        start = time.perf_counter()
        with self.lock:
            made = cls(self.loaded.model, max_batch=64, **({"layer": layer} if layer and takes_layer else {}))
            maps = made.attribute(x, target=[cls_index])
        found = maps[0] if isinstance(maps, torch.Tensor) else torch.tensor(np.moveaxis(np.asarray(maps)[0], -1, 0))
        blank = blank_reason(found, takes_layer)
        heat = heat_map(found, display_kind(made)) if blank is None else np.zeros(found.shape[-2:])
        png = render.to_png_bytes(render.overlay(self.pixels(image), heat, alpha=0.6))
        result = {"image": image, "method": cls.name, "target": cls_index, "layer": key[3], "blank": blank,
                  "min": float(found.min()), "max": float(found.max()), "png": data_url(png),
                  "ms": round(1000 * (time.perf_counter() - start), 1), "scores": self._scores(image, heat)}
        self._maps.get_or(key, lambda: result)
        self._keep_map(result, png)
        return {**result, "cached": False}

    def _scores(self, image: str, heat: np.ndarray) -> dict[str, Any] | None:
        """Localisation scores of a map as drawn (``heat``), where the image's object mask is known
        (DATA ``shapes:N``): the pointing game (is the hottest pixel on the object?) and the share of
        the map's mass on it (:mod:`convscope.evaluate.localisation`)."""
        from convscope.atlas.source import ShapesSource
        from convscope.evaluate import mass_inside, pointing_game

        if not (image.startswith("d") and isinstance(self.source, ShapesSource)):
            return None
        mask = self.source.shapes.sample(int(image[1:])).mask
        if mask.shape != heat.shape:
            return None
        maps, masks = torch.from_numpy(np.ascontiguousarray(heat))[None], torch.from_numpy(mask)[None]
        mass = float(mass_inside(maps, masks)[0])
        return {"pointing_game": bool(pointing_game(maps, masks)[0]), "mass_inside": None if mass != mass else mass}

    def _keep_map(self, result: dict[str, Any], png: bytes) -> None:
        """Write the map's PNG and, beside it, its description (``.json``) under ``maps/``: one pair
        per map, so keeping one costs the same however many were kept before."""
        name = f"{result['image']}-{result['method']}-{result['target']}-{folder_name(result['layer'] or 'auto')}"
        render.write_atomic(self.work / "maps" / f"{name}.png", png)
        entry = {k: v for k, v in result.items() if k != "png"} | {"file": f"{name}.png"}
        render.write_atomic(self.work / "maps" / f"{name}.json", json.dumps(entry, indent=1).encode())

    def kept_maps(self) -> list[dict[str, Any]]:
        """The descriptions of every map kept under ``maps/`` (oldest first), with its ``file``."""
        found = []
        for path in sorted((self.work / "maps").glob("*.json"), key=lambda p: p.stat().st_mtime):
            try:
                entry = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if (self.work / "maps" / str(entry.get("file", ""))).is_file():
                found.append(entry)
        return found

    # --- atlases and feature visualizations (jobs) ----------------------------------------

    def atlas_path(self, layer: str) -> Path:
        return self.work / "atlas" / folder_name(layer)

    def atlas(self, layer: str) -> Atlas | None:
        """The finished atlas of ``layer`` for this model (None if none was mined)."""
        if layer not in self._atlases:
            try:
                found = open_atlas(self.atlas_path(layer))
            except ConvscopeError:
                return None
            if found.manifest.get("model", {}).get("hash") != self._hash or layer not in found.layers:
                return None
            self._atlases[layer] = found
        return self._atlases[layer]

    def atlas_arrays(self, layer: str) -> AtlasArrays:
        """The arrays of ``layer``'s atlas, read once (the atlas must exist: :meth:`atlas`)."""
        if layer not in self._atlas_arrays:
            atlas = self.atlas(layer)
            assert atlas is not None
            proj = atlas.projections(layer) if "deconvnet" in atlas.manifest.get("methods", []) else None
            self._atlas_arrays[layer] = AtlasArrays(atlas.topk(layer), atlas.patches(layer), proj)
        return self._atlas_arrays[layer]

    def start_atlas(self, layers: list[str], k: int = 9, images: int | None = None) -> Job:
        """Mine the atlas of each of ``layers`` over DATA in the background."""
        self._torch_only("the dataset atlas")
        if self.source is None:
            raise ConvscopeError("the server was started without DATA, so there is nothing to mine",
                                 "Start it as `convscope serve MODEL DATA` (DATA: an image folder or shapes:N).")
        for layer in layers:
            self.layer(layer)
        if not 1 <= k <= 64:
            raise ConvscopeError(f"k = {k} is not a number of top activations from 1 to 64", "Use e.g. k = 9.")
        data = self.data if images is None or not str(self.data).startswith("shapes:") else f"shapes:{images}"

        def work(job: Job) -> list[str]:
            batch = 32
            batches = -(-len(open_source(data, self.loaded.preprocess)) // batch)
            for i, layer in enumerate(layers):
                job.advance(0, batches, f"mining {layer} ({i + 1}/{len(layers)})")
                with self.lock:
                    self._build(job, data, layer, k, batch, batches)
                self._atlases.pop(layer, None)
                self._atlas_arrays.pop(layer, None)
            job.advance(1, 1, "done")
            return layers

        title = f"atlas of {', '.join(layers)} over {data}, k = {k}"
        return self.jobs.submit("atlas", title, work)

    def _build(self, job: Job, data: str, layer: str, k: int, batch: int, batches: int) -> None:
        """Mine (resuming an interrupted run of the same layer), then project and store one layer."""
        from convscope.atlas import build_atlas, mine

        folder = self.atlas_path(layer)

        mined = mine(self.loaded.model, data, [layer], k=k, batch_size=batch, out=folder, resume=folder.exists(),
                     preprocess=self.loaded.preprocess, model_name=self.loaded.name,
                     on_batch=lambda b: job.advance(b + 1, batches))
        job.advance(batches, batches, f"projecting {layer}")
        build_atlas(self.loaded.model, data, [layer], folder, k=k, batch_size=batch, preprocess=self.loaded.preprocess,
                    model_name=self.loaded.name, mined=mined)

    def featurevis_path(self, layer: str, channel: int) -> Path:
        return self.work / "featurevis" / folder_name(layer) / f"c{channel}.png"

    def featurevis_done(self, layer: str) -> set[int]:
        folder = self.work / "featurevis" / folder_name(layer)
        return {int(p.stem[1:]) for p in folder.glob("c*.png") if p.stem[1:].isdigit()}

    def start_featurevis(self, layer: str, channels: list[int], steps: int = 64) -> Job:
        """Render what each of ``channels`` of ``layer`` responds to, a few channels at a time."""
        for c in channels:
            self._check_channel(layer, c)
        if not 1 <= steps <= 10_000:
            raise ConvscopeError(f"steps = {steps} is not a number of optimisation steps from 1 to 10000",
                                 "Use e.g. 64 (a sketch) to 512 (a finished picture).")
        chunks = [channels[i:i + 4] for i in range(0, len(channels), 4)]  # a stop waits for one chunk at most

        def work(job: Job) -> int:
            from convscope.featurevis.objectives import channels as channel_objectives
            from convscope.featurevis.render import render as optimise

            job.advance(0, len(channels), f"rendering {layer}")
            for n, chunk in enumerate(chunks):
                with self.lock:
                    result = optimise(self.loaded.model, channel_objectives(layer, chunk), steps=steps,
                                      preprocess=self.loaded.preprocess, progress=False, seed=0)
                for c, pixels in zip(chunk, result.pixels()):
                    render.save_png(self.featurevis_path(layer, c), render.resize(pixels, (THUMB, THUMB), "nearest"))
                job.advance(sum(len(c) for c in chunks[:n + 1]), len(channels))  # (stops here when cancelled)
            return len(channels)

        return self.jobs.submit("featurevis", f"feature visualization of {layer} channels "
                                f"{channels[0]}-{channels[-1]} ({steps} steps)", work)
