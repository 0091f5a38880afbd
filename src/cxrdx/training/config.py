"""Every training option (``TrainConfig``), read from defaults, a JSON/TOML file and flags, and checked.

CLI flags override a ``--config`` file, which overrides the dataclass defaults; a
resumed run reads its own ``config.json`` and may change only ``RESUME_CHANGEABLE``
(settings that do not alter what is learned, only how long or where it runs).
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from cxrdx.errors import ConfigError
from cxrdx.options import option
from cxrdx.settings import BLANK_HELP, BLANK_POLICIES

# Files of a run folder.
STATE_FILE = "last_state.pt"
BEST_FILE = "best.safetensors"
LAST_FILE = "last.safetensors"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"


@dataclass
class TrainConfig:
    """Every training option, its default and help text (``cxrdx train``'s flags are generated from them).

    CLI flags override a --config file, which overrides these defaults. Stdlib-only at import, so
    ``cxrdx train --help`` loads no numpy or torch.
    """

    data: str | list[str] = option(
        "",
        metavar="CACHE_OR_CSV",
        help="cache folder from `cxrdx prepare`, or a folder with train.csv and val.csv; several datasets "
        "at once (each with its own label set and patient-disjoint splits): --data A B",
    )
    labels: list[str] | None = option(
        None,
        metavar="NAME",
        help="the model's outputs (default: every finding the data label, NIH's 14 first)",
    )
    uncertain: str = option(
        "ignore",
        choices=("ignore", "zeros", "ones"),
        help="uncertain (-1) labels: ignore = masked, zeros or ones (the CheXpert paper's policies)",
    )
    blank: str = option("negative", choices=BLANK_POLICIES, help=BLANK_HELP)
    views: str = option("frontal", help="views to train on: frontal, all, or a list like PA,AP")
    out: str = option(
        "", metavar="RUN_DIR", help="run folder to create (checkpoints, TensorBoard events, config.json)"
    )
    images: str | None = option(None, metavar="DIR", help="CSV data: folder the image names are relative to")
    arch: str = option("densenet121", help="densenet121 or densenet-tiny (tests)")
    init: str | None = option(
        None,
        metavar="FILE|NAME",
        help="weights to start the features from: a file (torchvision densenet121-*.pth, a cxrdx checkpoint) "
        "or a registry name (`cxrdx weights list`), e.g. imagenet",
    )
    epochs: int = option(20, help="maximum epochs")
    batch_size: int = option(32, help="images per step per process")
    lr: float = option(1e-4, help="Adam learning rate")
    weight_decay: float = option(0.0, help="Adam weight decay")
    image_size: int | None = option(
        None, help="input size; must match the cache (default: the cache's; CSV data: 320)"
    )
    lr_factor: float = option(0.1, help="ReduceLROnPlateau factor (on val loss)")
    lr_patience: int = option(1, help="ReduceLROnPlateau patience in epochs")
    early_stop_patience: int = option(
        5, flag="--patience", help="early-stopping patience in epochs (without val-loss improvement)"
    )
    min_delta: float = 0.0
    flip: bool = option(True, negatable=True, help="random horizontal flips")
    affine: bool = option(False, negatable=True, help="small random rotation/scale/shift")
    affine_degrees: float = 5.0
    affine_translate: float = 0.05  # fraction of the image side
    affine_scale: float = 0.05  # +- fraction
    findings: list[str] | None = option(
        None, metavar="NAME", help="findings the reported mean AUROC averages over (default: all scorable)"
    )
    train_split: str = option("train", help="split name for training")
    val_split: str = option("val", help="split name for validation")
    workers: int | None = option(
        None, help="loader processes (default: 0 on CPU with a cache, else min(8, CPUs))"
    )
    seed: int = option(0, help="random seed")
    deterministic: bool = option(False, help="deterministic algorithms (slower)")
    device: str = option("auto", help="auto, cpu, cuda, cuda:N")
    amp: str = option(
        "auto",
        choices=("auto", "bf16", "fp16", "off"),
        help="mixed precision (autocast; weights and loss stay fp32): CUDA auto = bf16 where supported, "
        "else fp16; CPU: bf16 (fast on AMX/AVX512-BF16 CPUs), auto/off = fp32",
    )
    compile: bool = option(False, help="torch.compile the model")
    channels_last: bool = option(True, negatable=True, help="channels_last memory format")
    sync_bn: bool = option(False, help="synchronise BatchNorm across GPUs (DDP, CUDA)")
    freeze_bn: bool = option(
        False, help="BatchNorm uses the running statistics of --init (required; small batches, exact DDP)"
    )
    allow_patient_overlap: bool = option(
        False,
        help="train although a patient is in both splits (refused by default; recorded in the checkpoint)",
    )
    max_minutes: float | None = option(None, help="time budget: stop when another epoch would not fit")
    max_steps_per_epoch: int | None = option(None, help="cap steps per epoch (quick runs)")
    norm_images: int = option(2000, help="training images sampled for the normalisation mean/std")
    log_every: int = 10  # steps between TensorBoard train/loss points
    progress: bool = option(True, flag="--no-progress", help="no progress bar")
    threads: int | None = option(None, help="CPU threads per process (default: CPUs / processes)")

    def validate(self) -> TrainConfig:
        """Check values and combinations; canonicalise finding names. Raises ConfigError/LabelError."""
        from cxrdx.imaging.letterbox import MIN_IMAGE_SIZE
        from cxrdx.labels import canonical_list

        if not self.data:
            raise ConfigError(
                "no training data given: pass --data CACHE (from `cxrdx prepare`) or a folder with train.csv and val.csv"
            )
        if not self.out:
            raise ConfigError("no run folder given: pass --out RUN_DIR")
        from cxrdx.model.networks import ARCHITECTURES

        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"--arch {self.arch!r} is unknown; choose one of {', '.join(ARCHITECTURES)}")
        if self.image_size is not None and self.image_size < MIN_IMAGE_SIZE:
            raise ConfigError(
                f"--image-size {self.image_size} is too small for DenseNet121 (it downsamples 32x); "
                f"use at least {MIN_IMAGE_SIZE}"
            )
        for name in ("epochs", "batch_size", "early_stop_patience", "norm_images", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr_patience < 0:
            raise ConfigError(f"lr-patience must be >= 0, got {self.lr_patience}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        if not 0 < self.lr_factor < 1:
            raise ConfigError(f"lr-factor must be between 0 and 1, got {self.lr_factor}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight-decay must be >= 0, got {self.weight_decay}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ConfigError(f"--amp {self.amp!r}: choose auto, bf16, fp16 or off")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"--max-minutes must be positive, got {self.max_minutes}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError(f"--max-steps-per-epoch must be at least 1, got {self.max_steps_per_epoch}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        if self.sync_bn and self.freeze_bn:
            raise ConfigError("--sync-bn and --freeze-bn contradict each other; choose one")
        if self.freeze_bn and not self.init:
            raise ConfigError(
                "--freeze-bn without --init would keep BatchNorm at its initial statistics (mean 0, "
                "variance 1) for the whole run, since frozen BatchNorm never updates them; pass --init "
                "with pretrained weights (ImageNet or a cxrdx checkpoint), or drop --freeze-bn"
            )
        if self.train_split == self.val_split:
            raise ConfigError(f"train and validation split are both {self.train_split!r}")
        if self.uncertain not in ("ignore", "zeros", "ones"):
            raise ConfigError(f"--uncertain {self.uncertain!r}: choose ignore, zeros or ones")
        if self.blank not in BLANK_POLICIES:
            raise ConfigError(f"--blank {self.blank!r}: choose negative or unlabelled")
        if isinstance(self.data, list) and (not self.data or len(set(self.data)) != len(self.data)):
            raise ConfigError(f"--data {self.data}: give each dataset once")
        if self.labels is not None:
            self.labels = canonical_list(self.labels)
            if not self.labels or len(set(self.labels)) != len(self.labels):
                raise ConfigError(f"--labels {self.labels}: give each finding once")
        if self.findings is not None:
            self.findings = canonical_list(self.findings)  # LabelError names any unknown finding
            if not self.findings:
                raise ConfigError("--findings is empty; omit it to use every finding")
        return self


BOOL_FLAGS = {
    "flip",
    "affine",
    "deterministic",
    "compile",
    "channels_last",
    "sync_bn",
    "freeze_bn",
    "allow_patient_overlap",
    "progress",
}
# Settings a resumed run may change: they decide how long, where and how visibly it runs, not what it learns.
RESUME_CHANGEABLE = {
    "epochs",
    "max_minutes",
    "early_stop_patience",
    "workers",
    "progress",
    "threads",
    "device",
    "compile",
    "max_steps_per_epoch",
    "log_every",
    "out",
}


def load_config_file(path: str | os.PathLike) -> dict:
    """A JSON or TOML file of TrainConfig fields (``batch_size`` or ``batch-size``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"--config {path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({exc})"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("train"), dict):
        data = data["train"]  # a [train] table
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a table of settings")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"--config {path}: unknown setting(s) {unknown}; known: {', '.join(sorted(known))}")
    return data


def make_config(base: dict | None = None, **overrides) -> TrainConfig:
    """TrainConfig from dicts, checking each value's type (a config file may hold anything)."""
    values = {**(base or {}), **overrides}
    cfg = TrainConfig()
    for f in fields(TrainConfig):
        if f.name not in values:
            continue
        value = values[f.name]
        default = getattr(cfg, f.name)
        try:
            if value is None or f.name in ("findings", "labels"):
                pass
            elif f.name == "data" and isinstance(value, (list, tuple)):
                value = [str(v) for v in value] if len(value) != 1 else str(value[0])
            elif f.name in BOOL_FLAGS:
                if not isinstance(value, bool):
                    raise TypeError
            elif isinstance(default, int) or f.name in (
                "image_size",
                "workers",
                "max_steps_per_epoch",
                "threads",
            ):
                if isinstance(value, bool) or float(value) != int(value):
                    raise TypeError
                value = int(value)
            elif isinstance(default, float) or f.name == "max_minutes":
                value = float(value)
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"setting {f.name} = {value!r} has the wrong type (expected like {default!r})"
            ) from None
        if f.name in ("findings", "labels") and value is not None:
            value = [value] if isinstance(value, str) else list(value)
        setattr(cfg, f.name, value)
    return cfg


def resume_config(run_dir: str | os.PathLike, given: dict, config_file: str | None = None) -> dict:
    """The settings of the run in ``run_dir`` to resume, refusing changes outside RESUME_CHANGEABLE.

    ``given`` holds the settings named on the command line; ``config_file`` a --config
    given with --resume, which is refused (the run's own config.json is used).
    """
    saved = Path(run_dir) / CONFIG_FILE
    if not saved.is_file():
        raise ConfigError(
            f"--resume {run_dir}: no {CONFIG_FILE} there; is it a run folder made by `cxrdx train`?"
        )
    base = json.loads(saved.read_text())
    base["out"] = str(run_dir)
    changed = sorted(k for k, v in given.items() if k not in RESUME_CHANGEABLE and base.get(k) != v)
    if config_file:
        raise ConfigError("--config cannot be combined with --resume (the run's own config.json is used)")
    if changed:
        raise ConfigError(
            f"cannot change {', '.join(changed)} when resuming {run_dir}; only "
            f"{', '.join(sorted(RESUME_CHANGEABLE - {'out'}))} may change"
        )
    return base
