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


# ``--amp auto`` on CPU stays fp32: bf16 autocast was 2.2x faster per step at 320 px on an idle AMX
# CPU and kept the demo's AUROC, but it was slower at the demo's 64 px and many times slower on a
# shared CPU (docs/performance.md section 11). ``--amp bf16`` asks for it.
CPU_AUTO_BF16 = False


def cpu_bf16_native() -> bool:
    """True when this CPU does bf16 matrix maths in hardware (AMX or AVX512-BF16) and oneDNN uses it:
    where bf16 autocast is fast; elsewhere PyTorch emulates bf16 and it is slower than fp32."""
    from cxrdx.device import cpu_info

    if not {"amx_bf16", "avx512_bf16"} & cpu_info()[1]:
        return False
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a PyTorch without the (private) probe
        return False


def choose_amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the forward pass, or None for fp32. Weights, optimizer state, the loss
    and checkpoints stay fp32 whatever is chosen (autocast only runs the layers in lower precision)."""
    if device.type == "cpu":
        if cfg.amp == "fp16":
            raise ConfigError("--amp fp16 needs a CUDA GPU; on CPU use --amp bf16 (or auto, or off)")
        if cfg.amp == "bf16" or (cfg.amp == "auto" and CPU_AUTO_BF16 and cpu_bf16_native()):
            return torch.bfloat16
        return None
    if device.type != "cuda":
        if cfg.amp in ("bf16", "fp16"):
            raise ConfigError(
                f"--amp {cfg.amp} needs a CUDA GPU or a CPU; on {device.type} training runs in fp32"
            )
        return None
    if cfg.amp == "off":
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16
