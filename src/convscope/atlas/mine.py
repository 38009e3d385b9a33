"""The mining run: one pass over a dataset, keeping each channel's k strongest activations.

Batch ``b`` holds images ``b*batch_size .. (b+1)*batch_size - 1``; a run sharded over
``world`` processes gives batch ``b`` to rank ``b % world``. Forward hooks fold each probed
layer's output into its :class:`~convscope.atlas.topk.TopK` the moment the layer returns (before
an in-place ReLU can change it), under ``torch.inference_mode``. The first batch runs the whole
forward pass (proving that no mined layer runs twice); later ones stop as soon as every mined
layer has run, since nothing after them changes what is kept.

**Checkpoints.** With ``out`` set, the accumulators, the next batch and the skipped images are
saved to ``out/checkpoint-r<rank>.npz`` (a checked entry: payload + manifest with its SHA-256,
written atomically, manifest last) every ``checkpoint_every`` batches (default: every 30 s and
at the end). ``resume=True`` continues from it - after Ctrl-C, ``kill -9`` or power loss - and,
since merging is exact, ends with exactly the result of an uninterrupted run. A checkpoint from
another model, layer list, k, data set or batch size is refused with a clear error; a damaged
one is never read (the run starts over).

Example::

    mined = mine(model, "shapes:1000", ["features.0", "features.3"], k=9, out="atlas", resume=True)
    mined.results["features.3"].values[5]
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import convscope
from convscope.atlas.source import Source, open_source
from convscope.atlas.store import model_hash, npz_bytes, read_manifest
from convscope.atlas.topk import TopK
from convscope.backends.torch.forward import model_device
from convscope.backends.torch.session import eval_mode
from convscope.cache import read_checked, write_checked
from convscope.errors import ConvscopeError
from convscope.formats import check_torch_modules
from convscope.images import Preprocess
from convscope.layers import resolve_layer


@dataclass
class Mined:
    """The outcome of :func:`mine`: per-layer results, the run's identity and the skipped images."""

    results: dict[str, TopK]
    identity: dict[str, Any]
    skipped: list[tuple[int, str, str]] = field(default_factory=list)
    batches_run: int = 0  # batches computed by this call (not loaded from a checkpoint)


def identity(model: nn.Module, source: Source, layers: Sequence[str], k: int, batch_size: int,
             world: int, model_name: str | None = None, per_image: bool = True) -> dict[str, Any]:
    """What a checkpoint must match to be resumed."""
    return {"model": {"name": model_name or type(model).__name__, "hash": model_hash(model)},
            "layers": list(layers), "k": k, "per_image": per_image,
            "data": {"fingerprint": source.fingerprint(), "count": len(source)},
            "batch_size": batch_size, "world": world, "convscope_version": convscope.__version__}


def check_same(found: dict[str, Any], wanted: dict[str, Any], where: Path) -> None:
    """A clear error naming the first difference between a stored and a requested run."""
    stored = {"per_image": False, **found}  # stores from before per_image kept every unit
    for key in ("model", "layers", "k", "per_image", "data", "batch_size", "world"):
        same = (stored.get(key) or {}).get("hash") == wanted[key]["hash"] if key == "model" else \
            stored.get(key) == wanted.get(key)
        if not same:
            raise ConvscopeError(f"the store {str(where)!r} was made with {key} = {stored.get(key)!r}, not "
                                 f"{wanted.get(key)!r}, so --resume cannot continue it",
                                 "Resume with the same model, data, --layers, --k, --all-positions and batch size, or "
                                 "choose a new --out folder.")


def _checkpoint_path(out: Path, rank: int) -> Path:
    return out / f"checkpoint-r{rank}.npz"


