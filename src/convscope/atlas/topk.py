"""A streaming, mergeable top-k accumulator: the k strongest activations of every channel.

Each entry is ``(value, image, position)``; ``position`` is the flat spatial index
``y * W + x`` of the unit in its feature map. The order is total and fixed:

    value descending, then image index ascending, then position ascending

so the k entries kept never depend on batch sizes, shard boundaries or merge order (with
``per_image=True``, the Zeiler-Fergus figure's rule, each image holds at most one of a channel's
k slots: its strongest unit there, the first position among equals; the same order then ranks
the images):
``merge(a, merge(b, c)) == merge(merge(a, b), c)`` and ``merge(a, b) == merge(b, a)``.
Within a batch only units at or above a threshold are candidates (see :meth:`TopK.update`);
when ties make too many, the order is made exact with one int64 key per activation,
``key = sortable(value) << 32 | (2**32 - 1 - flat_index)``, and ``torch.topk`` of the keys
(no ties are possible, so the unstable top-k is exact).

Example::

    acc = TopK(channels=16, k=9, spatial=(32, 32), per_image=True)
    acc.update(acts, images=0)               # acts: [N, 16, 32, 32]
    acc = acc.merge(other_shard)
    acc.values[c], acc.images[c], acc.positions[c]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from convscope.errors import ConvscopeError

EMPTY = np.iinfo(np.int64).max  # the image/position of an unused slot: sorts after every real one
_LOW = (1 << 32) - 1
_FAST_LIMIT = 1 << 16  # most candidate units per batch for the threshold fast path
_INNER = 32  # narrowest inner axis for the channels-last peak reduction (see _line_peaks)


def sortable_int(values: Tensor) -> Tensor:
    """float32 -> int64 with the same order (``-0.0`` counts as ``+0.0``).

    Flip the 31 magnitude bits of negative numbers so bigger floats give bigger ints.
    """
    bits = (values.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(torch.int64)


def _line_peaks(acts: Tensor) -> np.ndarray:
    """``max`` along the last spatial axis, as a float32 host array ``[N, C, R]`` for ``acts``
    ``[N, C, *spatial]``: one value per line (``R`` = product of the other spatial sizes; 1
    without spatial axes); NaN propagates.

    One read of the activations on their device for the usual layouts: contiguous, a max over
    the inner axis; channels-last (``[N, R, L, C]`` in memory), a max over the ``L`` axis with
    ``g`` positions folded into the inner one (``[N, R, L/g, g*C]``; the max over the ``g``
    groups is taken on the host) so that it is at least :data:`_INNER` floats wide - the
    reduction kernel is slow on narrow inner axes (C=16). Anything else is made contiguous first.
    """
    n, c = acts.shape[:2]
    length = acts.shape[-1] if acts.dim() > 2 else 1
    lines = math.prod(acts.shape[2:-1]) if acts.dim() > 2 else 1
    last = acts.movedim(1, -1)
    if not acts.is_contiguous() and acts.dim() > 2 and last.is_contiguous():  # channels-last
        g = math.gcd(length, -(-_INNER // c))
        if g * c >= _INNER:
            folded = last.reshape(n, lines, length // g, g * c).amax(2)  # [N, R, g*C]
            grouped = folded.float().cpu().numpy().reshape(n, lines, g, c).max(2)  # [N, R, C]
            return np.ascontiguousarray(grouped.transpose(0, 2, 1))
    return acts.contiguous().view(n, c, lines, length).amax(3).float().cpu().numpy()


def _take_lines(acts: Tensor, rows: np.ndarray, chans: np.ndarray, line: np.ndarray) -> np.ndarray:
    """``acts[rows, chans, line]`` of ``acts`` ``[N, C, R, L]`` as a float32 host array ``[m, L]``.

    On the CPU through a NumPy view: a small gather, with none of the thread-pool round trip
    a torch kernel makes (milliseconds on a busy machine).
    """
    if acts.device.type == "cpu" and acts.dtype in (torch.float32, torch.float64, torch.float16):
        return acts.numpy()[rows, chans, line].astype(np.float32, copy=False)
    index = torch.from_numpy(np.stack([rows, chans, line])).to(acts.device)
    return acts[tuple(index)].float().cpu().numpy()


@dataclass
class TopK:
    """The k best ``(value, image, position)`` per channel: arrays ``[channels, k]``, best first;
    with ``per_image`` at most one entry per image and channel (its peak).

    Unused slots hold ``value=-inf, image=position=EMPTY``; :meth:`count` says how many are used.
    """

    channels: int
    k: int
    spatial: tuple[int, ...]
    values: np.ndarray = None  # type: ignore[assignment]
    images: np.ndarray = None  # type: ignore[assignment]
    positions: np.ndarray = None  # type: ignore[assignment]
    per_image: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConvscopeError(f"k={self.k!r} must be a positive int", "k is how many top activations to keep, e.g. k=9.")
        self.spatial = tuple(int(s) for s in self.spatial)
        shape = (self.channels, self.k)
        if self.values is None:
            self.values = np.full(shape, -np.inf, dtype=np.float32)
            self.images = np.full(shape, EMPTY, dtype=np.int64)
            self.positions = np.full(shape, EMPTY, dtype=np.int64)

    def count(self) -> int:
        """How many slots per channel are filled (the same for every channel)."""
        return int((self.images[0] != EMPTY).sum()) if self.channels else 0

    def coords(self) -> np.ndarray:
        """Positions as spatial coordinates ``[C, k, len(spatial)]`` (``-1`` for unused slots)."""
        flat = np.where(self.images == EMPTY, 0, self.positions)
        out = np.stack(np.unravel_index(flat, self.spatial), axis=-1) if self.spatial else flat[..., None] * 0
        out[self.images == EMPTY] = -1
        return out

    def update(self, acts: Tensor, images: int | np.ndarray) -> None:
        """Fold in a batch ``acts`` [N, C, *spatial]; sample ``i`` is image ``images[i]`` (an int
        ``images`` means ``images + i``; an array must be increasing).

        Fast path: with ``T_c`` the larger of the current k-th best and the k-th largest of the
        images' peaks (k distinct units reach it), only units ``>= T_c`` can enter the top-k, and
        only in images whose peak reaches ``T_c``, and there only on lines (rows of the map)
        whose maximum reaches it; they are few unless very many units tie at ``T_c`` (a channel
        of zeros), and then the exact key path ranks every unit. With ``per_image`` only the
        images' peaks are candidates, one per (image, channel).
        """
        if acts.dim() < 2 or acts.shape[1] != self.channels or tuple(acts.shape[2:]) != self.spatial:
            raise ConvscopeError(f"activations of shape {list(acts.shape)} do not fit a top-k of "
                                 f"{self.channels} channels x {list(self.spatial)}",
                                 "Feed every batch from the same layer and input size.")
        n, per_image = acts.shape[0], int(np.prod(self.spatial)) if self.spatial else 1
        ids = np.arange(images, images + n) if isinstance(images, (int, np.integer)) else np.asarray(images)
        if len(ids) != n or np.any(np.diff(ids) <= 0):
            raise ConvscopeError(f"got {len(ids)} image ids for a batch of {n}, or ids not increasing",
                                 "Give one increasing image index per sample.")
        acts = acts.detach()
        # one pass over the activations on their device; the rest works on small host arrays
        line_peak = _line_peaks(acts)  # [n, C, R]; NaN propagates
        peak = line_peak.max(2)  # [n, C]
        if np.isnan(peak).any():
            raise ConvscopeError("the layer produced NaN activations", "Check the model and the input data.")
        threshold = self.values[:, -1]  # the current k-th best
        if n >= self.k:  # k images' peaks are k distinct units: the k-th best is at least their k-th
            threshold = np.maximum(threshold, -np.partition(-peak, self.k - 1, axis=0)[self.k - 1])
        length = per_image // line_peak.shape[2]
        lines = acts.reshape(n, self.channels, line_peak.shape[2], length)
        if self.per_image:
            self._absorb_peaks(lines, ids, line_peak, peak, threshold)
            return
        rows, chans, line = np.nonzero(line_peak >= threshold[None, :, None])  # only these lines can contribute
        on_lines = _take_lines(lines, rows, chans, line)
        mask = on_lines >= threshold[chans, None]  # [m, L]
        if on_lines.size > _FAST_LIMIT and np.count_nonzero(mask) > _FAST_LIMIT:
            # very many ties at the threshold (e.g. a channel of zeros)
            self._absorb_all(acts.reshape(n, self.channels, per_image), ids)
            return
        s, p = np.nonzero(mask)
        self._absorb(chans[s], on_lines[s, p], ids[rows[s]], line[s] * length + p)

    def _absorb_peaks(self, lines: Tensor, ids: np.ndarray, line_peak: np.ndarray, peak: np.ndarray,
                      threshold: np.ndarray) -> None:
        """``per_image``: each (image, channel) whose peak reaches the threshold enters with its
        peak, at the first line holding it and the first position on that line."""
        rows, chans = np.nonzero(peak >= threshold[None, :])
        best = peak[rows, chans]
        line = np.argmax(line_peak[rows, chans] == best[:, None], axis=1)
        where = np.argmax(_take_lines(lines, rows, chans, line) == best[:, None], axis=1)
        self._absorb(chans, best, ids[rows], line * lines.shape[3] + where)

    def _absorb_all(self, acts3: Tensor, ids: np.ndarray) -> None:
        """The exact key path: rank every unit of the batch by one int64 key per activation."""
        per_image = acts3.shape[2]
        fmap = acts3.transpose(0, 1).reshape(self.channels, -1)
        if fmap.shape[1] >= 1 << 32:
            raise ConvscopeError("one batch holds more than 2**32 activations per channel",
                                 "Use a smaller batch size.")
        flat = torch.arange(fmap.shape[1], device=fmap.device, dtype=torch.int64)
        keys = (sortable_int(fmap) << 32) | (_LOW - flat)
        best = torch.topk(keys, min(self.k, fmap.shape[1]), dim=1, sorted=True).indices
        values = fmap.gather(1, best).float().cpu().numpy()
        best = best.cpu().numpy()
        chans = np.repeat(np.arange(self.channels), best.shape[1])
        self._absorb(chans, values.reshape(-1), ids[best // per_image].reshape(-1), (best % per_image).reshape(-1))

    def _absorb(self, chans: np.ndarray, values: np.ndarray, images: np.ndarray, positions: np.ndarray) -> None:
        """Keep the best k per channel of the current entries and the given ones (flat arrays)."""
        c = np.concatenate([np.repeat(np.arange(self.channels), self.k), chans])
        v = np.concatenate([self.values.reshape(-1), values.astype(np.float32)])
        i = np.concatenate([self.images.reshape(-1), images.astype(np.int64)])
        p = np.concatenate([self.positions.reshape(-1), positions.astype(np.int64)])
        idx = np.lexsort((p, i, -(v + np.float32(0.0)), c))
        c, v, i, p = c[idx], v[idx], i[idx], p[idx]
        rank = np.arange(len(c)) - np.searchsorted(c, c)  # place within its channel
        keep = rank < self.k  # every channel has >= k entries: its current (possibly empty) slots
        self.values[c[keep], rank[keep]] = v[keep]
        self.images[c[keep], rank[keep]] = i[keep]
        self.positions[c[keep], rank[keep]] = p[keep]

    def merge(self, other: TopK) -> TopK:
        """A new accumulator holding the best k of both (shards must hold disjoint images)."""
        if (other.channels, other.k, other.spatial, other.per_image) != \
                (self.channels, self.k, self.spatial, self.per_image):
            raise ConvscopeError(f"cannot merge top-k of {other.channels} channels, k={other.k}, spatial "
                                 f"{list(other.spatial)}, per_image={other.per_image} into {self.channels} "
                                 f"channels, k={self.k}, spatial {list(self.spatial)}, per_image={self.per_image}",
                                 "Merge results of the same layer, k, input size and per_image setting.")
        out = self.copy()
        out._absorb(np.repeat(np.arange(other.channels), other.k), other.values.reshape(-1),
                    other.images.reshape(-1), other.positions.reshape(-1))
        return out

    def copy(self) -> TopK:
        """An independent copy."""
        return TopK(self.channels, self.k, self.spatial, self.values.copy(), self.images.copy(), self.positions.copy(),
                    self.per_image)

    def equals(self, other: TopK) -> bool:
        """Exactly the same entries (values compared bit for bit)."""
        return (self.channels, self.k, self.spatial, self.per_image) == \
            (other.channels, other.k, other.spatial, other.per_image) and \
            np.array_equal(self.values, other.values) and np.array_equal(self.images, other.images) and \
            np.array_equal(self.positions, other.positions)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The state as named arrays (for ``np.savez``); :meth:`from_arrays` reads them back."""
        return {f"{prefix}values": self.values, f"{prefix}images": self.images,
                f"{prefix}positions": self.positions, f"{prefix}spatial": np.asarray(self.spatial, dtype=np.int64),
                f"{prefix}per_image": np.asarray(self.per_image)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray] | np.lib.npyio.NpzFile, prefix: str) -> TopK:
        values = np.asarray(arrays[f"{prefix}values"])
        per_image = bool(arrays[f"{prefix}per_image"]) if f"{prefix}per_image" in arrays else False  # older stores
        return cls(values.shape[0], values.shape[1], tuple(int(s) for s in arrays[f"{prefix}spatial"]),
                   values, np.asarray(arrays[f"{prefix}images"]), np.asarray(arrays[f"{prefix}positions"]), per_image)


def merge_all(parts: dict[str, TopK], others: dict[str, TopK]) -> dict[str, TopK]:
    """Layer-wise :meth:`TopK.merge` of two ``{layer: TopK}`` maps with the same layers."""
    if set(parts) != set(others):
        raise ConvscopeError(f"cannot merge results for layers {sorted(parts)} and {sorted(others)}",
                             "Merge shards of the same mining run.")
    return {name: acc.merge(others[name]) for name, acc in parts.items()}
