"""Training data: batch sources from a prepared cache or CSV tables, the loaders, and the batch -> input step.

Data comes from a `cxrdx prepare` cache (uint8 memmap): the loader only gathers
bytes; flips, optional small affine and normalisation run on the batch tensor on the
training device (``to_input``), so augmentation costs no CPU on the GPU path. CSV
tables also work (decoded on the fly), for small experiments without a cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrdx.data.origin import Origin
from cxrdx.errors import ConfigError, DataError
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.training.augment import random_affine, random_flip
from cxrdx.training.config import TrainConfig


@dataclass
class DatasetPart:
    """One ``--data`` dataset: source factories (``names -> batch source``), its findings and description."""

    train: Callable[[list[str]], Any]
    val: Callable[[list[str]], Any]
    findings: list[str]  # the findings it labels
    size: int  # image side in px
    kind: str  # "cache" or "csv"
    path: str  # resolved folder
    desc: str  # in words, for the log
    origin: Origin  # dataset name and kind (phantom/real/unknown)
    patients: int | None
    leakage: str | None  # the patient overlap --allow-patient-overlap let through, else None
    views_dropped: dict[str, int] = field(default_factory=dict)


@dataclass
class TrainingData:
    """What training reads: the batch sources, the model's outputs, and what the data are (for provenance)."""

    train: Any  # batch source of the training split(s)
    val: Any  # ... of the validation split(s)
    labels: list[str]  # the model's outputs, in order (NaN targets where a dataset does not label one)
    size: int
    kind: str  # "cache", "csv" or several joined by "+"
    path: str  # one dataset's folder, or several joined by " + "
    desc: str
    origin: Origin | None  # one dataset's, or several joined (names by " + ", kinds by "+")
    patients: int | None
    leakage: str | None
    datasets: list[dict] = field(
        default_factory=list
    )  # per dataset: path, findings, train, val, views_dropped


def load_data(cfg: TrainConfig) -> TrainingData:
    """Training and validation batch sources from one or several datasets (``--data A B``).

    Each dataset is a cache (fast) or a folder of split CSVs (decoded on the fly) with its
    own patient-disjoint train/val splits (checked per dataset) and its own label set.
    The model's outputs are ``cfg.labels`` or the union of the datasets' findings (in
    ``ALL_FINDINGS`` order); a finding a dataset does not label is NaN there (masked in
    the loss). Uncertain labels follow ``cfg.uncertain``; only ``cfg.views`` are kept
    (frontal by default).
    """
    from cxrdx.data.loaders import ConcatBatches
    from cxrdx.labels import canonical_list, in_vocabulary_order

    paths = [cfg.data] if isinstance(cfg.data, str) else list(cfg.data)
    parts = [_load_one(Path(p), cfg) for p in paths]
    union = in_vocabulary_order({f for part in parts for f in part.findings})
    names = canonical_list(cfg.labels) if cfg.labels else union
    unlabelled = [n for n in names if n not in union]
    if unlabelled:
        raise ConfigError(
            f"--labels {', '.join(unlabelled)}: no training dataset labels them (the data label "
            f"{', '.join(union)}); a model cannot learn a finding it never sees labelled"
        )
    sizes = {part.size for part in parts}
    if len(sizes) > 1:
        raise ConfigError(
            f"--data: the datasets have different image sizes ({', '.join(f'{p}: {q}' for p, q in zip(paths, [x.size for x in parts], strict=True))}); "
            "prepare them at one --size"
        )
    sources = {role: [getattr(part, role)(names) for part in parts] for role in ("train", "val")}
    datasets = [
        {
            "path": p.path,
            "findings": p.findings,
            "train": len(s),
            "val": len(v),
            "views_dropped": p.views_dropped,
        }
        for p, s, v in zip(parts, sources["train"], sources["val"], strict=True)
    ]
    if len(parts) == 1:
        (p,) = parts
        return TrainingData(
            sources["train"][0], sources["val"][0], names, p.size, p.kind, p.path, p.desc, p.origin,
            p.patients, p.leakage, datasets,
        )  # fmt: skip
    return TrainingData(
        train=ConcatBatches(sources["train"]),
        val=ConcatBatches(sources["val"]),
        labels=names,
        size=parts[0].size,
        kind="+".join(sorted({p.kind for p in parts})),
        path=" + ".join(p.path for p in parts),
        desc=" + ".join(p.desc for p in parts),
        origin=Origin(
            " + ".join(str(p.origin.dataset or p.path) for p in parts),
            "+".join(sorted({str(p.origin.kind) for p in parts})),
        ),
        patients=sum(p.patients or 0 for p in parts),
        leakage="; ".join(p.leakage for p in parts if p.leakage) or None,
        datasets=datasets,
    )