def _save(out: Path, rank: int, ident: dict[str, Any], next_batch: int, results: dict[str, TopK],
          skipped: list[tuple[int, str, str]]) -> None:
    arrays = {key: v for i, name in enumerate(ident["layers"]) if name in results
              for key, v in results[name].arrays(f"L{i}_").items()}
    meta = {"identity": ident, "next_batch": next_batch, "skipped": [list(s) for s in skipped],
            "layers_seen": [n for n in ident["layers"] if n in results]}
    write_checked(_checkpoint_path(out, rank), npz_bytes(arrays), meta)


def _load(out: Path, rank: int, ident: dict[str, Any]) -> tuple[int, dict[str, TopK], list] | None:
    found = read_checked(_checkpoint_path(out, rank))
    if isinstance(found, str):
        if found != "missing":
            print(f"convscope: the checkpoint in {out} is {found}; starting over.", file=sys.stderr)
        return None
    payload, meta = found
    check_same(meta["identity"], ident, out)
    arrays = np.load(io.BytesIO(payload))
    results = {name: TopK.from_arrays(arrays, f"L{ident['layers'].index(name)}_") for name in meta["layers_seen"]}
    return int(meta["next_batch"]), results, [tuple(s) for s in meta["skipped"]]


def check_model(model: nn.Module) -> None:
    """A clear error, before any work, for a model the atlas cannot read: it hooks PyTorch modules
    (a Keras model: :func:`convscope.project.project_images` shows its units on given images; a
    TorchScript model hides its layers)."""
    check_torch_modules(model, "the dataset atlas",
                        "For a Keras model, show a channel's strongest units on your images with `convscope project "
                        "MODEL IMAGES --layer L --channel C --top K`, or load a PyTorch version of the model.")


def check_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    """The layer names (resolved, de-duplicated); a clear error for a model the atlas cannot read
    (:func:`check_model`), for no layer or an unknown one."""
    check_model(model)
    names = list(dict.fromkeys(layers))
    if not names:
        raise ConvscopeError("no layers to mine", "Name them, e.g. --layers features.0,features.3.")
    for name in names:
        resolve_layer(model, name)
    return names


class _Done(BaseException):
    """Raised by the last mined layer's hook to end the forward pass there."""


