"""`cxrdx train`: the whole training loop, top to bottom, in one module.

Read ``train()`` from the top: setup (distributed, device, seeds) -> data (cache or
CSVs, training-split normalisation and class weights) -> model -> optimizer and
schedule -> resume -> epoch loop (train, validate, schedule, checkpoint, early stop)
-> summary. Everything else in this file is a small helper it calls.

Decisions (why):

- Data comes from a `cxrdx prepare` cache (uint8 memmap): the loader only gathers
  bytes; flips, optional small affine and normalisation run on the batch tensor on
  the training device, so augmentation costs no CPU on the GPU path.
- Normalisation mean/std and the class weights of the loss come from the training
  split only (validation and test are normalised with training statistics) and are
  stored in the checkpoint's ``Preprocessing``.
- Checkpoints: ``best.safetensors`` (lowest val loss) and ``last.safetensors``, each
  written atomically (temp file + rename). The resume state ``last_state.pt``
  (weights, optimizer, scheduler, early stopping, RNG, history) is written *first*
  each epoch; the .safetensors files follow. A run killed anywhere therefore
  resumes from the last state that was completely written, and on resume any
  .safetensors file that lags behind that state is rewritten from it, so the pair
  always agrees. Resume granularity is one epoch: a run killed mid-epoch redoes that
  epoch and ends with the same number of completed epochs.
- DDP (``torchrun --nproc_per_node N -m cxrdx train ...``): ``--batch-size`` is per
  process (global batch = N x batch); DistributedSampler shuffles with seed+epoch,
  so N processes see exactly the global batches a single process sees with
  N x batch; only rank 0 writes files, logs and the progress bar; validation is
  sharded and its loss all-reduced. BatchNorm normally uses per-process batch
  statistics (standard DDP); ``--sync-bn`` (CUDA) synchronises them, and
  ``--freeze-bn`` uses running statistics (each image's output then no longer
  depends on its batch-mates, which is also what makes N-process training
  mathematically identical to one process on the same global batch).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import subprocess
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrdx.errors import ConfigError, CxrdxError, DataError
from cxrdx.labels import FINDINGS, NUM_FINDINGS, canonical_list
from cxrdx.preprocess import MIN_IMAGE_SIZE, Preprocessing

STATE_FILE = "last_state.pt"
BEST_FILE = "best.safetensors"
LAST_FILE = "last.safetensors"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"


@dataclass
class TrainConfig:
    """Every training option. CLI flags override a --config file, which overrides these defaults."""

    data: str = (
        ""  # a `cxrdx prepare` cache folder, or a folder with train.csv + val.csv (or one of those CSVs)
    )
    out: str = ""  # run folder: checkpoints, TensorBoard events, config.json
    images: str | None = None  # CSV data only: folder the image names are relative to
    arch: str = "densenet121"  # or "densenet-tiny" (tests)
    init: str | None = None  # ImageNet weights file (torchvision densenet121-*.pth layout)
    epochs: int = 20
    batch_size: int = 32  # per process
    lr: float = 1e-4
    weight_decay: float = 0.0
    image_size: int | None = None  # None: the cache's size (CSV data: 320)
    lr_factor: float = 0.1  # ReduceLROnPlateau on val loss
    lr_patience: int = 1
    early_stop_patience: int = 5  # epochs without val-loss improvement before stopping
    min_delta: float = 0.0
    flip: bool = True
    affine: bool = False
    affine_degrees: float = 5.0
    affine_translate: float = 0.05  # fraction of the image side
    affine_scale: float = 0.05  # +- fraction
    findings: list[str] | None = (
        None  # findings the reported mean AUROC averages over (default: all scorable)
    )
    train_split: str = "train"
    val_split: str = "val"
    workers: int | None = None  # loader processes; None: 0 on CPU with a cache, else min(8, CPUs)
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA when supported, else fp16) | bf16 | fp16 | off; CPU is always fp32
    compile: bool = False
    channels_last: bool = True
    sync_bn: bool = False
    freeze_bn: bool = False
    max_minutes: float | None = None  # time budget: stop when another epoch would not fit
    max_steps_per_epoch: int | None = None
    norm_images: int = 2000  # training images sampled for the normalisation mean/std
    log_every: int = 10  # steps between TensorBoard train/loss points
    progress: bool = True
    threads: int | None = None  # CPU threads per process (default: CPUs / processes)

    def validate(self) -> TrainConfig:
        """Check values and combinations; canonicalise finding names. Raises ConfigError/LabelError."""
        if not self.data:
            raise ConfigError(
                "no training data given: pass --data CACHE (from `cxrdx prepare`) or a folder with train.csv and val.csv"
            )
        if not self.out:
            raise ConfigError("no run folder given: pass --out RUN_DIR")
        from cxrdx.model import ARCHITECTURES

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
        if self.train_split == self.val_split:
            raise ConfigError(f"train and validation split are both {self.train_split!r}")
        if self.findings is not None:
            self.findings = canonical_list(self.findings)  # LabelError names any unknown finding
            if not self.findings:
                raise ConfigError("--findings is empty; omit it to use every finding")
        return self


@dataclass
class TrainResult:
    run_dir: Path
    best_path: Path
    last_path: Path
    epochs_completed: int
    best_epoch: int
    best_val_loss: float
    best_val_auroc: dict[str, float]
    best_val_auroc_mean: float | None
    stopped: str  # "epochs" | "early_stopping" | "time_budget"
    seconds: float
    history: list[dict] = field(default_factory=list)


# =========================================================================== the loop


def _restores_torch_globals(fn):
    """train() sets process-wide torch switches (threads, determinism); put them back for API callers."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        saved = (
            torch.get_num_threads(),
            torch.are_deterministic_algorithms_enabled(),
            torch.backends.cudnn.benchmark,
        )
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(saved[0])
            torch.use_deterministic_algorithms(saved[1])
            torch.backends.cudnn.benchmark = saved[2]

    return wrapper


