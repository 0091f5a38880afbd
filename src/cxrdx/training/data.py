"""Training data: batch sources from a prepared cache or CSV tables, the loaders, and the batch -> input step.

Data comes from a `cxrdx prepare` cache (uint8 memmap): the loader only gathers
bytes; flips, optional small affine and normalisation run on the batch tensor on the
training device (``to_input``), so augmentation costs no CPU on the GPU path. CSV
tables also work (decoded on the fly), for small experiments without a cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from cxrdx.errors import ConfigError, DataError
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.labels import FINDINGS
from cxrdx.training.augment import random_affine, random_flip
from cxrdx.training.config import TrainConfig


def load_data(cfg: TrainConfig) -> dict:
    """Training and validation batch sources from a cache (fast) or CSVs (decoded on the fly)."""
    from cxrdx.data.cache import is_cache, open_cache
    from cxrdx.data.loaders import FileBatches

    path = Path(cfg.data)
    if not path.exists():
        raise DataError(
            f"--data {path}: no such file or folder; pass a cache made by `cxrdx prepare` "
            "or a folder with train.csv and val.csv"
        )
    if is_cache(path):
        cache = open_cache(path)
        if cfg.image_size is not None and cfg.image_size != cache.size:
            raise ConfigError(
                f"--image-size {cfg.image_size} differs from the cache's {cache.size} px ({path}); "
                f"omit --image-size or prepare a cache with --size {cfg.image_size}"
            )
        parts = {}
        for role, split in (("train", cfg.train_split), ("val", cfg.val_split)):
            sub = cache.subset(split)  # DataError when the split is absent
            if len(sub.index) == 0:
                raise DataError(f"{path}: the {split!r} split is empty")
            parts[role] = sub.batches()
        return {
            "train": parts["train"],
            "val": parts["val"],
            "size": cache.size,
            "kind": "cache",
            "path": str(path.resolve()),
            "desc": f"cache {path}",
        }
    # CSV tables: a folder holding TRAIN.csv and VAL.csv, or one of those files.
    folder = path if path.is_dir() else path.parent
    train_csv = folder / f"{cfg.train_split}.csv" if path.is_dir() else path
    val_csv = folder / f"{cfg.val_split}.csv"
    for csv in (train_csv, val_csv):
        if not csv.is_file():
            raise DataError(
                f"--data {path}: {csv} not found; pass a cache made by `cxrdx prepare`, or a folder with "
                f"{cfg.train_split}.csv and {cfg.val_split}.csv (from `cxrdx split`)"
            )
    from cxrdx.data.tables import read_labels

    size = cfg.image_size or 320
    parts = {}
    for role, csv in (("train", train_csv), ("val", val_csv)):
        table = read_labels(csv, images_dir=cfg.images)
        if len(table) == 0:
            raise DataError(f"{csv}: the {role} split is empty")
        paths = (
            table["path"].fillna("").astype(str).tolist() if "path" in table.columns else [""] * len(table)
        )
        missing = [
            img for img, p in zip(table["image"], paths, strict=True) if not p or not Path(p).is_file()
        ]
        if missing:
            raise DataError(
                f"{csv}: {len(missing)} image file(s) not found (e.g. {missing[0]}); pass --images DIR with the "
                "folder they are in"
            )
        parts[role] = FileBatches(paths, table[list(FINDINGS)].to_numpy(dtype=np.uint8), size)
    return {
        "train": parts["train"],
        "val": parts["val"],
        "size": size,
        "kind": "csv",
        "path": str(folder.resolve()),
        "desc": f"CSV tables in {folder} (decoded on the fly; `cxrdx prepare` is faster)",
    }


def pixel_stats(source, max_images: int) -> tuple[float, float]:
    """Normalisation mean/std from (a sample of) the training split only."""
    from cxrdx.data.loaders import pixel_stats as _pixel_stats

    return _pixel_stats(source, max_images=max_images)


def loader_workers(cfg: TrainConfig, device: torch.device, source) -> int:
    if cfg.workers is not None:
        return cfg.workers
    from cxrdx.data.loaders import CacheBatches

    if device.type == "cpu" and isinstance(source, CacheBatches):
        return 0  # gathering from the memmap is negligible next to CPU training; workers would only compete
    return min(8, os.cpu_count() or 1)


def train_loader(source, cfg: TrainConfig, device: torch.device, rank: int, world: int):
    """Whole-batch loading: a BatchSampler over a DistributedSampler (also for one process).

    DistributedSampler shuffles with seed + epoch, so N processes see exactly the global
    batches a single process sees with N x batch.
    """
    from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

    if len(source) < world * cfg.batch_size:
        raise DataError(
            f"the training split has {len(source)} images, fewer than one batch "
            f"({world} process(es) x --batch-size {cfg.batch_size}); use a smaller --batch-size"
        )
    sampler = DistributedSampler(
        range(len(source)), num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed
    )
    # drop_last: a final batch of 1-2 images would give BatchNorm meaningless statistics
    batches = BatchSampler(sampler, cfg.batch_size, drop_last=True)
    workers = loader_workers(cfg, device, source)
    loader = DataLoader(
        source,
        sampler=batches,
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
    return loader, sampler


def val_loader(source, cfg: TrainConfig, device: torch.device, rank: int, world: int):
    """Each process validates a disjoint shard (no padding, so every image counts once)."""
    from torch.utils.data import BatchSampler, DataLoader

    positions = list(range(rank, len(source), world))
    batches = BatchSampler(positions, cfg.batch_size * 2, drop_last=False)
    workers = loader_workers(cfg, device, source)
    return DataLoader(
        source,
        sampler=batches,
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )


def to_input(
    squares: torch.Tensor,
    pre: Preprocessing,
    device: torch.device,
    memory_format: torch.memory_format,
    rng: torch.Generator | None,
    cfg: TrainConfig,
    train: bool,
) -> torch.Tensor:
    """uint8 (B, S, S) batch -> normalised (B, C, S, S) on the device, augmented when training.

    Only the 1-byte-per-pixel batch is copied to the device; augmentation runs there in
    [0, 1], then ``Preprocessing.to_input`` (the one normalisation predict and export use).
    """
    x = squares.to(device, non_blocking=True).unsqueeze(1).float().div_(255.0)
    if train and cfg.affine:
        x = random_affine(x, rng, cfg.affine_degrees, cfg.affine_translate, cfg.affine_scale)
    if train and cfg.flip:
        x = random_flip(x, rng)
    return pre.to_input(x).contiguous(memory_format=memory_format)
