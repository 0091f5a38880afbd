"""`cxrdx train`: flags -> TrainConfig -> ``cxrdx.training.loop.train`` -> a summary on stdout."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cxrdx.errors import ConfigError, CxrdxError


def add_arguments(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS  # only flags actually given override the config file / the resumed config
    p.argument_default = S
    p.description = (
        "Train the 14-finding network with the seed's class-weighted BCE, Adam and "
        "ReduceLROnPlateau on val loss, early stopping, best/last safetensors checkpoints, TensorBoard "
        "events and the resolved config in RUN_DIR. Multi-GPU: torchrun --nproc_per_node N -m cxrdx train ..."
    )
    p.add_argument(
        "--data",
        nargs="+",
        metavar="CACHE_OR_CSV",
        help="cache folder from `cxrdx prepare`, or a folder with train.csv and val.csv; several datasets "
        "at once (each with its own label set and patient-disjoint splits): --data A B",
    )
    p.add_argument(
        "--labels",
        nargs="+",
        metavar="NAME",
        help="the model's outputs (default: every finding the data label, NIH's 14 first)",
    )
    p.add_argument(
        "--uncertain",
        choices=["ignore", "zeros", "ones"],
        help="uncertain (-1) labels: ignore = masked (default), zeros or ones (the CheXpert paper's policies)",
    )
    p.add_argument(
        "--blank",
        choices=["negative", "unlabelled"],
        help="CheXpert / MIMIC-CXR 'not mentioned' cells: negative (default) or unlabelled (masked)",
    )
    p.add_argument("--views", help="views to train on: frontal (default), all, or a list like PA,AP")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder to create")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of settings (flags override it)")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run from its last completed epoch"
    )
    p.add_argument("--images", metavar="DIR", help="CSV data: folder the image names are relative to")
    p.add_argument("--arch", help="densenet121 (default) or densenet-tiny (tests)")
    p.add_argument(
        "--init",
        metavar="FILE|NAME",
        help="weights to start the features from: a file (torchvision densenet121-*.pth, a cxrdx checkpoint) "
        "or a registry name (`cxrdx weights list`), e.g. imagenet",
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
        help="BatchNorm uses the running statistics of --init (required; small batches, exact DDP)",
    )
    p.add_argument(
        "--allow-patient-overlap",
        action="store_true",
        help="train although a patient is in both splits (refused by default; recorded in the checkpoint)",
    )
    p.add_argument("--max-minutes", type=float, help="time budget: stop when another epoch would not fit")
    p.add_argument("--max-steps-per-epoch", type=int, help="cap steps per epoch (quick runs)")
    p.add_argument("--norm-images", type=int, help="training images sampled for mean/std (default 2000)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--threads", type=int, help="CPU threads per process")
    p.add_argument("--debug-dump-weights", action="store_true", help=S)


def run(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from cxrdx.training.config import STATE_FILE, TrainConfig, load_config_file, make_config, resume_config
    from cxrdx.training.loop import train
    from cxrdx.training.progress import say

    given = {k: v for k, v in vars(args).items() if k in {f.name for f in fields(TrainConfig)}}
    resume = getattr(args, "resume", None)
    base: dict = {}
    if resume:
        base = resume_config(resume, given, getattr(args, "config", None))
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
    is_main = int(os.environ.get("RANK", "0")) == 0
    try:
        result = train(
            cfg, resume=bool(resume), debug_dump_weights=bool(getattr(args, "debug_dump_weights", False))
        )
    except CxrdxError:
        raise
    except KeyboardInterrupt:
        if is_main and (Path(cfg.out) / STATE_FILE).is_file():
            say(f"interrupted; continue from the last completed epoch with: cxrdx train --resume {cfg.out}")
        raise
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise ConfigError(
                f"out of memory ({str(exc).splitlines()[0]}); use a smaller --batch-size or --image-size"
            ) from None
        raise
    if is_main:
        print_summary(result, cfg)
        from cxrdx.inference.export import prepare_export_note

        prepare_export_note("train", result.best_path)  # so the first `cxrdx predict` is fast
    return 0


def print_summary(result, cfg) -> None:
    """What the run ended with, and the command that evaluates its best checkpoint on the test split."""
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
    first = cfg.data if isinstance(cfg.data, str) else cfg.data[0]
    data = (
        first
        if (Path(first) / "cache.json").is_file()
        else str(Path(first).with_name("test.csv") if Path(first).is_file() else Path(first) / "test.csv")
    )
    print(
        f"next: cxrdx evaluate --weights {result.best_path} --data {data} --split test --out {result.run_dir / 'evaluation'}"
    )