@_restores_torch_globals
def train(config: TrainConfig, resume: bool = False, debug_dump_weights: bool = False) -> TrainResult:
    """Train (or resume) a run; returns where the best checkpoint is and how it scored."""
    cfg = config.validate()
    wall_start = time.monotonic()

    # ---- setup: processes, device, precision, seeds -------------------------------------
    rank, world, local_rank = _init_distributed(cfg)
    is_main = rank == 0
    device = _pick_device(cfg, local_rank)
    if device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // max(1, local_world)))
    amp_dtype = _amp_dtype(cfg, device)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # same initial weights in every process (DDP also broadcasts rank 0's)
    augment_rng = torch.Generator(device=device).manual_seed(cfg.seed * 1009 + 1 + rank)
    run_dir = Path(cfg.out)
    if is_main:
        _check_run_dir(run_dir, resume)
        _write_json(run_dir / CONFIG_FILE, asdict(cfg))  # the resolved config, before any work

    # ---- data: sources, normalisation and class weights from the training split --------
    data = _load_data(cfg)
    train_src, val_src, size = data["train"], data["val"], data["size"]
    state = _load_state(run_dir) if resume else None
    if state is not None:
        mean, std = float(state["norm_mean"]), float(state["norm_std"])
        w_pos, w_neg = state["w_pos"].numpy(), state["w_neg"].numpy()
    else:
        mean, std = _pixel_stats(train_src, cfg.norm_images)
        from cxrdx.loss import class_weights

        w_pos, w_neg = class_weights(train_src.labels)
    preprocessing = Preprocessing(size=size, channels=3, pixel_range=(0.0, 1.0), mean=(mean,), std=(std,))
    from cxrdx.loss import WeightedBCEWithLogits

    criterion = WeightedBCEWithLogits(w_pos, w_neg).to(device)
    val_criterion = WeightedBCEWithLogits(w_pos, w_neg, reduction="none").to(device)
    untrainable = [n for n, f in zip(FINDINGS, w_neg, strict=True) if f == 0]
    if is_main and untrainable:
        _say(f"note: no positive training images for {', '.join(untrainable)}; these outputs will not learn")
    train_loader, train_sampler = _train_loader(train_src, cfg, device, rank, world)
    val_loader = _val_loader(val_src, cfg, device, rank, world)

    # ---- model ----------------------------------------------------------------------------
    from cxrdx.model import CheckpointMeta, build_model, save_checkpoint

    model = build_model(cfg.arch, NUM_FINDINGS, 3)
    if cfg.init and state is None:
        from cxrdx.weights import load_init_features  # imports torchvision-layout weights by name, strictly

        load_init_features(cfg.init, model)
    if cfg.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    if state is not None:
        model.load_state_dict(state["model"], strict=True)
    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    # ---- optimizer, schedule, early stopping ----------------------------------------------
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    start_epoch, global_step, elapsed_before = 0, 0, 0.0
    best = {"val_loss": math.inf, "epoch": 0, "auroc": {}, "auroc_mean": None}
    bad_epochs, history = 0, []

    # ---- resume ------------------------------------------------------------------------------
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
        elapsed_before = float(state["elapsed"])
        best, bad_epochs = dict(state["best"]), int(state["bad_epochs"])
        history = list(state["history"])
        _restore_rng(state["rng"], augment_rng, rank)
        if is_main:
            _reconcile_checkpoints(run_dir, state, cfg, preprocessing, data)
            _write_json(run_dir / HISTORY_FILE, history)  # it too may lag the state (killed while written)
            _say(
                f"resuming {run_dir} after epoch {start_epoch} (best val loss {best['val_loss']:.4f} at epoch {best['epoch']})"
            )
    del state

    def meta_for(epoch: int, val_loss: float, auroc: dict) -> CheckpointMeta:
        return CheckpointMeta(
            architecture=cfg.arch,
            in_channels=3,
            preprocessing=preprocessing,
            provenance=_provenance(cfg, data, epoch, val_loss, auroc, best, world),
        )

    writer = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir), purge_step=global_step + 1 if global_step else None)
        _say(
            f"training {cfg.arch} on {data['desc']}: {len(train_src)} train / {len(val_src)} val images at {size} px, "
            f"{world} process(es) x batch {cfg.batch_size}, device {device}"
            f"{', ' + str(amp_dtype).replace('torch.', '') + ' autocast' if amp_dtype else ''}; "
            f"normalisation mean {mean:.4f} std {std:.4f} (training split)"
        )

    # ---- epoch loop --------------------------------------------------------------------------
    stopped = "epochs"
    epoch_seconds: list[float] = [h["seconds"] for h in history]
    for epoch in range(start_epoch, cfg.epochs):
        # stop before this epoch? (checked here so a resumed run obeys it too; same decision in every process)
        if bad_epochs >= cfg.early_stop_patience:
            stopped = "early_stopping"
            break
        if cfg.max_minutes is not None and epoch_seconds:
            elapsed = elapsed_before + (time.monotonic() - wall_start)
            if _agree(elapsed + float(np.mean(epoch_seconds)) > cfg.max_minutes * 60, device, world):
                stopped = "time_budget"  # another epoch would not fit in the budget
                break
        epoch_start = time.monotonic()
        train_sampler.set_epoch(epoch)
        _set_train_mode(model, cfg.freeze_bn)
        steps = (
            len(train_loader)
            if cfg.max_steps_per_epoch is None
            else min(len(train_loader), cfg.max_steps_per_epoch)
        )
        bar = _progress(steps, f"epoch {epoch + 1}/{cfg.epochs}", enabled=is_main and cfg.progress)
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        seen, shown_loss, tick = 0, float("nan"), time.monotonic()
        for step, (squares, targets) in enumerate(train_loader):
            if step >= steps:
                break
            x = _to_input(squares, preprocessing, device, memory_format, augment_rng, cfg, train=True)
            y = targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = net(x)
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            global_step += 1
            loss_sum += loss.detach().double() * len(y)
            seen += len(y)
            if step % cfg.log_every == 0 or step == steps - 1:
                shown_loss = float(loss.item())  # a device sync, so only every log_every steps
                if not math.isfinite(shown_loss):
                    raise ConfigError(
                        f"the training loss became {shown_loss} at step {global_step}; lower --lr "
                        f"(now {optimizer.param_groups[0]['lr']:g}) or use --amp off"
                    )
                if writer is not None:
                    writer.add_scalar("train/loss", shown_loss, global_step)
            bar.update(1)
            if bar.total:
                rate = seen * world / max(time.monotonic() - tick, 1e-9)
                bar.set_postfix(loss=f"{shown_loss:.4f}", img_s=f"{rate:.0f}", refresh=False)
        bar.close()
        train_seconds = time.monotonic() - tick
        train_loss = _all_mean(loss_sum, seen, device, world)

        # validate: sharded over processes, loss all-reduced, predictions gathered for AUROC
        val_loss, probs, labels = _validate(
            net, model, val_loader, val_criterion, preprocessing, device, memory_format, amp_dtype, cfg, world
        )
        auroc = per_class_auroc(probs, labels)
        auroc_mean = mean_auroc(auroc, cfg.findings)
        lr_now = optimizer.param_groups[0]["lr"]
        scheduler.step(val_loss)

        # early stopping bookkeeping (identical in every process: val_loss is all-reduced)
        improved = val_loss < best["val_loss"] - cfg.min_delta
        if improved:
            best = {"val_loss": val_loss, "epoch": epoch + 1, "auroc": auroc, "auroc_mean": auroc_mean}
            bad_epochs = 0
        else:
            bad_epochs += 1
        epoch_seconds.append(time.monotonic() - epoch_start)
        elapsed = elapsed_before + (time.monotonic() - wall_start)
        record = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_auroc_mean": auroc_mean,
            "lr": lr_now,
            "seconds": epoch_seconds[-1],
            "train_images_per_s": seen * world / max(train_seconds, 1e-9),
        }
        history.append(record)

        # checkpoint: resume state first, then best/last .safetensors (see the module doc)
        if is_main:
            state = {
                "epoch": epoch + 1,
                "global_step": global_step,
                "elapsed": elapsed,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "best": best,
                "bad_epochs": bad_epochs,
                "history": history,
                "norm_mean": mean,
                "norm_std": std,
                "w_pos": torch.as_tensor(w_pos),
                "w_neg": torch.as_tensor(w_neg),
                "rng": _rng_state(augment_rng),
            }
            from cxrdx.model import atomic_write

            atomic_write(run_dir / STATE_FILE, lambda tmp, s=state: torch.save(s, tmp))
            del state
            if improved:
                save_checkpoint(run_dir / BEST_FILE, model, meta_for(epoch + 1, val_loss, auroc))
            save_checkpoint(run_dir / LAST_FILE, model, meta_for(epoch + 1, val_loss, auroc))
            _write_json(run_dir / HISTORY_FILE, history)
            writer.add_scalar("train/epoch_loss", train_loss, global_step)
            writer.add_scalar("val/loss", val_loss, global_step)
            for name, value in auroc.items():
                writer.add_scalar(f"val/auroc/{name}", value, global_step)
            if auroc_mean is not None:
                writer.add_scalar("val/auroc_mean", auroc_mean, global_step)
            writer.add_scalar("lr", lr_now, global_step)
            writer.add_scalar("train/images_per_s", record["train_images_per_s"], global_step)
            writer.flush()
            _say(
                f"epoch {epoch + 1}/{cfg.epochs}: train loss {train_loss:.4f}  val loss {val_loss:.4f}"
                f"{'  val AUROC ' + format(auroc_mean, '.3f') if auroc_mean is not None else ''}  lr {lr_now:.2g}  "
                f"{epoch_seconds[-1]:.0f} s{'  (best)' if improved else ''}"
            )

    # ---- summary ----------------------------------------------------------------------------
    if debug_dump_weights:  # every process writes its own weights (tests compare them across ranks)
        from safetensors.torch import save_file

        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            str(run_dir / f"rank{rank}.safetensors"),
        )
    completed = history[-1]["epoch"] if history else start_epoch
    seconds = elapsed_before + (time.monotonic() - wall_start)
    result = TrainResult(
        run_dir=run_dir,
        best_path=run_dir / BEST_FILE,
        last_path=run_dir / LAST_FILE,
        epochs_completed=completed,
        best_epoch=int(best["epoch"]),
        best_val_loss=float(best["val_loss"]),
        best_val_auroc=dict(best["auroc"]),
        best_val_auroc_mean=best["auroc_mean"],
        stopped=stopped,
        seconds=seconds,
        history=history,
    )
    if writer is not None:
        writer.close()
    if is_main:
        _print_summary(result, cfg)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return result