def _labels_for(table, findings, names) -> np.ndarray:
    out = np.full((len(table), len(names)), np.nan, dtype=np.float32)
    for j, name in enumerate(names):
        if name in findings:
            out[:, j] = table[name].to_numpy(dtype=np.float32)
    return out


def _load_one(path: Path, cfg: TrainConfig) -> DatasetPart:
    """One dataset: train/val source factories (``names -> source``), its findings and description."""
    from cxrdx.data.cache import PreparedCache, is_cache, open_cache
    from cxrdx.data.leakage import check_patient_overlap
    from cxrdx.data.loaders import FileBatches
    from cxrdx.data.origin import dataset_origin
    from cxrdx.data.views import select_views

    if not path.exists():
        raise DataError(
            f"--data {path}: no such file or folder; pass a cache made by `cxrdx prepare` "
            "or a folder with train.csv and val.csv"
        )
    dropped: dict[str, int] = {}
    if is_cache(path):
        cache = open_cache(path, uncertain=cfg.uncertain, blank=cfg.blank)
        if cfg.image_size is not None and cfg.image_size != cache.size:
            raise ConfigError(
                f"--image-size {cfg.image_size} differs from the cache's {cache.size} px ({path}); "
                f"omit --image-size or prepare a cache with --size {cfg.image_size}"
            )
        subs, tables = {}, {}
        for role, split in (("train", cfg.train_split), ("val", cfg.val_split)):
            sub = cache.subset(split)  # DataError when the split is absent
            index, selection = select_views(sub.index, cfg.views, f"{path} ({split})")
            for k, v in (selection.dropped if selection else {}).items():
                dropped[k] = dropped.get(k, 0) + int(v)
            sub = PreparedCache(sub.path, sub.images, index, sub.size, sub.info, sub.findings)
            if len(sub.index) == 0:
                raise DataError(f"{path}: the {split!r} split is empty")
            subs[role], tables[split] = sub, sub.index
        return DatasetPart(
            train=subs["train"].batches,
            val=subs["val"].batches,
            findings=list(cache.findings),
            size=cache.size,
            kind="cache",
            path=str(path.resolve()),
            desc=f"cache {path}",
            origin=cache.origin,
            patients=_patients(tables),
            leakage=check_patient_overlap(tables, allow=cfg.allow_patient_overlap, source=str(path)),
            views_dropped=dropped,
        )
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
    from cxrdx.data.tables import read_label_table, table_findings

    size = cfg.image_size or 320
    factories, tables, findings, datasets = {}, {}, set(), []
    for role, csv in (("train", train_csv), ("val", val_csv)):
        read = read_label_table(
            csv, images_dir=cfg.images, uncertain=cfg.uncertain, views=cfg.views, blank=cfg.blank
        )
        table = tables[csv.name] = read.frame
        datasets.append(read.dataset)
        for k, v in read.views_dropped.items():
            dropped[k] = dropped.get(k, 0) + int(v)
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
        own = table_findings(read)
        findings |= set(own)
        factories[role] = lambda names, t=table, p=paths, f=own: FileBatches(
            p, _labels_for(t, f, names), size
        )
    from cxrdx.labels import in_vocabulary_order

    return DatasetPart(
        train=factories["train"],
        val=factories["val"],
        findings=in_vocabulary_order(findings),
        size=size,
        kind="csv",
        path=str(folder.resolve()),
        desc=f"CSV tables in {folder} (decoded on the fly; `cxrdx prepare` is faster)",
        origin=dataset_origin([train_csv, val_csv], cfg.images, datasets),
        patients=_patients(tables),
        leakage=check_patient_overlap(tables, allow=cfg.allow_patient_overlap, source=str(folder)),
        views_dropped=dropped,
    )


def _patients(tables: dict) -> int | None:
    """Distinct patients over the training and validation tables (for the model card)."""
    ids = [t["patient"].astype(str) for t in tables.values() if "patient" in t.columns]
    return len(set().union(*map(set, ids))) if ids else None


def pixel_stats(source, max_images: int) -> tuple[float, float]:
    """Normalisation mean/std from (a sample of) the training split only."""
    from cxrdx.data.loaders import pixel_stats as _pixel_stats

    return _pixel_stats(source, max_images=max_images)


def loader_workers(cfg: TrainConfig, device: torch.device, source) -> int:
    if cfg.workers is not None:
        return cfg.workers
    from cxrdx.data.loaders import CacheBatches

    if device.type == "cpu" and (isinstance(source, CacheBatches) or getattr(source, "cache_only", False)):
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
