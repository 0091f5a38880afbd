"""The Python API users touch first: ``Predictor.load(ckpt).predict(paths_or_arrays)``.

A Predictor owns one network and the preprocessing its checkpoint declares, so a
CheXNet port, a torchxrayvision import and our own models are all fed exactly the
input they were trained on. It is loaded once and shared (the web app calls it
from several threads): inference holds no per-call state, Grad-CAM takes a lock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from cxrdx.errors import CheckpointError, CxrdxError
from cxrdx.labels import canonical
from cxrdx.model import CheckpointMeta, load_checkpoint
from cxrdx.preprocess import Letterbox

ImageLike = str | os.PathLike | np.ndarray


@dataclass
class Prediction:
    """One image's result; ``error`` is set (and the rest empty) when it could not be read."""

    source: str
    probabilities: dict[str, float] = field(default_factory=dict)
    positive: dict[str, bool] | None = None  # None when the checkpoint has no thresholds
    uncertainty: dict[str, float] | None = None  # spread over test-time-augmentation views
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def ranked(self) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])


class Predictor:
    def __init__(self, model: torch.nn.Module, meta: CheckpointMeta, device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval()
        self.meta = meta
        self.device = torch.device(device)
        self._explain_lock = threading.Lock()
        self._gradcam = None

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Predictor:
        model, meta = load_checkpoint(path, device=device)
        if meta.provenance.get("init_only"):
            raise CheckpointError(
                f"{path}: this is an ImageNet initialisation for training, not a chest X-ray model; "
                "train one with `cxrdx train --init` or import a chest X-ray checkpoint"
            )
        return cls(model, meta, device)

    @property
    def labels(self) -> list[str]:
        return list(self.meta.labels)

    @property
    def thresholds(self) -> dict[str, float] | None:
        return self.meta.thresholds

    def read(self, item: ImageLike) -> tuple[np.ndarray, list[str]]:
        """A [0, 1] gray image and reader warnings, from a path or an array."""
        from cxrdx.io import read_image

        image, info = read_image(item)
        return image, list(info.warnings)

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """[0, 1] gray image -> (C, S, S) network input exactly as the checkpoint expects."""
        return self.meta.preprocessing(image)

    @torch.inference_mode()
    def probabilities(self, batch: np.ndarray, tta: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, C, S, S) inputs -> (N, L) probabilities, and (N, L) TTA spread when ``tta``."""
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        probs = torch.sigmoid(self.model(x))
        if not tta:
            return probs.float().cpu().numpy(), None
        flipped = torch.sigmoid(self.model(torch.flip(x, dims=[3])))
        views = torch.stack([probs, flipped]).float()
        return views.mean(0).cpu().numpy(), views.std(0, unbiased=False).cpu().numpy()

    def _result(self, source: str, probs: np.ndarray, spread: np.ndarray | None, warnings: list[str]) -> Prediction:
        by_name = {name: float(p) for name, p in zip(self.labels, probs, strict=True)}
        positive = None
        if self.thresholds:
            positive = {n: by_name[n] >= t for n, t in self.thresholds.items()}
        uncertainty = None if spread is None else {n: float(s) for n, s in zip(self.labels, spread, strict=True)}
        return Prediction(source, by_name, positive, uncertainty, warnings)

    def predict(self, items: ImageLike | Sequence[ImageLike], batch_size: int = 8, tta: bool = False) -> list[Prediction]:
        """Predict every item; an unreadable one yields a Prediction with ``error`` set."""
        if isinstance(items, (str, os.PathLike, np.ndarray)):
            items = [items]
        results: list[Prediction | None] = []
        pending: list[tuple[int, str, np.ndarray, list[str]]] = []

        def flush() -> None:
            batch = np.stack([x for _, _, x, _ in pending])
            probs, spread = self.probabilities(batch, tta=tta)
            for k, (slot, source, _, warnings) in enumerate(pending):
                results[slot] = self._result(source, probs[k], None if spread is None else spread[k], warnings)
            pending.clear()

        for i, item in enumerate(items):
            source = f"array[{i}]" if isinstance(item, np.ndarray) else str(item)
            results.append(None)
            try:
                image, warnings = self.read(item)
                pending.append((i, source, self.prepare(image)[0], warnings))
            except CxrdxError as exc:
                results[i] = Prediction(source, error=str(exc))
            if len(pending) >= batch_size:
                flush()
        if pending:
            flush()
        return [r for r in results if r is not None]

    def explain(self, image: ImageLike, finding: str) -> np.ndarray:
        """Grad-CAM heatmap for one finding, in [0, 1], on the source image's own pixel grid."""
        from cxrdx.gradcam import GradCam

        finding = canonical(finding)
        if finding not in self.labels:
            raise CxrdxError(f"this model does not output {finding}; it outputs {', '.join(self.labels)}")
        if not isinstance(image, np.ndarray) or image.dtype != np.float32 or image.ndim != 2:
            image, _ = self.read(image)
        x, box = self.prepare(image)
        with self._explain_lock:
            if self._gradcam is None:
                self._gradcam = GradCam(self.model)
            square = self._gradcam(torch.from_numpy(x[None]).to(self.device), self.labels.index(finding))[0]
        return np.clip(box.unletterbox(square), 0.0, 1.0)