# =========================================================================== helpers: setup


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _init_distributed(cfg: TrainConfig) -> tuple[int, int, int]:
    """(rank, world size, local rank); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return rank, world, local_rank


def _pick_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(cfg.device)
    except RuntimeError:
        raise ConfigError(f"--device {cfg.device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.device}: this PyTorch has no CUDA GPU available; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    if cfg.sync_bn and device.type != "cuda":
        raise ConfigError(
            "--sync-bn needs CUDA (PyTorch's SyncBatchNorm does not run on CPU); use --freeze-bn instead"
        )
    return device


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        if cfg.amp in ("bf16", "fp16"):
            raise ConfigError(
                f"--amp {cfg.amp} needs a CUDA GPU; on CPU training runs in fp32 (use --amp auto or off)"
            )
        return None
    if cfg.amp == "off":
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    """Fail before any work if RUN_DIR cannot be written or would overwrite another run."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} exists and is not a folder")
    if not resume and any((run_dir / f).exists() for f in (STATE_FILE, LAST_FILE, BEST_FILE)):
        raise ConfigError(
            f"{run_dir} already holds a training run; continue it with `cxrdx train --resume {run_dir}` "
            "or choose another --out"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"--out {run_dir} is not writable ({exc.strerror or exc}); choose another folder"
        ) from None


