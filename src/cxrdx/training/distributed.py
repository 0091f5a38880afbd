"""DDP plumbing: start the process group under torchrun, average over processes, share rank 0's decisions.

``--batch-size`` is per process (global batch = N x batch); only rank 0 writes files
and logs. Every decision that ends the loop (early stopping, the time budget) must be
the same in every process, or the others would wait forever in the next all-reduce.
"""

from __future__ import annotations

import os

import torch


def init_distributed(device_name: str) -> tuple[int, int, int]:
    """(rank, world size, local rank); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return rank, world, local_rank


def all_mean(total: torch.Tensor, count: int, device: torch.device, world: int) -> float:
    """sum(total) / sum(count) over all processes: the exact mean, however the shards are sized."""
    pair = torch.stack([total.double(), torch.tensor(float(count), dtype=torch.float64, device=device)])
    if world > 1:
        torch.distributed.all_reduce(pair)
    return float(pair[0] / pair[1]) if pair[1] > 0 else float("nan")


def agree(flag: bool, device: torch.device, world: int) -> bool:
    """Rank 0's decision, for every process (clocks differ slightly between processes)."""
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.broadcast(t, src=0)
    return bool(t.item())
