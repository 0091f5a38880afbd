"""Process-wide setup of a training run: device, mixed precision, and putting torch's global switches back."""

from __future__ import annotations

import functools

import torch

from cxrdx.device import choose_device
from cxrdx.errors import ConfigError
from cxrdx.training.config import TrainConfig


def restores_torch_globals(fn):
    """train() sets process-wide torch switches (threads, determinism); put them back for API callers."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        saved = (
            torch.get_num_threads(),
            torch.are_deterministic_algorithms_enabled(),
            torch.backends.cudnn.benchmark,
        )
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(saved[0])
            torch.use_deterministic_algorithms(saved[1])
            torch.backends.cudnn.benchmark = saved[2]

    return wrapper


def pick_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    device = choose_device(cfg.device, local_rank)
    if cfg.sync_bn and device.type != "cuda":
        raise ConfigError(
            "--sync-bn needs CUDA (PyTorch's SyncBatchNorm does not run on CPU); use --freeze-bn instead"
        )
    return device


def choose_amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        if cfg.amp in ("bf16", "fp16"):
            raise ConfigError(
                f"--amp {cfg.amp} needs a CUDA GPU; on CPU training runs in fp32 (use --amp auto or off)"
            )
        return None
    if cfg.amp == "off":
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16