# =========================================================================== helpers: data


def _load_data(cfg: TrainConfig) -> dict:
    """Training and validation batch sources from a cache (fast) or CSVs (decoded on the fly)."""
    from cxrdx.cache import INFO_FILE, FileBatches, open_cache

    path = Path(cfg.data)
    if not path.exists():
        raise DataError(
            f"--data {path}: no such file or folder; pass a cache made by `cxrdx prepare` "
            "or a folder with train.csv and val.csv"
        )
    if path.is_dir() and (
        (path / INFO_FILE).exists() or (path / "images.npy").exists() or (path / ".prepare.json").exists()
    ):
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
    from cxrdx.datasets import read_labels

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


def _pixel_stats(source, max_images: int) -> tuple[float, float]:
    from cxrdx.cache import pixel_stats

    return pixel_stats(source, max_images=max_images)


def _loader_workers(cfg: TrainConfig, device: torch.device, source) -> int:
    if cfg.workers is not None:
        return cfg.workers
    from cxrdx.cache import CacheBatches

    if device.type == "cpu" and isinstance(source, CacheBatches):
        return 0  # gathering from the memmap is negligible next to CPU training; workers would only compete
    return min(8, os.cpu_count() or 1)


def _train_loader(source, cfg: TrainConfig, device: torch.device, rank: int, world: int):
    """Whole-batch loading: a BatchSampler over a DistributedSampler (also for one process)."""
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
    workers = _loader_workers(cfg, device, source)
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


