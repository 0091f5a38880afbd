"""Choosing where to compute: the one rule for ``--device`` and for how many CPUs this process may use."""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path
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


# the instruction sets that decide CPU inference speed and int8 behaviour, as /proc/cpuinfo names them
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "asimd")


@cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """(CPU model name, its feature flags) from /proc/cpuinfo; the platform's name and no flags elsewhere."""
    model, flags = "", frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and not model:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = frozenset(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def isa_line() -> str:
    """The CPU's model and its ``ISA_FLAGS`` (what every recorded speed figure names)."""
    model, flags = cpu_info()
    have = [f for f in ISA_FLAGS if f in flags]
    return f"{model} [{' '.join(have) or 'no AVX2/AVX-512/NEON flags'}]"


# where none of these exists on Linux, no CUDA (NVIDIA, ROCm, WSL) device can be visible to torch
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def no_gpu_possible() -> bool:
    """True on a Linux machine with none of ``GPU_DEVICE_NODES`` (elsewhere: unknown, False)."""
    return platform.system() == "Linux" and not any(Path(p).exists() for p in GPU_DEVICE_NODES)


def inference_device(name: str = "auto") -> str | torch.device:
    """``choose_device`` without importing torch where that cannot change the answer: "cpu" for ``cpu``,
    and for ``auto`` when ``no_gpu_possible``, so an ONNX/OpenVINO job never loads torch (about 2 s of
    `cxrdx explain`'s 8 s for 12 films; docs/performance.md, section 10b)."""
    if name == "cpu" or (name == "auto" and no_gpu_possible()):
        return "cpu"
    return choose_device(name)


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
