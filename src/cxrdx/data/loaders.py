"""Batch sources for training: whole batches of uint8 squares from the cache, or decoded from files.

Torch-free, so `prepare` workers stay light: ``CacheBatches`` hands out whole
batches of uint8 squares with one fancy index into the memmap; flips and
normalisation happen afterwards on the batch tensor, on the GPU when there is one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from cxrdx.errors import DataError, ImageReadError
from cxrdx.imaging.preprocessing import Preprocessing


def to_square_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """A [0, 1] gray image -> (size, size) uint8 letterboxed square, as stored in the cache.

    ``Preprocessing.square`` of our own recipe (what ``cxrdx train`` records in the checkpoint):
    the very function inference calls, so training and inference inputs are identical to the bit.
    """
    square, _ = Preprocessing(size=size).square(image)
    return square


def load_square(path: str, size: int) -> np.ndarray:
    """Decode one file with read_image and letterbox it (raises ImageReadError); a large JPEG is
    decoded at the reduced DCT scale our recipe allows (cxrdx.imaging.jpeg)."""
    from cxrdx.imaging.read import read_image

    image, _ = read_image(path, target=Preprocessing(size=size).decode_target)
    return to_square_uint8(image, size)


def _gather(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """images[rows] read in ascending row order (sequential on disk), returned in the asked order."""
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), *images.shape[1:]), dtype=np.uint8)
    out[order] = images[rows[order]]
    return out


class CacheBatches:
    """Map-style source for a DataLoader with a BatchSampler: ``source[list_of_positions]`` -> one batch.

    Returns (uint8 (B, S, S), float32 (B, 14)). Whole-batch indexing costs one
    memmap gather per batch instead of one Python call per image. The memmap is
    opened lazily in each worker (a memmap does not pickle well).
    """

    def __init__(self, images_path: str | os.PathLike, rows: np.ndarray, labels: np.ndarray) -> None:
        self.images_path = str(images_path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.float32)
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}

    def squares(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        return _gather(self._images, self.rows[np.asarray(positions, dtype=np.int64)])

    def __getitem__(self, positions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        positions = np.asarray(positions, dtype=np.int64)
        return self.squares(positions), self.labels[positions]


class FileBatches:
    """Same interface as CacheBatches, decoding image files on the fly (no cache; slower)."""

    def __init__(self, paths: Sequence[str], labels: np.ndarray, size: int) -> None:
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.float32)
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.paths)

    def squares(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        out = np.empty((len(positions), self.size, self.size), dtype=np.uint8)
        for i, pos in enumerate(np.asarray(positions, dtype=np.int64)):
            path = self.paths[pos]
            try:
                out[i] = load_square(path, self.size)
            except ImageReadError as exc:
                raise DataError(
                    f"{exc}; training from CSV decodes on the fly and stops at an unreadable image: "
                    "run `cxrdx prepare` (it lists and skips them) and train from the cache"
                ) from None
        return out

    def __getitem__(self, positions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        positions = np.asarray(positions, dtype=np.int64)
        return self.squares(positions), self.labels[positions]


def pixel_stats(
    source: CacheBatches | FileBatches, max_images: int = 2000, batch: int = 64
) -> tuple[float, float]:
    """Mean and std of [0, 1] pixels over up to ``max_images`` evenly spaced images (deterministic)."""
    n = len(source)
    if n == 0:
        raise DataError("cannot compute normalisation statistics from an empty training split")
    positions = np.unique(np.linspace(0, n - 1, num=min(n, max_images)).round().astype(np.int64))
    total = total_sq = count = 0.0
    for start in range(0, len(positions), batch):
        x = source.squares(positions[start : start + batch]).astype(np.float64) / 255.0
        total += float(x.sum())
        total_sq += float(np.square(x).sum())
        count += x.size
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))
    return float(mean), max(std, 1e-3)


class ConcatBatches:
    """Several batch sources (one per dataset) as one: positions run through them in order.

    ``labels`` is the stacked (N, C) float32 matrix (NaN where a dataset does not label a
    finding); a batch may mix datasets. ``cache_only``: every part is a CacheBatches.
    """

    def __init__(self, parts: Sequence[CacheBatches | FileBatches]) -> None:
        if not parts:
            raise DataError("no training data sources to combine")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.labels = np.concatenate([p.labels for p in self.parts]).astype(np.float32)
        self.cache_only = all(isinstance(p, CacheBatches) for p in self.parts)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def squares(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        part = np.searchsorted(self.offsets, positions, side="right") - 1
        out: np.ndarray | None = None
        for k in np.unique(part):
            sel = np.flatnonzero(part == k)
            got = self.parts[k].squares(positions[sel] - self.offsets[k])
            if out is None:
                out = np.empty((len(positions), *got.shape[1:]), dtype=np.uint8)
            out[sel] = got
        assert out is not None
        return out

    def __getitem__(self, positions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        positions = np.asarray(positions, dtype=np.int64)
        return self.squares(positions), self.labels[positions]
