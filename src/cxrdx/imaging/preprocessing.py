"""Gray image -> network input: THE one normalisation, shared by prepare, train, predict, export, evaluate.

``Preprocessing.to_input`` takes numpy or torch and returns the same library, so the
training loop can normalise on the device after a 1-byte-per-pixel host-to-device copy
(and after augmenting in [0, 1]) with exactly the arithmetic predict and export use on
the host. torch is imported only when a tensor is given, so numpy-only callers (ONNX
inference, the cache builder) do not pay for it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxrdx.errors import ConfigError
from cxrdx.imaging.letterbox import MIN_IMAGE_SIZE, Letterbox, letterbox

# Keys an old checkpoint may carry that no longer mean anything: ``extra`` was never
# read, and ``resize`` had one legal value ("letterbox").
_RETIRED_KEYS = ("resize", "extra")


@dataclass
class Preprocessing:
    """How a [0, 1] gray image becomes the tensor a given network expects.

    ``input = (pixel_lo + img * (pixel_hi - pixel_lo) - mean[c]) / std[c]`` per channel,
    after letterboxing to ``size`` and replicating gray to ``channels``. This covers
    our own models (range [0, 1], training-set mean/std), ImageNet-initialised
    CheXNet ports (ImageNet mean/std) and torchxrayvision ([-1024, 1024], 1 channel).
    """

    size: int = 320
    channels: int = 3
    pixel_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)

    def __post_init__(self) -> None:
        self.pixel_range = tuple(float(v) for v in self.pixel_range)  # type: ignore[assignment]
        self.mean = tuple(float(v) for v in np.atleast_1d(self.mean))
        self.std = tuple(float(v) for v in np.atleast_1d(self.std))
        if self.size < MIN_IMAGE_SIZE:
            raise ConfigError(
                f"image size {self.size} is too small for DenseNet121; use at least {MIN_IMAGE_SIZE}"
            )
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise ConfigError(f"{name} needs 1 or {self.channels} values, got {len(values)}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std must be positive, got {self.std}")

    def to_input(self, gray: Any) -> Any:
        """(N, H, W) or (N, 1, H, W) gray -> (N, C, H, W) float32 network input, numpy or torch alike.

        ``gray`` is float in [0, 1], or uint8 with v meaning v / 255. A torch tensor stays
        on its device; the (1, C, 1, 1) mean/std are made once per device, not copied per batch.
        """
        if type(gray).__module__.startswith("torch"):
            return self._to_input_torch(gray)
        x = _unit_gray(np.asarray(gray))
        x = _as_n1hw(x, x.ndim)
        lo, hi = self.pixel_range
        x = lo + x * (hi - lo)
        mean = np.broadcast_to(np.asarray(self.mean, dtype=np.float32), (self.channels,))[None, :, None, None]
        std = np.broadcast_to(np.asarray(self.std, dtype=np.float32), (self.channels,))[None, :, None, None]
        return (x - mean) / std  # (N, 1, H, W) against (1, C, 1, 1): gray replicated to C channels

    def _to_input_torch(self, gray: Any) -> Any:
        import torch

        x = gray.float().div(255.0) if gray.dtype == torch.uint8 else gray.float()
        x = _as_n1hw(x, x.dim())
        lo, hi = self.pixel_range
        mean, std = _norm_tensors(self.mean, self.std, self.channels, str(x.device))
        x = lo + x * (hi - lo)
        return (x - mean) / std

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """One [0, 1] gray image (or uint8, v meaning v / 255) -> ((C, S, S) float32, its letterbox)."""
        square, box = letterbox(image, self.size)
        return self.to_input(square[None])[0], box

    def gray_square(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """One image -> ((1, S, S) float32 gray in [0, 1], its letterbox): the input of a graph with the
        normalisation folded into its first convolution (cxrdx.inference.fold), no mean/std applied."""
        square, box = letterbox(image, self.size)
        return _unit_gray(square)[None], box

    def to_dict(self) -> dict:
        return {
            "size": self.size,
            "channels": self.channels,
            "pixel_range": self.pixel_range,
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        """Read a checkpoint's record; retired keys of old checkpoints are ignored.

        An old record naming a resize other than letterbox is still refused: we cannot
        reproduce it, and silently letterboxing would feed the network other pixels.
        """
        resize = data.get("resize", "letterbox")
        if resize != "letterbox":
            raise ConfigError(f"unknown resize mode {resize!r}; only 'letterbox' is supported")
        known = {k: data[k] for k in ("size", "channels", "pixel_range", "mean", "std") if k in data}
        return cls(**known)


def _unit_gray(x: np.ndarray) -> np.ndarray:
    """float32 gray in [0, 1]: uint8 v means v / 255."""
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32, copy=False)


def _as_n1hw(x: Any, ndim: int) -> Any:
    if ndim == 3:
        return x[:, None]
    if ndim == 4 and x.shape[1] == 1:
        return x
    raise ValueError(f"expected gray images of shape (N, H, W) or (N, 1, H, W), got {tuple(x.shape)}")


@functools.lru_cache(maxsize=8)
def _norm_tensors(mean: tuple, std: tuple, channels: int, device: str) -> tuple[Any, Any]:
    """(1, C, 1, 1) mean and std on the device, made once (not a host-to-device copy per batch)."""
    import torch

    def make(values: tuple) -> torch.Tensor:
        v = np.broadcast_to(np.asarray(values, dtype=np.float32), (channels,)).copy()
        return torch.from_numpy(v).to(device).view(1, channels, 1, 1)

    return make(mean), make(std)
