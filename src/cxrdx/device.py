"""Choosing where to compute: the one rule for ``--device`` and for how many CPUs this process may use."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cxrdx.errors import ConfigError

if TYPE_CHECKING:
    import torch


def available_threads() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def choose_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> the local rank's GPU when CUDA is available, else the CPU; otherwise checked as given."""
    import torch

    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this PyTorch has no CUDA GPU available; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device
