"""The prepared cache: its file layout, THE rule for "is this folder a cache", and opening one.

Layout (docs/architecture.md), written by ``cxrdx.data.prepare``:

- ``CACHE/images.npy``: (N, S, S) uint8, ``round(255 * letterbox(read_image(path), S))``.
  Resize is *letterbox* (scale the longer side, pad with black): a centre crop would
  cut off apices and costophrenic angles, where effusions and pneumothoraces show.
- ``CACHE/index.csv``: the label table of the images that were read, plus ``row``
  (into images.npy) and ``split`` (the stem of the CSV each row came from). Finding
  cells are 1 / 0 / -1 (uncertain, kept raw) / -2 (CheXpert / MIMIC-CXR "not mentioned",
  ``generic.NOT_MENTIONED``, kept raw) / blank (unlabelled); ``cache.json`` ``findings``
  lists the findings the cache labels. ``open_cache(uncertain=..., blank=...)`` applies
  both policies when the cache is opened, so one cache serves ``--uncertain ignore|zeros|ones``
  and ``--blank negative|unlabelled``. Caches from before ``findings`` existed label NIH's 14.
- ``CACHE/cache.json``: size, resize mode, counts per split, how many listed images
  were not cached (each, with its reason, in ``CACHE/not_cached.csv``; left out of
  index.csv and images.npy), and ``paths``: index.csv's ``path`` is relative to
  ``images_dir`` (``open_cache`` joins them) or absolute.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdx.data.generic import DEFAULT_BLANK, apply_blank, check_blank
from cxrdx.data.loaders import CacheBatches, _gather
from cxrdx.data.origin import Origin, dataset_origin
from cxrdx.errors import DataError
from cxrdx.labels import ALL_FINDINGS, FINDINGS

FORMAT_VERSION = 1
IMAGES_FILE = "images.npy"
INDEX_FILE = "index.csv"
INFO_FILE = "cache.json"
DONE_FILE = "done.npy"
PLAN_FILE = ".prepare.json"


def is_cache(path: str | os.PathLike) -> bool:
    """True for a folder `cxrdx prepare` wrote into, finished or not.

    Deliberately loose: an unfinished or damaged cache counts, so callers hand it to
    ``open_cache`` and the user reads *why* it cannot be opened (interrupted, corrupt)
    instead of being told it is "not a label CSV".
    """
    path = Path(path)
    return path.is_dir() and any(
        (path / name).exists() for name in (INFO_FILE, IMAGES_FILE, INDEX_FILE, PLAN_FILE)
    )


@dataclass
class PreparedCache:
    """An opened cache: ``images`` is the whole (N, S, S) memmap; ``index`` may be a subset of its rows."""

    path: Path
    images: np.ndarray
    index: pd.DataFrame
    size: int
    info: dict
    findings: tuple[str, ...] = FINDINGS  # the findings this cache labels (ALL_FINDINGS order)

    @property
    def origin(self) -> Origin:
        """What the dataset is (``cache.json``'s ``origin``); caches made before origins were recorded: looked for again."""
        recorded = self.info.get("origin")
        if recorded:
            return Origin.from_json(recorded, f"{self.path / INFO_FILE}: origin")
        return dataset_origin(self.info.get("sources") or [self.path], self.info.get("images_dir"))

    @property
    def splits(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.index["split"].value_counts(sort=False).items()}

    def subset(self, split: str) -> PreparedCache:
        """The rows of one split (same memmap)."""
        if split not in set(self.index["split"]):
            counts = ", ".join(f"{k}: {v}" for k, v in self.splits.items()) or "none"
            raise DataError(
                f"{self.path}: the cache has no images in split {split!r} (splits: {counts}); "
                f"prepare it with --labels including {split}.csv"
            )
        return PreparedCache(
            self.path,
            self.images,
            self.index[self.index["split"] == split].reset_index(drop=True),
            self.size,
            self.info,
            self.findings,
        )

    @property
    def labels(self) -> np.ndarray:
        """(n, len(findings)) float32 labels in ``findings`` order: 1 / 0 / NaN (unlabelled)."""
        return self.index[list(self.findings)].to_numpy(dtype=np.float32)

    def labels_for(self, names) -> np.ndarray:
        """(n, len(names)) float32: this cache's labels for ``names``; NaN for findings it does not label."""
        out = np.full((len(self.index), len(names)), np.nan, dtype=np.float32)
        for j, name in enumerate(names):
            if name in self.findings:
                out[:, j] = self.index[name].to_numpy(dtype=np.float32)
        return out

    @property
    def rows(self) -> np.ndarray:
        return self.index["row"].to_numpy(dtype=np.int64)

    def squares(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 (B, S, S) for the given positions in ``index``."""
        return _gather(self.images, self.rows[np.asarray(positions, dtype=np.int64)])

    def batches(self, names=None) -> CacheBatches:
        """Batches with labels for ``names`` (default: this cache's findings)."""
        labels = self.labels if names is None else self.labels_for(names)
        return CacheBatches(self.path / IMAGES_FILE, self.rows, labels)


def open_cache(
    path: str | os.PathLike, uncertain: str = "ignore", blank: str = DEFAULT_BLANK
) -> PreparedCache:
    """Open a finished cache, or raise DataError saying what is wrong and to run `cxrdx prepare`.

    ``uncertain`` and ``blank`` are the label policies (``tables.read_labels``) applied to the raw cells.
    """
    path = Path(path)
    hint = f"create it with `cxrdx prepare --labels train.csv val.csv --images DIR --out {path}`"
    if not path.is_dir():
        raise DataError(f"{path}: no such cache folder; {hint}")
    if not (path / INFO_FILE).is_file():
        if (path / PLAN_FILE).is_file():
            raise DataError(
                f"{path}: this cache is unfinished (prepare was interrupted); rerun the same `cxrdx prepare` to finish it"
            )
        raise DataError(f"{path}: not a cxrdx cache (no {INFO_FILE}); {hint}")
    try:
        info = json.loads((path / INFO_FILE).read_text())
        size = int(info["size"])
        index = pd.read_csv(
            path / INDEX_FILE, dtype={"image": str, "patient": str, "split": str, "path": str}
        )
        images = np.load(path / IMAGES_FILE, mmap_mode="r")
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError, pd.errors.ParserError) as exc:
        raise DataError(
            f"{path}: the cache is corrupt or incomplete ({exc}); rebuild it: {hint} --overwrite"
        ) from None
    named = info.get("findings")
    findings = tuple(f for f in ALL_FINDINGS if f in named) if named else FINDINGS
    missing = [c for c in ("row", "split", *findings) if c not in index.columns]
    if missing:
        raise DataError(
            f"{path}/{INDEX_FILE}: missing columns {missing}; rebuild the cache: {hint} --overwrite"
        )
    if images.ndim != 3 or images.shape[1:] != (size, size) or images.dtype != np.uint8:
        raise DataError(
            f"{path}/{IMAGES_FILE}: shape {images.shape} {images.dtype} does not match size {size} in {INFO_FILE}; "
            f"rebuild the cache: {hint} --overwrite"
        )
    if len(index) and (index["row"].min() < 0 or index["row"].max() >= images.shape[0]):
        raise DataError(
            f"{path}/{INDEX_FILE}: rows point outside {IMAGES_FILE}; rebuild the cache with --overwrite"
        )
    if uncertain not in ("ignore", "zeros", "ones", "keep"):
        raise DataError(f"uncertain policy {uncertain!r}: choose ignore, zeros or ones")
    check_blank(blank)
    for name in findings:
        v = pd.to_numeric(index[name], errors="coerce").to_numpy(dtype=np.float32)
        if not named:
            v = np.nan_to_num(v, nan=0.0)  # an old cache: NIH's 14, blank meant 0
        apply_blank(v, blank)
        if uncertain != "keep":
            v[v == -1] = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}[uncertain]
        index[name] = v
    index["split"] = index["split"].astype(str)
    root = info.get("images_dir")
    if info.get("paths") == "relative to images_dir" and root and "path" in index.columns:
        index["path"] = [
            os.path.join(root, p)
            if isinstance(p, str) and p and not os.path.isabs(p)
            else ("" if p != p else p)
            for p in index["path"]
        ]
    return PreparedCache(path=path, images=images, index=index, size=size, info=info, findings=findings)
