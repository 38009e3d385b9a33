"""An atlas on disk: a folder with ``manifest.json`` and arrays in ``.npz`` files.

Layout::

    manifest.json        model name + hash, layers, k, data fingerprint, convscope version,
                         projection rules, skipped images, and the SHA-256 of every array file
    topk.npz             per layer i: L{i}_values/_images/_positions [C, k], L{i}_spatial
    proj-<method>.npz    per layer i: L{i} [C, k, 3, S, S] float32 projections cropped to the boxes
    patches.npz          per layer i: L{i}_boxes [C, k, 4] receptive-field boxes (y0, y1, x0, x1)
                         and L{i}_patches [C, k, S, S, 3] uint8 image patches (S: largest field)
    checkpoint-r<R>.npz  (+ .json) an unfinished mining run of rank R (see convscope.atlas.mine)

Every file is written atomically and the manifest last, so a crash never leaves a store that
opens as valid; :func:`open_atlas` checks each array file against its checksum.

Example::

    atlas = convscope.atlas.open("atlas-out")
    atlas.topk("features.3").values[5]       # the k strongest activations of channel 5
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope.atlas.topk import TopK
from convscope.errors import ConvscopeError
from convscope.fileio import write_atomic

MANIFEST = "manifest.json"
FORMAT = 1


def model_hash(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of the model's state dict: names, dtypes, shapes, bytes."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{list(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
    return h.hexdigest()[:16]


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``np.savez`` into bytes."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_arrays(folder: Path, name: str, arrays: dict[str, np.ndarray]) -> str:
    """Write ``folder/name`` atomically; returns its SHA-256 for the manifest."""
    payload = npz_bytes(arrays)
    write_atomic(folder / name, payload)
    return hashlib.sha256(payload).hexdigest()


def topk_arrays(layers: list[str], results: dict[str, TopK]) -> dict[str, np.ndarray]:
    return {key: value for i, name in enumerate(layers) for key, value in results[name].arrays(f"L{i}_").items()}


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest, or None when there is none (a fresh or unfinished store)."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ConvscopeError(f"the atlas manifest {str(path)!r} is not valid JSON ({exc})",
                             "Delete the folder and mine again.") from None


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())


@dataclass
class Atlas:
    """An opened atlas folder (see the module doc)."""

    path: Path
    manifest: dict[str, Any]

    @property
    def layers(self) -> list[str]:
        return list(self.manifest["layers"])

    @property
    def k(self) -> int:
        return int(self.manifest["k"])

    def _load(self, name: str) -> np.lib.npyio.NpzFile:
        path = self.path / name
        expected = self.manifest["files"].get(name)
        if expected is None:
            raise ConvscopeError(f"the atlas at {str(self.path)!r} has no {name!r}",
                                 f"It holds {sorted(self.manifest['files'])}; mine with the options that make it.")
        try:
            payload = path.read_bytes()
        except OSError as exc:
            raise ConvscopeError(f"cannot read {str(path)!r} ({exc})", "Mine the atlas again.") from None
        if hashlib.sha256(payload).hexdigest() != expected:
            raise ConvscopeError(f"{str(path)!r} does not match its checksum in the manifest (damaged or "
                                 "half-written)", "Mine the atlas again (--resume reuses finished work).")
        return np.load(io.BytesIO(payload))

    def _index(self, layer: str) -> int:
        if layer not in self.layers:
            raise ConvscopeError(f"the atlas has no layer {layer!r}", f"Its layers: {self.layers}.")
        return self.layers.index(layer)

    def topk(self, layer: str) -> TopK:
        """The top-k accumulator of ``layer``."""
        return TopK.from_arrays(self._load("topk.npz"), f"L{self._index(layer)}_")

    def projections(self, layer: str, method: str = "deconvnet") -> np.ndarray:
        """``[C, k, 3, S, S]`` projections of ``layer``'s top activations by ``method``, cropped to
        their receptive-field boxes like :meth:`patches` (zero outside the field)."""
        return self._load(f"proj-{method}.npz")[f"L{self._index(layer)}"]

    def boxes(self, layer: str) -> np.ndarray:
        """``[C, k, 4]`` receptive-field boxes ``(y0, y1, x0, x1)`` of the top activations."""
        return self._load("patches.npz")[f"L{self._index(layer)}_boxes"]

    def patches(self, layer: str) -> np.ndarray:
        """``[C, k, S, S, 3]`` uint8 image patches under the receptive fields (S = largest field)."""
        return self._load("patches.npz")[f"L{self._index(layer)}_patches"]


def open_atlas(path: str | Path) -> Atlas:
    """Open a finished atlas folder; a missing or unfinished one is a clear error."""
    folder = Path(path)
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("complete") is not True:
        state = "an unfinished mining run" if any(folder.glob("checkpoint-*.npz")) else "no atlas"
        raise ConvscopeError(f"{str(folder)!r} holds {state}",
                             "Run `convscope atlas MODEL DATA --out DIR` (with --resume to finish a run).")
    if manifest.get("format") != FORMAT:
        raise ConvscopeError(f"atlas format {manifest.get('format')!r} is not {FORMAT}", "Mine the atlas again.")
    return Atlas(folder, manifest)