def _val_loader(source, cfg: TrainConfig, device: torch.device, rank: int, world: int):
    """Each process validates a disjoint shard (no padding, so every image counts once)."""
    from torch.utils.data import BatchSampler, DataLoader

    positions = list(range(rank, len(source), world))
    batches = BatchSampler(positions, cfg.batch_size * 2, drop_last=False)
    workers = _loader_workers(cfg, device, source)
    return DataLoader(
        source,
        sampler=batches,
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )


def _to_input(
    squares: torch.Tensor,
    pre: Preprocessing,
    device: torch.device,
    memory_format: torch.memory_format,
    rng: torch.Generator,
    cfg: TrainConfig,
    train: bool,
) -> torch.Tensor:
    """uint8 (B, S, S) batch -> normalised (B, 3, S, S) on the device, augmented when training.

    The same arithmetic as ``Preprocessing.normalize``, done on the device after a
    1-byte-per-pixel copy.
    """
    x = squares.to(device, non_blocking=True).unsqueeze(1).float().div_(255.0)
    if train and cfg.affine:
        x = _random_affine(x, rng, cfg)
    if train and cfg.flip:
        flip = torch.rand(x.shape[0], device=device, generator=rng) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    lo, hi = pre.pixel_range
    mean, std = _norm_tensors(tuple(pre.mean), tuple(pre.std), pre.channels, str(device))
    x = lo + x * (hi - lo)
    x = (x - mean) / std  # (B, 1, S, S) broadcast against (1, C, 1, 1): gray replicated to C channels
    return x.contiguous(memory_format=memory_format)


