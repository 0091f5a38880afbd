"""Gray image -> network input: THE recipe and normalisation, shared by prepare, train, predict, export, evaluate.

A checkpoint's ``Preprocessing`` is its publisher's whole recipe: how the film is fitted into
the square (``fit``: letterbox, centre crop, shorter side + crop or ten-crop, stretch;
``cxrdx.imaging.fit``), with which resize kernel (``resize``; ``cxrdx.imaging.resize``), at
which bit depth the resized square is kept (``bits``), and the value range, mean/std or
per-image normalisation. ``square`` is THE function that makes the square: the training cache
(``cxrdx prepare``) stores exactly what ``square`` returns for our own recipe, and every
inference path (Predictor on torch, ONNX, int8, the folded graph, evaluate, calibrate, explain,
the node) feeds what it returns for the checkpoint's recipe.

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
from cxrdx.imaging.fit import FITS, fit_square
from cxrdx.imaging.jpeg import DecodeTarget
from cxrdx.imaging.letterbox import MIN_IMAGE_SIZE, Letterbox, letterbox
from cxrdx.imaging.resize import KERNELS

# ``resize: "legacy"``: a record written before the recipe was (no ``fit`` key): letterbox, 8-bit
# files resized in Pillow's 8-bit mode and the rest in float, no rounding: exactly as before.
LEGACY = "legacy"
NORMALIZATIONS = ("fixed", "per_image")
PER_IMAGE_EPS = 1e-6  # Keras ImageDataGenerator's samplewise_std_normalization: x / (std + 1e-6)
# our own anti-aliased recipe may read a JPEG at a reduced DCT scale; the publishers' recipes decode in full
REDUCED_DECODE_KERNELS = ("pil", LEGACY)
_RECIPE_KEYS = ("fit", "resize", "bits", "resize_to", "crops", "normalization")


@dataclass
class Preprocessing:
    """How a [0, 1] gray image becomes the tensor a given network expects.

    ``square``: ``fit`` the film into ``size`` with the ``resize`` kernel (``resize_to`` and
    ``crops`` for a shorter-side resize and crop or ten-crop), rounded to 8 bits when ``bits``
    is 8. Then ``input = (pixel_lo + img * (pixel_hi - pixel_lo) - mean[c]) / std[c]`` per
    channel (gray replicated to ``channels``), or with ``normalization="per_image"`` the
    image's own mean and std (+1e-6), as Keras' samplewise generators. This covers our own
    models, torchxrayvision, CheXNet and Keras ports, each with its publisher's steps.
    """

    size: int = 320
    channels: int = 3
    pixel_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    fit: str = "letterbox"
    resize: str = "pil"
    bits: int | None = 8  # 8: the resized square is rounded to 8 bits (cxrdx's cache; CheXNet's PIL images)
    resize_to: int | None = None  # resize_crop: the shorter side's length before cropping ``size``
    crops: int = 1  # 10: ten-crop, the outputs of the ten views averaged (CheXNet's evaluation)
    normalization: str = "fixed"

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
        for name, value, known in (
            ("fit", self.fit, FITS),
            ("resize", self.resize, (*KERNELS, LEGACY)),
            ("normalization", self.normalization, NORMALIZATIONS),
        ):
            if value not in known:
                raise ConfigError(f"unknown {name} {value!r}; known: {', '.join(known)}")
        if self.bits not in (None, 8):
            raise ConfigError(f"bits must be 8 or null (float), got {self.bits}")
        if self.crops not in (1, 10) or (self.crops == 10 and self.fit != "resize_crop"):
            raise ConfigError(
                f"crops must be 1, or 10 with fit resize_crop; got {self.crops} with {self.fit}"
            )
        if self.resize == LEGACY and self.fit != "letterbox":
            raise ConfigError("resize 'legacy' (a record older than the recipe) only letterboxes")
        if self.resize_to is not None and self.resize_to < self.size:
            raise ConfigError(f"resize_to {self.resize_to} must be at least size {self.size}")

    @property
    def zero_gray(self) -> float:
        """The [0, 1] gray value at pixel_range's 0: the edge value of torchxrayvision's resize, which
        runs after its normalisation to [-1024, 1024] with cval 0."""
        lo, hi = self.pixel_range
        return -lo / (hi - lo)

    def squares(self, image: np.ndarray) -> tuple[list[np.ndarray], Letterbox]:
        """One gray image ([0, 1] float, or uint8 v meaning v / 255) -> its square(s) and letterbox.

        THE function that makes a network's square: uint8 when ``bits`` is 8, else float32 in [0, 1].
        Several squares only for ten-crop (the centre crop first).
        """
        if self.resize == LEGACY:
            square, box = letterbox(image, self.size)
            return [square], box
        squares, box = fit_square(
            image, self.fit, self.size, self.resize, self.zero_gray, self.resize_to, self.crops
        )
        if self.bits == 8:
            squares = [sq if sq.dtype == np.uint8 else _round_uint8(sq) for sq in squares]
        return squares, box

    def square(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """The first (for ten-crop: the centre) square of ``squares``."""
        squares, box = self.squares(image)
        return squares[0], box

    def views(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """One image -> ((V, C, S, S) network inputs, its letterbox): V = ``crops``, averaged downstream."""
        squares, box = self.squares(image)
        return self.to_input(np.stack(squares)), box

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
        if self.normalization == "per_image":
            x = (x - x.mean((1, 2, 3), keepdims=True)) / (x.std((1, 2, 3), keepdims=True) + PER_IMAGE_EPS)
            return np.repeat(x.astype(np.float32, copy=False), self.channels, axis=1)
        mean = np.broadcast_to(np.asarray(self.mean, dtype=np.float32), (self.channels,))[None, :, None, None]
        std = np.broadcast_to(np.asarray(self.std, dtype=np.float32), (self.channels,))[None, :, None, None]
        return (x - mean) / std  # (N, 1, H, W) against (1, C, 1, 1): gray replicated to C channels

    def _to_input_torch(self, gray: Any) -> Any:
        import torch

        x = gray.float().div(255.0) if gray.dtype == torch.uint8 else gray.float()
        x = _as_n1hw(x, x.dim())
        lo, hi = self.pixel_range
        x = lo + x * (hi - lo)
        if self.normalization == "per_image":
            std, mean = torch.std_mean(x, dim=(1, 2, 3), keepdim=True, correction=0)
            return ((x - mean) / (std + PER_IMAGE_EPS)).expand(-1, self.channels, -1, -1)
        mean, std = _norm_tensors(self.mean, self.std, self.channels, str(x.device))
        return (x - mean) / std

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """One [0, 1] gray image (or uint8, v meaning v / 255) -> ((C, S, S) float32, its letterbox).

        For ten-crop this is the centre crop's input (what Grad-CAM explains); ``views`` gives all ten.
        """
        square, box = self.square(image)
        return self.to_input(square[None])[0], box

    def gray_square(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """One image -> ((1, S, S) float32 gray in [0, 1], its letterbox): the input of a graph with the
        normalisation folded into its first convolution (cxrdx.inference.fold), no mean/std applied."""
        square, box = self.square(image)
        return _unit_gray(square)[None], box

    def gray_views(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """``gray_square`` for every view: ((V, 1, S, S) float32 gray, its letterbox)."""
        squares, box = self.squares(image)
        return _unit_gray(np.stack(squares))[:, None], box

    def describe(self) -> str:
        """The recipe in one line, for summaries."""
        fit = {
            "letterbox": "letterboxed",
            "center_crop": "centre-cropped",
            "stretch": "stretched",
            "resize_crop": f"shorter side {self.resize_to}, {'ten crops' if self.crops == 10 else 'centre crop'}",
        }
        lo, hi = self.pixel_range
        norm = (
            "per-image mean/std"
            if self.normalization == "per_image"
            else f"mean {list(self.mean)}, std {list(self.std)}"
        )
        return (
            f"{self.size} px {fit[self.fit]}, resize {self.resize}, {'8-bit' if self.bits == 8 else 'float'}, "
            f"{self.channels} channel(s), pixel range [{lo:g}, {hi:g}], {norm}"
        )  # fmt: skip

    @property
    def decode_target(self) -> DecodeTarget | None:
        """What ``square`` resizes a film to, so a large JPEG may be decoded at a reduced DCT scale
        (``cxrdx.imaging.jpeg``); None where the recipe is a publisher's pipeline that decodes in full."""
        if self.resize not in REDUCED_DECODE_KERNELS:
            return None
        if self.fit == "letterbox":
            return DecodeTarget(longer=self.size)
        return DecodeTarget(shorter=self.resize_to or self.size)

    @property
    def foldable(self) -> bool:
        """True when the normalisation is a fixed affine map (foldable into the first convolution)."""
        return self.normalization == "fixed"

    def to_dict(self) -> dict:
        return {
            "size": self.size,
            "channels": self.channels,
            "pixel_range": self.pixel_range,
            "mean": self.mean,
            "std": self.std,
            "fit": self.fit,
            "resize": self.resize,
            "bits": self.bits,
            "resize_to": self.resize_to,
            "crops": self.crops,
            "normalization": self.normalization,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        """Read a checkpoint's record; retired keys of old checkpoints are ignored.

        A record without ``fit`` predates the recorded recipe: it is read as ``resize="legacy"``
        (letterbox, as those checkpoints were always fed). Its old ``resize`` key had one legal
        value, "letterbox"; any other is still refused: we cannot reproduce it, and silently
        letterboxing would feed the network other pixels.
        """
        known = {k: data[k] for k in ("size", "channels", "pixel_range", "mean", "std") if k in data}
        if "fit" not in data:
            resize = data.get("resize", "letterbox")
            if resize != "letterbox":
                raise ConfigError(f"unknown resize mode {resize!r}; only 'letterbox' is supported")
            return cls(**known, fit="letterbox", resize=LEGACY, bits=None)
        known.update({k: data[k] for k in _RECIPE_KEYS if k in data})
        return cls(**known)


def _round_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 round(255 x), as the training cache has always stored it."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


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
