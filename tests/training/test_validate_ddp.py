"""Distributed validation: ranks with shards of unequal length finish (gloo on CPU), the loss is the exact
mean over the split, and the DDP wrapper's forward (a collective per call) is not used to validate."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.training.config import TrainConfig

N_IMAGES, BATCH = 25, 2  # validation batches of 4: rank 0 has 13 images (4 batches), rank 1 12 (3)


def _setup(tmp: Path):
    from cxrdx.data.loaders import CacheBatches
    from cxrdx.labels import FINDINGS
    from cxrdx.model.networks import build_model
    from cxrdx.training.loss import WeightedBCEWithLogits

    rng = np.random.default_rng(0)
    images, pixels = tmp / "images.npy", rng.integers(0, 256, (N_IMAGES, 32, 32), dtype=np.uint8)
    if not images.exists():
        np.save(images, pixels)
    labels = (rng.random((N_IMAGES, len(FINDINGS))) < 0.3).astype(np.float32)
    source = CacheBatches(images, np.arange(N_IMAGES), labels)
    torch.manual_seed(0)
    model = build_model("densenet-tiny")
    w = np.full(len(FINDINGS), 0.5)
    criterion = WeightedBCEWithLogits(w, w, reduction="none")
    cfg = TrainConfig(
        data="x", out=str(tmp), arch="densenet-tiny", batch_size=BATCH, workers=0, progress=False
    )
    pre = Preprocessing(size=32, channels=3, pixel_range=(0.0, 1.0), mean=(0.5,), std=(0.25,))
    return source, model, criterion, cfg, pre


def _rank(rank: int, world: int, port: int, tmp: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from cxrdx.training.data import val_loader
    from cxrdx.training.validate import validate

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    source, model, criterion, cfg, pre = _setup(Path(tmp))
    net = DistributedDataParallel(model)
    calls = []
    wrapped = net.forward
    net.forward = lambda *a, **k: calls.append(1) or wrapped(*a, **k)  # count the DDP forwards
    cpu = torch.device("cpu")
    loader = val_loader(source, cfg, cpu, rank, world)
    loss, probs, labels = validate(
        net, model, loader, criterion, pre, cpu, torch.contiguous_format, None, cfg, world
    )
    Path(tmp, f"rank{rank}.json").write_text(
        json.dumps({"loss": loss, "n": len(probs), "batches": len(loader), "ddp_forwards": len(calls)})
    )
    # as the training loop ends: both ranks past their last collective before the group goes
    dist.barrier()
    dist.destroy_process_group()
    # Then out without the interpreter's finalisation: about 1 run in 10 a gloo worker thread still
    # destroying the last collective's work object decrefs a tensor while Python finalises, cannot take
    # the GIL, and aborts the rank after its results are written ("terminate called without an active
    # exception"; core: ProcessGroupGloo::runLoop -> ~AsyncBarrierWork -> gil_scoped_acquire).
    os._exit(0)


def test_ranks_with_unequal_shards_finish_and_validate_with_the_unwrapped_module(tmp_path):
    import torch.multiprocessing as mp
    from conftest import free_port

    from cxrdx.training.data import val_loader
    from cxrdx.training.validate import validate

    source, model, criterion, cfg, pre = _setup(tmp_path)
    cpu = torch.device("cpu")
    one, _, _ = validate(
        model,
        model,
        val_loader(source, cfg, cpu, 0, 1),
        criterion,
        pre,
        cpu,
        torch.contiguous_format,
        None,
        cfg,
        1,
    )
    ctx = mp.start_processes(
        _rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 300  # a rank left waiting in a collective would hang here: fail instead
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("a rank did not finish distributed validation (hung in a collective?)")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["batches"] for r in results] == [4, 3]  # the shards really are unequal
    assert all(r["n"] == N_IMAGES for r in results)  # the outputs of both shards, gathered
    assert all(r["ddp_forwards"] == 0 for r in results)
    assert all(abs(r["loss"] - one) < 1e-6 for r in results)  # the exact mean over all 25 images
