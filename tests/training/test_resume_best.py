"""A run killed by SIGKILL after its best epoch and resumed equals the uninterrupted run, best.safetensors
included: its temperature (fitted at the end on the best epoch's validation outputs, which the resume state
keeps), its OOD reference and its model card (epochs trained, best epoch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np
import torch
from test_train import make_toy_cache, tiny_config

from cxrdx.model.checkpoint import read_checkpoint
from cxrdx.training.loop import train


def _same_file(a, b) -> None:
    ta, ma = read_checkpoint(a)
    tb, mb = read_checkpoint(b)
    for key in ta:
        torch.testing.assert_close(tb[key], ta[key], rtol=0, atol=1e-6, msg=key)
    assert mb.calibration["method"] == ma.calibration["method"] == "prior+temperature"
    assert mb.calibration["per_finding"] == ma.calibration["per_finding"]
    for name, t in ma.calibration["temperature"].items():
        assert abs(mb.calibration["temperature"][name] - t) < 1e-6, name
    assert mb.model_card == ma.model_card
    if ma.ood is not None:
        np.testing.assert_allclose(mb.ood["mean"], ma.ood["mean"], atol=1e-5)


def test_sigkill_after_the_best_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    cache = make_toy_cache(tmp_path / "cache")
    # min_delta so large that only epoch 1 improves: the best epoch is over before the kill
    cfg = tiny_config(cache, tmp_path / "whole", epochs=3, min_delta=1e6, early_stop_patience=10)
    whole = train(cfg)
    assert whole.best_epoch == 1 and whole.epochs_completed == 3
    killed = tiny_config(cache, tmp_path / "killed", epochs=3, min_delta=1e6, early_stop_patience=10)
    script = (
        "import json, sys; from cxrdx.training.config import TrainConfig; from cxrdx.training.loop import train; "
        "train(TrainConfig(**json.loads(sys.argv[1])))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(asdict(killed))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    out = tmp_path / "killed"
    try:
        deadline = time.monotonic() + 240
        while not (out / "last_state.pt").exists():  # epoch 1 (the best) is complete: kill during epoch 2
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = torch.load(out / "last_state.pt", weights_only=True)["epoch"]
    assert 1 <= killed_at < 3
    resumed = train(killed, resume=True)
    assert resumed.best_epoch == 1 and resumed.epochs_completed == 3
    for name in ("best.safetensors", "last.safetensors"):
        _same_file(tmp_path / "whole" / name, out / name)
    _, best = read_checkpoint(out / "best.safetensors")
    assert best.model_card["epochs"] == 3 and best.model_card["best_epoch"] == 1
    assert best.model_card["weights_epoch"] == 1


def test_the_model_card_says_epochs_trained_and_the_best_epoch():
    """A 5-epoch run whose best was 3: best.safetensors' card reads "5 epoch(s) trained, best epoch 3"."""
    from cxrdx.model.card import card_lines
    from cxrdx.model.checkpoint import CheckpointMeta

    meta = CheckpointMeta(
        model_card={"dataset": "x", "kind": "real", "epochs": 5, "best_epoch": 3, "weights_epoch": 3}
    )
    assert any("5 epoch(s) trained, best epoch 3" in line for line in card_lines(meta))
    last = CheckpointMeta(
        model_card={"dataset": "x", "kind": "real", "epochs": 5, "best_epoch": 3, "weights_epoch": 5}
    )
    assert any("best epoch 3 (these weights: epoch 5)" in line for line in card_lines(last))