@functools.lru_cache(maxsize=8)
def _norm_tensors(mean: tuple, std: tuple, channels: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, 1, 1) mean and std on the device, made once (not a host-to-device copy per batch)."""

    def make(values: tuple) -> torch.Tensor:
        v = np.broadcast_to(np.asarray(values, dtype=np.float32), (channels,)).copy()
        return torch.from_numpy(v).to(device).view(1, channels, 1, 1)

    return make(mean), make(std)


def _random_affine(x: torch.Tensor, rng: torch.Generator, cfg: TrainConfig) -> torch.Tensor:
    """Small random rotation, scale and shift per image; uncovered corners are black, like the letterbox."""
    n = x.shape[0]

    def uniform(bound: float) -> torch.Tensor:
        return (torch.rand(n, device=x.device, generator=rng) * 2 - 1) * bound

    angle = uniform(math.radians(cfg.affine_degrees))
    scale = 1 + uniform(cfg.affine_scale)
    tx, ty = uniform(2 * cfg.affine_translate), uniform(2 * cfg.affine_translate)  # grid units span 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


# =========================================================================== helpers: metrics


@torch.no_grad()
def _validate(net, model, loader, criterion, pre, device, memory_format, amp_dtype, cfg, world):
    """(val loss over all processes, probabilities, labels): the loss is the exact mean over the split."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    count = 0
    probs, labels = [], []
    for squares, targets in loader:
        x = _to_input(squares, pre, device, memory_format, None, cfg, train=False)
        y = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = net(x)
        loss_sum += criterion(logits, y).double().sum()
        count += len(y)
        probs.append(torch.sigmoid(logits.float()).cpu().numpy())
        labels.append(targets.numpy())
    probs_np = np.concatenate(probs) if probs else np.zeros((0, NUM_FINDINGS), np.float32)
    labels_np = np.concatenate(labels) if labels else np.zeros((0, NUM_FINDINGS), np.float32)
    if world > 1:
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, (probs_np, labels_np))
        probs_np = np.concatenate([g[0] for g in gathered])
        labels_np = np.concatenate([g[1] for g in gathered])
    return _all_mean(loss_sum, count, device, world), probs_np, labels_np


def _all_mean(total: torch.Tensor, count: int, device: torch.device, world: int) -> float:
    pair = torch.stack([total.double(), torch.tensor(float(count), dtype=torch.float64, device=device)])
    if world > 1:
        torch.distributed.all_reduce(pair)
    return float(pair[0] / pair[1]) if pair[1] > 0 else float("nan")


def _agree(flag: bool, device: torch.device, world: int) -> bool:
    """Rank 0's decision, for every process (clocks differ slightly between processes)."""
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.broadcast(t, src=0)
    return bool(t.item())


def per_class_auroc(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUROC per finding that has both positives and negatives in ``labels`` (others are skipped)."""
    from sklearn.metrics import roc_auc_score

    out = {}
    for i, name in enumerate(FINDINGS):
        y = labels[:, i]
        if 0 < y.sum() < len(y):
            out[name] = float(roc_auc_score(y, probs[:, i]))
    return out


def mean_auroc(auroc: dict[str, float], findings: list[str] | None) -> float | None:
    names = [n for n in (findings or FINDINGS) if n in auroc]
    return float(np.mean([auroc[n] for n in names])) if names else None


# =========================================================================== helpers: state


def _rng_state(augment_rng: torch.Generator) -> dict:
    """RNG states as tensors and lists only, so torch.load(weights_only=True) reads them."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "augment": augment_rng.get_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss_next": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict, augment_rng: torch.Generator, rank: int) -> None:
    torch.set_rng_state(state["torch"])
    if rank == 0:
        augment_rng.set_state(state["augment"])  # other ranks keep their own streams (seeded per rank)
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _load_state(run_dir: Path) -> dict | None:
    """The resume state, or None when the run was killed before its first epoch completed."""
    path = run_dir / STATE_FILE
    if not path.is_file():
        _say(
            f"note: {run_dir} has no completed epoch yet ({STATE_FILE} is absent); starting it from the beginning"
        )
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn file cannot happen (atomic rename) but a foreign one can
        raise DataError(
            f"{path}: cannot read the resume state ({exc}); start a new run with another --out"
        ) from None


