"""The provenance record every checkpoint carries: which data, config, code and epoch made it."""

from __future__ import annotations

import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cxrdx.data.origin import Origin
from cxrdx.training.config import TrainConfig

if TYPE_CHECKING:
    from cxrdx.training.data import TrainingData


def git_commit() -> str | None:
    """The commit of the cxrdx source tree, when it is a git checkout (None for an installed package)."""
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


def provenance(
    cfg: TrainConfig, data: TrainingData, epoch: int, val_loss: float, auroc: dict, best: dict, world: int
) -> dict:
    return {
        "dataset": data.path,
        "data_kind": data.kind,
        "patient_overlap": data.leakage,  # None: the splits are patient-disjoint
        "labels": {  # what the outputs were trained on (partial labels, data/tables.py)
            "outputs": list(data.labels or []),
            "uncertain": cfg.uncertain,
            "blank": cfg.blank,
            "views": cfg.views,
            "datasets": data.datasets,
        },
        "splits": {cfg.train_split: len(data.train), cfg.val_split: len(data.val)},
        "epoch": epoch,
        "val_loss": float(val_loss),
        "val_auroc": auroc,
        "best_epoch": int(best["epoch"]),
        "best_val_loss": float(best["val_loss"]),
        "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        "processes": world,
        "config": asdict(cfg),
    }


def model_card(cfg: TrainConfig, data: TrainingData, epoch: int) -> dict:
    """What the model was trained on, in words (CheckpointMeta.model_card; shown by cxrdx.model.card)."""
    origin = data.origin or Origin()
    split = {cfg.train_split: len(data.train), cfg.val_split: len(data.val)}
    return {
        "dataset": origin.dataset or data.path,
        "kind": origin.kind,
        "images": sum(split.values()),
        "patients": data.patients,
        "split": split,
        "epochs": int(epoch),  # epochs trained so far; finish_model_cards sets the run's total at the end
        "weights_epoch": int(epoch),  # the epoch whose weights the file holds
        "path": data.path,
    }


def finish_model_cards(run_dir: Path, completed: int, best_epoch: int) -> None:
    """At the end of a run: both files' cards say how many epochs were trained and which was best
    (best.safetensors was written at its own epoch, when the total was not known yet)."""
    from cxrdx.model.checkpoint import update_checkpoint_meta
    from cxrdx.training.config import BEST_FILE, LAST_FILE

    for name, weights_epoch in ((BEST_FILE, best_epoch), (LAST_FILE, completed)):
        if not (run_dir / name).is_file():
            continue

        def change(meta, weights_epoch=weights_epoch) -> None:
            card = dict(meta.model_card or {})
            card.update(epochs=int(completed), best_epoch=int(best_epoch), weights_epoch=int(weights_epoch))
            meta.model_card = card

        update_checkpoint_meta(run_dir / name, change)