class _Recorder:
    """Forward hooks folding each layer's output into its TopK (hooks removed by :meth:`close`)."""

    def __init__(self, model: nn.Module, layers: list[str], k: int, results: dict[str, TopK], per_image: bool) -> None:
        self.k, self.results, self.ids, self.names = k, results, np.zeros(0, np.int64), layers
        self.per_image = per_image
        self.seen: set[str] = set()
        self.stop_early = False  # after one whole forward pass has shown no layer runs twice
        self.handles = [resolve_layer(model, name).register_forward_hook(self._hook(name)) for name in layers]

    def _hook(self, name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if name in self.seen:
                raise ConvscopeError(f"layer {name!r} ran twice in one forward pass (a reused module)",
                                     "Mine a layer that runs once, e.g. its parent block.")
            self.seen.add(name)
            if not isinstance(output, Tensor) or output.dim() < 3:
                shape = list(output.shape) if isinstance(output, Tensor) else type(output).__name__
                raise ConvscopeError(f"layer {name!r} has output {shape}, without spatial positions",
                                     "Mine convolutional layers (output [N, C, H, W]); for a linear layer "
                                     "rank whole images instead.")
            if name not in self.results:
                self.results[name] = TopK(output.shape[1], self.k, tuple(output.shape[2:]), per_image=self.per_image)
            self.results[name].update(output, self.ids)
            if self.stop_early and len(self.seen) == len(self.names):
                raise _Done

        return hook

    def run(self, model: nn.Module, x: Tensor, ids: np.ndarray) -> None:
        self.ids, self.seen = ids, set()
        try:
            model(x)
        except _Done:
            pass
        missing = [name for name in self.names if name not in self.seen]
        if missing:
            raise ConvscopeError(f"layer {missing[0]!r} did not run in the forward pass",
                                 "Pick layers the model's forward actually calls.")
        self.stop_early = True

    def close(self) -> None:
        while self.handles:
            self.handles.pop().remove()


def mine(model: nn.Module, data: Any, layers: Sequence[str], *, k: int = 9, batch_size: int = 64,  # noqa: ANN401
         out: str | Path | None = None, resume: bool = False, preprocess: Preprocess | None = None,
         checkpoint_every: int | None = None, progress: bool = False, rank: int = 0, world: int = 1,
         model_name: str | None = None, on_batch: Callable[[int], None] | None = None,
         per_image: bool = True) -> Mined:
    """Mine the top-``k`` activations of every channel of ``layers`` over ``data`` (see module doc).

    ``per_image=True`` (the Zeiler-Fergus figure) keeps each channel's k strongest *images*, each
    with its strongest unit; ``False`` keeps the k strongest units, several maybe from one image.

    ``on_batch(b)`` is called after batch ``b`` (and its checkpoint, if due) - a test hook.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConvscopeError(f"k={k!r} must be a positive int", "k is how many top activations to keep, e.g. 9.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConvscopeError(f"batch_size={batch_size!r} must be a positive int", "Use e.g. batch_size=64.")
    names = check_layers(model, layers)
    source = open_source(data, preprocess)
    if len(source) == 0:
        raise ConvscopeError("the data set holds no images", "Give a folder with images or shapes:N with N >= 1.")
    ident = identity(model, source, names, k, batch_size, world, model_name, bool(per_image))
    folder = Path(out) if out is not None else None
    start, results, skipped = 0, {}, []
    if folder is not None:
        stored = read_manifest(folder)
        if stored is not None and not resume:
            raise ConvscopeError(f"{str(folder)!r} already holds an atlas",
                                 "Pass --resume to reuse it, or choose a new --out folder.")
        if resume:
            if stored is not None:
                check_same(stored, ident, folder)
            loaded = _load(folder, rank, ident)
            if loaded is not None:
                start, results, skipped = loaded
        elif _checkpoint_path(folder, rank).exists():
            raise ConvscopeError(f"{str(folder)!r} holds an unfinished mining run",
                                 "Pass --resume to continue it, or choose a new --out folder.")
    count = -(-len(source) // batch_size)
    mine_batches = [b for b in range(start, count) if b % world == rank]
    device = model_device(model)
    recorder = _Recorder(model, names, k, results, bool(per_image))
    bar = _progress(progress, sum(min(batch_size, len(source) - b * batch_size) for b in mine_batches))
    last = time.monotonic()
    try:
        with eval_mode(model), torch.inference_mode():
            for done, b in enumerate(mine_batches, 1):
                batch = source.batch(b * batch_size, min((b + 1) * batch_size, len(source)))
                skipped += batch.skipped
                if len(batch.index):
                    recorder.run(model, batch.tensor.to(device), batch.index)
                bar.update(len(batch.index) + len(batch.skipped))
                due = (done % checkpoint_every == 0) if checkpoint_every else time.monotonic() - last > 30
                if folder is not None and (due or done == len(mine_batches)):
                    _save(folder, rank, ident, b + 1, results, skipped)
                    last = time.monotonic()
                if on_batch is not None:
                    on_batch(b)
    finally:
        recorder.close()
        bar.close()
    if len(results) < len(names) and world == 1:
        raise ConvscopeError("none of the images could be read",
                             "Check the files: " + "; ".join(f"{n}: {r}" for _, n, r in skipped[:5]))
    return Mined(results, ident, skipped, len(mine_batches))


def _progress(enabled: bool, total: int) -> Any:  # noqa: ANN401
    """A tqdm bar (images/s, ETA) on stderr, or a silent stand-in."""
    if enabled:
        try:
            from tqdm import tqdm

            return tqdm(total=total, unit="img", desc="mining", file=sys.stderr, dynamic_ncols=True)
        except ImportError:  # pragma: no cover - tqdm is optional
            pass

    class _Quiet:
        def update(self, _n: int) -> None: ...
        def close(self) -> None: ...

    return _Quiet()


__all__ = ["Mined", "check_layers", "identity", "mine"]