def _reconcile_checkpoints(run_dir: Path, state: dict, cfg, preprocessing, data) -> None:
    """Make last/best.safetensors agree with the resume state (they are written after it)."""
    from cxrdx.errors import CheckpointError
    from cxrdx.model import CheckpointMeta, build_model, read_checkpoint, save_checkpoint

    epoch, best = int(state["epoch"]), state["best"]
    wanted = [(LAST_FILE, epoch)]
    if best["epoch"] == epoch:
        wanted.append((BEST_FILE, epoch))
    for name, want in wanted:
        try:
            _, meta = read_checkpoint(run_dir / name)
            have = int(meta.provenance.get("epoch", -1))
        except CheckpointError:
            have = -1
        if have != want:
            model = build_model(cfg.arch, NUM_FINDINGS, 3)
            model.load_state_dict(state["model"], strict=True)
            auroc = best["auroc"] if name == BEST_FILE else {}
            val_loss = state["history"][-1]["val_loss"] if state["history"] else math.nan
            meta = CheckpointMeta(
                architecture=cfg.arch,
                in_channels=3,
                preprocessing=preprocessing,
                provenance=_provenance(cfg, data, epoch, val_loss, auroc, best, 1),
            )
            save_checkpoint(run_dir / name, model, meta)
            _say(f"note: {run_dir / name} was behind the resume state (epoch {have} vs {want}); rewrote it")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _provenance(
    cfg: TrainConfig, data: dict, epoch: int, val_loss: float, auroc: dict, best: dict, world: int
) -> dict:
    return {
        "dataset": data["path"],
        "data_kind": data["kind"],
        "splits": {cfg.train_split: len(data["train"]), cfg.val_split: len(data["val"])},
        "epoch": epoch,
        "val_loss": float(val_loss),
        "val_auroc": auroc,
        "best_epoch": int(best["epoch"]),
        "best_val_loss": float(best["val_loss"]),
        "git_commit": _git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        "processes": world,
        "config": asdict(cfg),
    }


def _write_json(path: Path, obj) -> None:
    from cxrdx.model import atomic_write

    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(obj, indent=2, default=str))

    atomic_write(path, write)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="batch",
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        leave=False,
    )


def _print_summary(result: TrainResult, cfg: TrainConfig) -> None:
    why = {
        "epochs": f"all {cfg.epochs} epochs done",
        "early_stopping": f"early stopping (no val-loss improvement for {cfg.early_stop_patience} epochs)",
        "time_budget": f"time budget of {cfg.max_minutes:g} min" if cfg.max_minutes else "time budget",
    }[result.stopped]
    auroc = (
        f", mean val AUROC {result.best_val_auroc_mean:.3f}" if result.best_val_auroc_mean is not None else ""
    )
    print(f"finished after {result.epochs_completed} epoch(s) ({why}) in {result.seconds / 60:.1f} min")
    print(
        f"best checkpoint: {result.best_path} (epoch {result.best_epoch}, val loss {result.best_val_loss:.4f}{auroc})"
    )
    print(f"TensorBoard: tensorboard --logdir {result.run_dir}")
    data = (
        cfg.data
        if (Path(cfg.data) / "cache.json").is_file()
        else str(
            Path(cfg.data).with_name("test.csv") if Path(cfg.data).is_file() else Path(cfg.data) / "test.csv"
        )
    )
    print(
        f"next: cxrdx evaluate --weights {result.best_path} --data {data} --split test --out {result.run_dir / 'evaluation'}"
    )


# =========================================================================== config + CLI

