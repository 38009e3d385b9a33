"""Where an atlas's images come from: random access by image index, read in batches.

- ``"shapes:N"``: the built-in Shapes dataset, N images, seed 0, through the model's preprocessing;
- ``"scenes:N"``, ``"signals:N"``, ``"volumes:N"``: the other built-in procedural data sets
  (:data:`convscope.data.SOURCES`), seed 0: scenes of several shapes through the preprocessing,
  signals ``[N, 2, 128]`` and volumes ``[N, 1, 16, 16, 16]`` as they are (no pixels to show);
- an image folder (sorted recursively; an unreadable file is skipped and listed, not fatal);
- a torch ``Dataset`` (items ``x`` or ``(x, label)``, already preprocessed) or a ``DataLoader``
  (its ``.dataset`` is used).

Image index ``i`` always means the same image (for folders: the i-th file, readable or not), so
checkpoints and shards agree on it. ``fingerprint`` identifies the data for resumes.

Example::

    src = open_source("shapes:1000", preprocess)
    batch = src.batch(0, 64)          # .tensor [n, 3, H, W], .pixels uint8 [n, H, W, 3], .index
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from convscope.errors import ConvscopeError
from convscope.images import Preprocess, image_files


@dataclass
class Batch:
    """Images ``index`` as the model sees them (``tensor``) and as a person does (``pixels``,
    uint8 [n, H, W, 3]; made on first use when the source only has tensors)."""

    index: np.ndarray
    tensor: Tensor
    display: np.ndarray | None = None
    skipped: list[tuple[int, str, str]] = field(default_factory=list)  # (index, name, reason)

    @property
    def pixels(self) -> np.ndarray:
        if self.display is None:
            self.display = display_pixels(self.tensor)
        return self.display


class Source:
    """Random access to a dataset's images."""

    def __len__(self) -> int:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A string that changes when the data does."""
        raise NotImplementedError

    def name(self, i: int) -> str:
        return f"#{i}"

    def take(self, index: np.ndarray) -> Batch:
        """The images at ``index`` (any order; unreadable ones are skipped and listed)."""
        raise NotImplementedError

    def batch(self, start: int, stop: int) -> Batch:
        return self.take(np.arange(start, stop))

    def masks(self, index: np.ndarray) -> np.ndarray | None:
        """Ground-truth object masks of the images at ``index`` (bool, one per image), or None
        when the data has none (only the built-in data sets have them)."""
        return None


class ShapesSource(Source):
    def __init__(self, n: int, preprocess: Preprocess, seed: int = 0) -> None:
        from convscope.data import Shapes

        self.shapes = Shapes(n, seed=seed, size=preprocess.crop)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.shapes)

    def fingerprint(self) -> str:
        return repr(self.shapes)

    def take(self, index: np.ndarray) -> Batch:
        if len(index) and np.array_equal(index, np.arange(index[0], index[0] + len(index))):
            pixels = self.shapes.arrays(int(index[0]), int(index[0]) + len(index))[0]
        else:
            pixels = np.stack([self.shapes.sample(int(i)).image for i in index])
        return Batch(index, self.preprocess.to_tensor(pixels), pixels)

    def masks(self, index: np.ndarray) -> np.ndarray:
        return np.stack([self.shapes.mask(int(i)) for i in index])


class ProceduralSource(Source):
    """One of the procedural data sets (``scenes``, ``signals``, ``volumes``), seed 0: pictures
    (scenes) go through the preprocessing, other samples are the model's input as they are."""

    def __init__(self, kind: str, n: int, preprocess: Preprocess) -> None:
        from convscope.data import SOURCES

        self.data = SOURCES[kind](n, seed=0)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.data)

    def fingerprint(self) -> str:
        return repr(self.data)

    def take(self, index: np.ndarray) -> Batch:
        samples = [self.data.sample(int(i)) for i in index]
        if samples and "image" in samples[0]:
            pixels = np.stack([s["image"] for s in samples])
            return Batch(index, self.preprocess.to_tensor(pixels), pixels)
        return Batch(index, torch.from_numpy(np.stack([s["x"] for s in samples])))

    def masks(self, index: np.ndarray) -> np.ndarray:
        return np.stack([self.data.mask(int(i)) for i in index])


