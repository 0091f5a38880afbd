"""`cxrdx train`: flags (generated from TrainConfig) -> the train job -> a summary on stdout."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cxrdx.cli.console import ConsoleReporter
from cxrdx.cli.generate import add_config_arguments, given_settings
from cxrdx.jobs import train as JOB


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Train the 14-finding network with the seed's class-weighted BCE, Adam and "
        "ReduceLROnPlateau on val loss, early stopping, best/last safetensors checkpoints, TensorBoard "
        "events and the resolved config in RUN_DIR. Multi-GPU: torchrun --nproc_per_node N -m cxrdx train ..."
    )
    # only flags actually given override the config file / the resumed config
    add_config_arguments(p, JOB.Config, only_given=True)
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of settings (flags override it)")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run from its last completed epoch"
    )
    p.add_argument("--debug-dump-weights", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(job_config=JOB.Config)  # errors naming a setting (`batch_size`) show its flag


def run(args: argparse.Namespace) -> int:
    cfg = JOB.resolve(given_settings(JOB.Config, args), args.resume, args.config)
    reporter = ConsoleReporter("train", prefix="")  # training's lines stay bare: "epoch 3/20: ..."
    result = JOB.run(cfg, reporter, resume=args.resume, debug_dump_weights=args.debug_dump_weights)
    if int(os.environ.get("RANK", "0")) == 0:
        print_summary(result, cfg)
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