_BOOL_FLAGS = {
    "flip",
    "affine",
    "deterministic",
    "compile",
    "channels_last",
    "sync_bn",
    "freeze_bn",
    "progress",
}
_RESUME_CHANGEABLE = {
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
            if value is None or f.name == "findings":
                pass
            elif f.name in _BOOL_FLAGS:
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
        if f.name == "findings" and value is not None:
            value = [value] if isinstance(value, str) else list(value)
        setattr(cfg, f.name, value)
    return cfg


def _run_train(args: argparse.Namespace) -> int:
    given = {k: v for k, v in vars(args).items() if k in {f.name for f in fields(TrainConfig)}}
    base: dict = {}
    resume = getattr(args, "resume", None)
    if resume:
        saved = Path(resume) / CONFIG_FILE
        if not saved.is_file():
            raise ConfigError(
                f"--resume {resume}: no {CONFIG_FILE} there; is it a run folder made by `cxrdx train`?"
            )
        base = json.loads(saved.read_text())
        base["out"] = str(resume)
        changed = sorted(k for k, v in given.items() if k not in _RESUME_CHANGEABLE and base.get(k) != v)
        if getattr(args, "config", None):
            raise ConfigError("--config cannot be combined with --resume (the run's own config.json is used)")
        if changed:
            raise ConfigError(
                f"cannot change {', '.join(changed)} when resuming {resume}; only "
                f"{', '.join(sorted(_RESUME_CHANGEABLE - {'out'}))} may change"
            )
        given.pop("out", None)
    elif getattr(args, "config", None):
        base = load_config_file(args.config)
    cfg = make_config(base, **given).validate()
    if not resume:
        if not cfg.data:
            raise ConfigError(
                "--data is required (a cache from `cxrdx prepare`, or a folder with train.csv and val.csv)"
            )
        if not cfg.out:
            raise ConfigError("--out RUN_DIR is required")
    try:
        train(cfg, resume=bool(resume), debug_dump_weights=bool(getattr(args, "debug_dump_weights", False)))
    except CxrdxError:
        raise
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", "0")) == 0 and (Path(cfg.out) / STATE_FILE).is_file():
            _say(f"interrupted; continue from the last completed epoch with: cxrdx train --resume {cfg.out}")
        raise
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise ConfigError(
                f"out of memory ({str(exc).splitlines()[0]}); use a smaller --batch-size or --image-size"
            ) from None
        raise
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    S = argparse.SUPPRESS  # only flags actually given override the config file / the resumed config
    p = subparsers.add_parser(
        "train",
        help="train DenseNet121 on a prepared cache (or CSV splits); resumable; DDP via torchrun",
        description="Train the 14-finding network with the seed's class-weighted BCE, Adam and "
        "ReduceLROnPlateau on val loss, early stopping, best/last safetensors checkpoints, TensorBoard "
        "events and the resolved config in RUN_DIR. Multi-GPU: torchrun --nproc_per_node N -m cxrdx train ...",
        argument_default=S,
    )
    p.add_argument(
        "--data",
        metavar="CACHE_OR_CSV",
        help="cache folder from `cxrdx prepare`, or a folder with train.csv and val.csv",
    )
    p.add_argument("--out", metavar="RUN_DIR", help="run folder to create")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of settings (flags override it)")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run from its last completed epoch"
    )
    p.add_argument("--images", metavar="DIR", help="CSV data: folder the image names are relative to")
    p.add_argument("--arch", help="densenet121 (default) or densenet-tiny (tests)")
    p.add_argument(
        "--init", metavar="FILE", help="ImageNet weights (torchvision densenet121-*.pth) to start from"
    )
    p.add_argument("--epochs", type=int, help="maximum epochs (default 20)")
    p.add_argument("--batch-size", type=int, help="images per step per process (default 32)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 1e-4)")
    p.add_argument("--weight-decay", type=float, help="Adam weight decay (default 0)")
    p.add_argument("--image-size", type=int, help="input size; must match the cache (default: the cache's)")
    p.add_argument("--lr-factor", type=float, help="ReduceLROnPlateau factor (default 0.1)")
    p.add_argument("--lr-patience", type=int, help="ReduceLROnPlateau patience in epochs (default 1)")
    p.add_argument(
        "--patience",
        dest="early_stop_patience",
        type=int,
        help="early-stopping patience in epochs (default 5)",
    )
    p.add_argument(
        "--flip", action=argparse.BooleanOptionalAction, help="random horizontal flips (default on)"
    )
    p.add_argument(
        "--affine",
        action=argparse.BooleanOptionalAction,
        help="small random rotation/scale/shift (default off)",
    )
    p.add_argument(
        "--findings", nargs="+", metavar="NAME", help="findings the reported mean AUROC averages over"
    )
    p.add_argument("--train-split", help="split name for training (default train)")
    p.add_argument("--val-split", help="split name for validation (default val)")
    p.add_argument(
        "--workers", type=int, help="loader processes (default: 0 on CPU with a cache, else min(8, CPUs))"
    )
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument(
        "--amp", choices=["auto", "bf16", "fp16", "off"], help="mixed precision on CUDA (default auto)"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="channels_last memory format (default on)",
    )
    p.add_argument("--sync-bn", action="store_true", help="synchronise BatchNorm across GPUs (DDP, CUDA)")
    p.add_argument(
        "--freeze-bn",
        action="store_true",
        help="BatchNorm uses running statistics (small batches, exact DDP)",
    )
    p.add_argument("--max-minutes", type=float, help="time budget: stop when another epoch would not fit")
    p.add_argument("--max-steps-per-epoch", type=int, help="cap steps per epoch (quick runs)")
    p.add_argument("--norm-images", type=int, help="training images sampled for mean/std (default 2000)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--threads", type=int, help="CPU threads per process")
    p.add_argument("--debug-dump-weights", action="store_true", help=S)
    p.set_defaults(func=_run_train)