class FolderSource(Source):
    def __init__(self, folder: Path, preprocess: Preprocess) -> None:
        if not folder.is_dir():
            raise ConvscopeError(f"{str(folder)!r} is not a folder", "Give an image folder or shapes:N.")
        try:
            self.files = image_files([folder])
        except ConvscopeError as exc:
            raise ConvscopeError(f"the data folder {str(folder)!r} holds no images",
                                 "Point to a folder with .png/.jpg files, or use shapes:N.") from exc
        self.root = folder
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{f.relative_to(self.root)}\0{f.stat().st_size}\n".encode())
        return f"folder:{len(self.files)}:{h.hexdigest()[:16]}"

    def name(self, i: int) -> str:
        return str(self.files[i].relative_to(self.root))

    def take(self, index: np.ndarray) -> Batch:
        from PIL import Image, UnidentifiedImageError

        good, pixels, skipped = [], [], []
        for i in index:
            try:
                with Image.open(self.files[i]) as im:
                    im.load()
                    pixels.append(self.preprocess.pixels(im))
                good.append(i)
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                skipped.append((int(i), self.name(int(i)), f"{type(exc).__name__}: {exc}"))
        size = self.preprocess.crop
        stack = np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)
        return Batch(np.asarray(good, dtype=np.int64), self.preprocess.to_tensor(stack), stack, skipped)


class DatasetSource(Source):
    def __init__(self, dataset: Any) -> None:  # noqa: ANN401
        self.dataset = dataset
        if len(dataset) == 0:
            raise ConvscopeError("the dataset is empty", "Give a dataset with at least one image.")

    def __len__(self) -> int:
        return len(self.dataset)

    def fingerprint(self) -> str:
        first = self._item(0)
        digest = hashlib.sha256(first.numpy().tobytes()).hexdigest()[:16]
        return f"{type(self.dataset).__name__}:{len(self.dataset)}:{digest}"

    def _items(self, index: np.ndarray) -> Tensor:
        if isinstance(self.dataset, torch.utils.data.TensorDataset):  # one gather, not n lookups
            x = self.dataset.tensors[0][torch.as_tensor(index, dtype=torch.long)]
            if x.dim() == 4:
                return x.detach().float()
        return torch.stack([self._item(int(i)) for i in index])

    def _item(self, i: int) -> Tensor:
        item = self.dataset[int(i)]
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, Tensor) or x.dim() != 3:
            raise ConvscopeError(f"dataset item {i} is not an image tensor [C, H, W]",
                                 "Give a Dataset whose items are tensors or (tensor, label) pairs.")
        return x.detach().float()

    def take(self, index: np.ndarray) -> Batch:
        return Batch(index, self._items(index))


def display_pixels(x: Tensor) -> np.ndarray:
    """Preprocessed images ``[n, C, H, W]`` as uint8 RGB for display (min-max per image)."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    img = ((x - lo) / (hi - lo).clamp_min(1e-12) * 255).round().byte()
    img = img.expand(-1, 3, -1, -1) if img.shape[1] == 1 else img[:, :3]
    return img.permute(0, 2, 3, 1).cpu().numpy()


def open_source(data: Any, preprocess: Preprocess | None = None) -> Source:  # noqa: ANN401
    """A :class:`Source` for ``"shapes:N"`` (or ``scenes:N``, ``signals:N``, ``volumes:N``), a
    folder path, a ``Dataset`` or a ``DataLoader``."""
    if isinstance(data, Source):
        return data
    if isinstance(data, torch.utils.data.DataLoader):
        data = data.dataset
    if isinstance(data, (str, Path)):
        text = str(data)
        kind, colon, count = text.partition(":")
        if colon and kind in ("shapes", "scenes", "signals", "volumes"):
            if not count.isdigit() or int(count) < 1:
                raise ConvscopeError(f"bad data spec {text!r}", f"Write {kind}:N with N >= 1, e.g. {kind}:1000.")
            if preprocess is None:
                from convscope import zoo

                preprocess = zoo.preset("shapes-vgg" if kind == "shapes" else "shapes-detector")
            return ShapesSource(int(count), preprocess) if kind == "shapes" else \
                ProceduralSource(kind, int(count), preprocess)
        if preprocess is None:
            raise ConvscopeError("an image folder needs the model's preprocessing",
                                 "Pass preprocess=load_model(...).preprocess.")
        path = Path(text)
        if not path.exists():
            raise ConvscopeError(f"no such data folder: {text!r}", "Give an image folder or shapes:N.")
        return FolderSource(path, preprocess)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return DatasetSource(data)
    raise ConvscopeError(f"cannot read images from a {type(data).__name__}",
                         "Give an image folder, 'shapes:N', a torch Dataset or a DataLoader.")
