"""`cxrdx train`: the whole training loop, top to bottom, in ``train()``.

Read ``train()`` from the top: setup (distributed, device, seeds) -> data (cache or
CSVs, training-split normalisation and class weights) -> model -> optimizer and
schedule -> resume -> epoch loop (train, validate, schedule, checkpoint, early stop)
-> result. The helpers it calls live beside this file: config.py (the options),
data.py (sources, loaders, batch -> input), loss.py, augment.py, distributed.py,
validate.py (the validation pass), state.py (resume state), provenance.py.

Decisions (why):

- Normalisation mean/std and the class weights of the loss come from the training
  split only (validation and test are normalised with training statistics) and are
  stored in the checkpoint's ``Preprocessing``.
- Checkpoints: ``best.safetensors`` (lowest val loss) and ``last.safetensors``, each
  written atomically (temp file + rename), *after* the resume state ``last_state.pt``
  of the same epoch (see state.py for why that order makes resume safe).
- DDP (``torchrun --nproc_per_node N -m cxrdx train ...``): ``--batch-size`` is per
  process (global batch = N x batch); only rank 0 writes files, logs and the progress
  bar; validation is sharded and its loss all-reduced. BatchNorm normally uses
  per-process batch statistics (standard DDP); ``--sync-bn`` (CUDA) synchronises
  them, and ``--freeze-bn`` uses running statistics (each image's output then no
  longer depends on its batch-mates, which is also what makes N-process training
  mathematically identical to one process on the same global batch).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrdx.errors import ConfigError
from cxrdx.files import atomic_write, atomic_write_json
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.metrics.auroc import mean_auroc, per_finding_auroc
from cxrdx.reporter import Reporter, reporter_or_default
from cxrdx.training.calibration import fit_temperature_into, prior_from_weights
from cxrdx.training.config import BEST_FILE, CONFIG_FILE, HISTORY_FILE, LAST_FILE, STATE_FILE, TrainConfig
from cxrdx.training.data import load_data, pixel_stats, to_input, train_loader, val_loader
from cxrdx.training.distributed import agree, all_mean, init_distributed
from cxrdx.training.loss import WeightedBCEWithLogits, class_weights
from cxrdx.training.progress import progress_bar
from cxrdx.training.provenance import finish_model_cards, model_card, provenance
from cxrdx.training.runtime import choose_amp_dtype, pick_device, restores_torch_globals
from cxrdx.training.state import (
    check_run_dir,
    held_from_state,
    held_to_state,
    load_state,
    reconcile_checkpoints,
    restore_rng,
    rng_state,
)
from cxrdx.training.validate import validate


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


@restores_torch_globals
def train(
    config: TrainConfig,
    resume: bool = False,
    debug_dump_weights: bool = False,
    reporter: Reporter | None = None,
) -> TrainResult:
    """Train (or resume) a run; returns where the best checkpoint is and how it scored; lines go to ``reporter``."""
    reporter = reporter_or_default(reporter, "train")
    cfg = config.validate()
    wall_start = time.monotonic()

    # ---- setup: processes, device, precision, seeds -------------------------------------
    rank, world, local_rank = init_distributed(cfg.device)
    is_main = rank == 0
    device = pick_device(cfg, local_rank)
    if device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // max(1, local_world)))
    amp_dtype = choose_amp_dtype(cfg, device)
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
        check_run_dir(run_dir, resume)
        atomic_write_json(run_dir / CONFIG_FILE, asdict(cfg))  # the resolved config, before any work

    # ---- data: sources, normalisation and class weights from the training split --------
    data = load_data(cfg)
    train_src, val_src, size = data.train, data.val, data.size
    if is_main and data.leakage:
        reporter.warn(f"{data.leakage}; allowed by --allow-patient-overlap (recorded in the checkpoint)")
    state = load_state(run_dir, reporter) if resume else None
    if state is not None:
        mean, std = float(state["norm_mean"]), float(state["norm_std"])
        w_pos, w_neg = state["w_pos"].numpy(), state["w_neg"].numpy()
    else:
        mean, std = pixel_stats(train_src, cfg.norm_images)
        w_pos, w_neg = class_weights(train_src.labels)
    preprocessing = Preprocessing(size=size, channels=3, pixel_range=(0.0, 1.0), mean=(mean,), std=(std,))
    criterion = WeightedBCEWithLogits(w_pos, w_neg).to(device)
    val_criterion = WeightedBCEWithLogits(w_pos, w_neg, reduction="none").to(device)
    names = data.labels  # model outputs: the findings the data label (or --labels); NaN targets are masked
    untrainable = [n for n, f in zip(names, w_neg, strict=True) if f == 0]
    if is_main and untrainable:
        reporter.note(
            f"note: no positive training images for {', '.join(untrainable)}; these outputs will not learn"
        )
    train_batches, train_sampler = train_loader(train_src, cfg, device, rank, world)
    val_batches = val_loader(val_src, cfg, device, rank, world)

    # ---- model ----------------------------------------------------------------------------
    from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
    from cxrdx.model.networks import build_model

    model = build_model(cfg.arch, len(names), 3)
    if cfg.init and state is None:
        from cxrdx.model.init_weights import (
            load_init_features,  # imports torchvision-layout weights by name, strictly
        )
        from cxrdx.model.pretrained import resolve_weights  # a file, or a registry name pulled once

        load_init_features(resolve_weights(cfg.init), model)
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
    best_val = last_val = None  # (validation outputs, labels, epoch) of the best and the last epoch

    # ---- resume ------------------------------------------------------------------------------
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
        elapsed_before = float(state["elapsed"])
        best, bad_epochs = dict(state["best"]), int(state["bad_epochs"])
        history = list(state["history"])
        best_val, last_val = held_from_state(state.get("best_val")), held_from_state(state.get("last_val"))
        restore_rng(state["rng"], augment_rng, rank)
        if is_main:
            reconcile_checkpoints(run_dir, state, cfg, preprocessing, data, reporter)
            atomic_write_json(
                run_dir / HISTORY_FILE, history
            )  # it too may lag the state (killed while written)
            reporter.note(
                f"resuming {run_dir} after epoch {start_epoch} (best val loss {best['val_loss']:.4f} at epoch {best['epoch']})"
            )
    del state

    def meta_for(epoch: int, val_loss: float, auroc: dict) -> CheckpointMeta:
        return CheckpointMeta(
            architecture=cfg.arch,
            labels=list(names),
            in_channels=3,
            preprocessing=preprocessing,
            provenance=provenance(cfg, data, epoch, val_loss, auroc, best, world),
            model_card=model_card(cfg, data, epoch),
            calibration=prior_from_weights(w_pos, w_neg, names),
        )

    writer = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir), purge_step=global_step + 1 if global_step else None)
        reporter.note(
            f"training {cfg.arch} on {data.desc}: {len(train_src)} train / {len(val_src)} val images at {size} px, "
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
            if agree(elapsed + float(np.mean(epoch_seconds)) > cfg.max_minutes * 60, device, world):
                stopped = "time_budget"  # another epoch would not fit in the budget
                break
        epoch_start = time.monotonic()
        train_sampler.set_epoch(epoch)
        _set_train_mode(model, cfg.freeze_bn)
        steps = (
            len(train_batches)
            if cfg.max_steps_per_epoch is None
            else min(len(train_batches), cfg.max_steps_per_epoch)
        )
        bar = progress_bar(steps, f"epoch {epoch + 1}/{cfg.epochs}", enabled=is_main and cfg.progress)
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        seen, shown_loss, tick = 0, float("nan"), time.monotonic()
        for step, (squares, targets) in enumerate(train_batches):
            if step >= steps:
                break
            x = to_input(squares, preprocessing, device, memory_format, augment_rng, cfg, train=True)
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
        train_loss = all_mean(loss_sum, seen, device, world)

        # validate: sharded over processes, loss all-reduced, predictions gathered for AUROC
        val_loss, probs, labels = validate(
            net,
            model,
            val_batches,
            val_criterion,
            preprocessing,
            device,
            memory_format,
            amp_dtype,
            cfg,
            world,
        )
        # findings without both positives and negatives in validation have no AUROC: left out
        auroc = {k: v for k, v in per_finding_auroc(labels, probs, names).items() if v is not None}
        auroc_mean = mean_auroc(auroc, cfg.findings)
        lr_now = optimizer.param_groups[0]["lr"]
        scheduler.step(val_loss)

        # early stopping bookkeeping (identical in every process: val_loss is all-reduced)
        improved = val_loss < best["val_loss"] - cfg.min_delta
        last_val = (probs, labels, epoch + 1)  # raw outputs: the temperature is fitted on them at the end
        if improved:
            best_val = last_val
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

        # checkpoint: resume state first, then best/last .safetensors (see state.py)
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
                "rng": rng_state(augment_rng),
                "best_val": held_to_state(best_val),  # so a resumed run fits best's temperature too
                "last_val": held_to_state(last_val),
            }
            atomic_write(run_dir / STATE_FILE, lambda tmp, s=state: torch.save(s, tmp))
            del state
            if improved:
                save_checkpoint(run_dir / BEST_FILE, model, meta_for(epoch + 1, val_loss, auroc))
            save_checkpoint(run_dir / LAST_FILE, model, meta_for(epoch + 1, val_loss, auroc))
            atomic_write_json(run_dir / HISTORY_FILE, history)
            writer.add_scalar("train/epoch_loss", train_loss, global_step)
            writer.add_scalar("val/loss", val_loss, global_step)
            for name, value in auroc.items():
                writer.add_scalar(f"val/auroc/{name}", value, global_step)
            if auroc_mean is not None:
                writer.add_scalar("val/auroc_mean", auroc_mean, global_step)
            writer.add_scalar("lr", lr_now, global_step)
            writer.add_scalar("train/images_per_s", record["train_images_per_s"], global_step)
            writer.flush()
            reporter.note(
                f"epoch {epoch + 1}/{cfg.epochs}: train loss {train_loss:.4f}  val loss {val_loss:.4f}"
                f"{'  val AUROC ' + format(auroc_mean, '.3f') if auroc_mean is not None else ''}  lr {lr_now:.2g}  "
                f"{epoch_seconds[-1]:.0f} s{'  (best)' if improved else ''}"
            )

    # ---- result: temperature fitted on validation into best/last (calibration.py) ---------------
    completed = history[-1]["epoch"] if history else start_epoch
    if is_main:  # epochs trained and the best epoch, in both files' model cards
        finish_model_cards(run_dir, completed, int(best["epoch"]))
    for file, held in ((BEST_FILE, best_val), (LAST_FILE, last_val)):
        if is_main and held is not None and len(held[1]):
            where = {"by": "cxrdx train", "dataset": data.path, "split": cfg.val_split, "epoch": held[2]}
            fit_temperature_into(run_dir / file, held[0], held[1], where)
    if is_main and (run_dir / BEST_FILE).is_file():  # OOD reference: train features, val threshold (ood.py)
        from cxrdx.model.ood import fit_ood_into_checkpoint

        where = {"by": "cxrdx train", "dataset": data.path, "splits": [cfg.train_split, cfg.val_split]}
        fit_ood_into_checkpoint(run_dir / BEST_FILE, train_src, val_src, device=device, fitted_on=where)
    if debug_dump_weights:  # every process writes its own weights (tests compare them across ranks)
        from safetensors.torch import save_file

        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            str(run_dir / f"rank{rank}.safetensors"),
        )
    if writer is not None:
        writer.close()
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return TrainResult(
        run_dir=run_dir,
        best_path=run_dir / BEST_FILE,
        last_path=run_dir / LAST_FILE,
        epochs_completed=completed,
        best_epoch=int(best["epoch"]),
        best_val_loss=float(best["val_loss"]),
        best_val_auroc=dict(best["auroc"]),
        best_val_auroc_mean=best["auroc_mean"],
        stopped=stopped,
        seconds=elapsed_before + (time.monotonic() - wall_start),
        history=history,
    )


def _set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
