"""Resume state of a run folder: what ``last_state.pt`` holds, how it is read back, and the run-dir checks.

The resume state (weights, optimizer, scheduler, early stopping, RNG, history, and the
validation outputs of the best and the last epoch, on which the temperature is fitted
when the run ends) is written *first* each epoch, atomically; best/last.safetensors follow. A run killed
anywhere therefore resumes from the last state that was completely written, and on
resume any .safetensors file that lags behind that state is rewritten from it
(``reconcile_checkpoints``), so the pair always agrees. Resume granularity is one
epoch: a run killed mid-epoch redoes that epoch.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cxrdx.errors import ConfigError, DataError
from cxrdx.labels import FINDINGS
from cxrdx.reporter import Reporter, reporter_or_default
from cxrdx.training.config import BEST_FILE, LAST_FILE, STATE_FILE, TrainConfig
from cxrdx.training.provenance import model_card, provenance

if TYPE_CHECKING:
    from cxrdx.training.data import TrainingData


def check_run_dir(run_dir: Path, resume: bool) -> None:
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


def rng_state(augment_rng: torch.Generator) -> dict:
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


def restore_rng(state: dict, augment_rng: torch.Generator, rank: int) -> None:
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


def held_to_state(held: tuple | None) -> dict | None:
    """(validation probabilities, labels, epoch) -> tensors that ``torch.load(weights_only=True)`` reads."""
    if held is None:
        return None
    probs, labels, epoch = held
    return {
        "probs": torch.from_numpy(np.asarray(probs)),
        "labels": torch.from_numpy(np.asarray(labels)),
        "epoch": int(epoch),
    }


def held_from_state(saved: dict | None) -> tuple | None:
    """The inverse of ``held_to_state``; None for a state written before these were kept."""
    if not saved:
        return None
    return saved["probs"].numpy(), saved["labels"].numpy(), int(saved["epoch"])


def load_state(run_dir: Path, reporter: Reporter | None = None) -> dict | None:
    """The resume state, or None when the run was killed before its first epoch completed."""
    path = run_dir / STATE_FILE
    if not path.is_file():
        reporter_or_default(reporter, "train").note(
            f"note: {run_dir} has no completed epoch yet ({STATE_FILE} is absent); starting it from the beginning"
        )
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn file cannot happen (atomic rename) but a foreign one can
        raise DataError(
            f"{path}: cannot read the resume state ({exc}); start a new run with another --out"
        ) from None


def reconcile_checkpoints(
    run_dir: Path,
    state: dict,
    cfg: TrainConfig,
    preprocessing,
    data: TrainingData,
    reporter: Reporter | None = None,
) -> None:
    """Make last/best.safetensors agree with the resume state (they are written after it)."""
    from cxrdx.errors import CheckpointError
    from cxrdx.model.checkpoint import CheckpointMeta, read_checkpoint, save_checkpoint
    from cxrdx.model.networks import build_model
    from cxrdx.training.calibration import prior_from_weights

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
            names = data.labels or list(FINDINGS)
            model = build_model(cfg.arch, len(names), 3)
            model.load_state_dict(state["model"], strict=True)
            auroc = best["auroc"] if name == BEST_FILE else {}
            val_loss = state["history"][-1]["val_loss"] if state["history"] else math.nan
            meta = CheckpointMeta(
                labels=list(names),
                architecture=cfg.arch,
                in_channels=3,
                preprocessing=preprocessing,
                provenance=provenance(cfg, data, epoch, val_loss, auroc, best, 1),
                model_card=model_card(cfg, data, epoch),
                calibration=prior_from_weights(state["w_pos"].numpy(), state["w_neg"].numpy(), names),
            )
            save_checkpoint(run_dir / name, model, meta)
            reporter_or_default(reporter, "train").note(
                f"note: {run_dir / name} was behind the resume state (epoch {have} vs {want}); rewrote it"
            )
