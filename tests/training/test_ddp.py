"""DDP on CPU (gloo, 2 processes via torchrun) equals one process on the same global batch.

BatchNorm in training mode normalises with the statistics of each process's own
half-batch, which is not the full batch's statistics, so N-process and 1-process
training genuinely differ (that is standard DDP). SyncBatchNorm would fix that but
PyTorch runs it on GPUs only. The test therefore trains with ``--freeze-bn``
(BatchNorm uses running statistics): every image's loss then depends only on the
image, the mean of the two half-batch gradients (what DDP's all-reduce computes)
is exactly the full-batch gradient, and the two runs must agree to float rounding.
Frozen BatchNorm needs real running statistics (``--freeze-bn`` requires ``--init``), so
the test writes an init checkpoint whose BatchNorm statistics come from a few batches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file
from test_train import make_toy_cache

from cxrdx.cli import main as cli_main
from cxrdx.model.checkpoint import CheckpointMeta, read_checkpoint, save_checkpoint
from cxrdx.model.networks import build_model


def _run(args: list[str], cwd) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _make_init(path) -> dict[str, torch.Tensor]:
    """A densenet-tiny checkpoint with BatchNorm statistics from random batches; returns its state.

    It is built after seeding 0 like train() does, so its head equals the head train() builds and
    the returned state is exactly the network train() starts from with ``--init path``.
    """
    torch.manual_seed(0)
    model = build_model("densenet-tiny")
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(16, 3, 32, 32))
    assert any(  # the statistics really moved off 0/1
        k.endswith("running_mean") and v.abs().max() > 1e-3 for k, v in model.state_dict().items()
    )
    save_checkpoint(path, model, CheckpointMeta(architecture="densenet-tiny"))
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_two_gloo_processes_match_one_process(tmp_path):
    cache = make_toy_cache(tmp_path / "cache", n_train=64, n_val=16, size=32)
    init = _make_init(tmp_path / "init.safetensors")
    common = [
        "train",
        "--data",
        str(cache),
        "--arch",
        "densenet-tiny",
        "--epochs",
        "2",
        "--lr",
        "1e-3",
        "--no-flip",
        "--freeze-bn",
        "--init",
        str(tmp_path / "init.safetensors"),
        "--deterministic",
        "--workers",
        "0",
        "--threads",
        "1",
        "--no-progress",
        "--debug-dump-weights",
    ]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert cli_main([*common, "--batch-size", "16", "--out", str(single)]) == 0  # in-process: one import less
    _run(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "cxrdx",
            *common,
            "--batch-size",
            "8",
            "--out",
            str(ddp),
        ],
        tmp_path,
    )

    rank0, rank1 = load_file(ddp / "rank0.safetensors"), load_file(ddp / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    for key in rank0:  # DDP keeps replicas bit-identical
        assert torch.equal(rank0[key], rank1[key]), key

    one = load_file(single / "rank0.safetensors")
    moved = max((one[k].float() - init[k].float()).abs().max().item() for k in one)
    differ = max((one[k].float() - rank0[k].float()).abs().max().item() for k in one)
    assert moved > 1e-3  # 8 Adam steps at lr 1e-3 really changed the weights ...
    assert differ < 1e-5  # ... and both runs changed them identically (float rounding only)

    # only rank 0 wrote the run's files, and its checkpoint holds the shared weights
    assert len(list(ddp.glob("events.out.tfevents.*"))) == 1
    saved, meta = read_checkpoint(ddp / "last.safetensors")
    assert all(torch.equal(saved[k], rank0[k]) for k in saved)
    assert meta.provenance["processes"] == 2
    # validation loss is all-reduced over the two shards: the mean over the whole split
    h1 = json.loads((single / "history.json").read_text())
    h2 = json.loads((ddp / "history.json").read_text())
    for a, b in zip(h1, h2, strict=True):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-5
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5
