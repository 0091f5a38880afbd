"""The Python API users touch first: ``Predictor.load(ckpt).predict(paths_or_arrays)``.

A Predictor owns one network and the preprocessing its checkpoint declares, so a
CheXNet port, a torchxrayvision import and our own models are all fed exactly the
input they were trained on. It is loaded once and shared (the web app calls it
from several threads): inference holds no per-call state, Grad-CAM takes a lock
and runs on its own copy of the network (Grad-CAM's hooks would otherwise see
other threads' forward passes).

Backends: ``torch`` (eager, channels_last) or ``onnx`` (the same network exported
once and run by ONNX Runtime, about twice as fast on a CPU) or ``openvino`` (the same
ONNX file run by OpenVINO, optional and opt-in: bf16 on CPUs with native bf16, so
probabilities move by ~1e-3; see docs/performance.md). ``auto`` picks ONNX Runtime
on CPU when it is installed. Grad-CAM always uses the PyTorch network.

``predict`` decodes images in a thread pool while the previous batch is in the
network (Pillow, pydicom's decoders and the resize release the GIL), so on a
multi-core CPU decoding hides behind inference.
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
import warnings as _warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cxrdx.device import available_threads
from cxrdx.errors import CheckpointError, ConfigError, CxrdxError
from cxrdx.imaging.letterbox import Letterbox
from cxrdx.labels import canonical
from cxrdx.model.checkpoint import CheckpointMeta, load_checkpoint

ImageLike = str | os.PathLike | np.ndarray
BACKENDS = ("auto", "torch", "onnx", "openvino")


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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record with every finding by name (what ``--format json`` writes)."""
        return {
            "image": self.source,
            "probabilities": dict(self.probabilities) if self.ok else None,
            "positive": None if self.positive is None else dict(self.positive),
            "uncertainty": None if self.uncertainty is None else dict(self.uncertainty),
            "warnings": list(self.warnings),
            "error": self.error,
        }


def default_workers() -> int:
    """Decoder threads: all CPUs but one (at least one), leaving a core to the network.

    Decoding is ~13 % of the CPU time per image at 320 px; more decode threads than
    that only compete with inference (2 CPUs, ONNX Runtime: 13.0 img/s with one
    decode thread vs 11.8 with two, benchmarks/predict_throughput.py).
    """
    return max(1, min(8, available_threads() - 1))


class Predictor:
    def __init__(
        self,
        model: torch.nn.Module,
        meta: CheckpointMeta,
        device: str | torch.device = "cpu",
        session: Any = None,
        channels_last: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.channels_last = channels_last
        model = model.to(self.device).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.meta = meta
        self.session = session  # an onnxruntime.InferenceSession, or None for the torch backend
        self._explain_lock = threading.Lock()
        self._gradcam = None
        self._cams: tuple[bytes, np.ndarray] | None = None  # (input digest, every finding's square map)

    @property
    def backend(self) -> str:
        if self.session is None:
            return "torch"
        return getattr(self.session, "backend_name", "onnx")

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        backend: str = "auto",
        threads: int | None = None,
    ) -> Predictor:
        """Load a checkpoint (a path, or a pretrained name such as ``xrv-nih``) once.

        ``backend`` is torch, onnx or auto (onnx on CPU when installed).
        """
        from cxrdx.inference import backends, export
        from cxrdx.model.pretrained import resolve_weights

        path = resolve_weights(path)
        if backend not in BACKENDS:
            raise ConfigError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        model, meta = load_checkpoint(path, device=device)
        if meta.provenance.get("init_only"):
            raise CheckpointError(
                f"{path}: this is an ImageNet initialisation for training, not a chest X-ray model; "
                "train one with `cxrdx train --init` or import a chest X-ray checkpoint"
            )
        on_cpu = torch.device(device).type == "cpu"
        if backend in ("onnx", "openvino"):
            if not on_cpu:
                raise ConfigError(
                    f"--backend {backend} runs on the CPU only; use --backend torch for device {device}"
                )
            if backend == "openvino" and not backends.openvino_available():
                raise ConfigError(
                    "--backend openvino needs OpenVINO: `pip install openvino`, or use --backend onnx"
                )
            if backend == "onnx" and not backends.onnxruntime_available():
                raise ConfigError(
                    "--backend onnx needs onnxruntime: `pip install onnxruntime`, or use --backend torch"
                )
        session = None
        if backend == "openvino":
            session = export.cached_session(path, model, meta, threads, runtime="openvino")
        elif backend == "onnx" or (backend == "auto" and on_cpu and backends.onnxruntime_available()):
            try:
                session = export.cached_session(path, model, meta, threads)
            except CheckpointError:
                if backend == "onnx":
                    raise
                _warnings.warn(f"{path}: ONNX export failed; using the PyTorch backend", stacklevel=2)
        return cls(model, meta, device, session=session)

    @classmethod
    def from_pretrained(cls, name: str, *, mirror: str | None = None, **kw: Any) -> Predictor:
        """A public model by registry name (``cxrdx weights list``), downloaded and imported once."""
        from cxrdx.model.pretrained import resolve_weights

        return cls.load(resolve_weights(name, mirror=mirror), **kw)

    @property
    def labels(self) -> list[str]:
        return list(self.meta.labels)

    @property
    def thresholds(self) -> dict[str, float] | None:
        return self.meta.thresholds

    def read(self, item: ImageLike, uint8_ok: bool = False) -> tuple[np.ndarray, list[str]]:
        """A [0, 1] gray image and reader warnings, from a path or an array.

        ``uint8_ok``: an 8-bit file stays uint8 (v meaning v / 255), which ``prepare``
        letterboxes in 8-bit: a quarter less decode time (see cxrdx.imaging.letterbox).
        """
        from cxrdx.imaging.read import read_image

        image, info = read_image(item, uint8_ok=uint8_ok)
        return image, list(info.warnings)

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """[0, 1] gray image (or uint8) -> (C, S, S) network input exactly as the checkpoint expects."""
        return self.meta.preprocessing(image)

    def probabilities(self, batch: np.ndarray, tta: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, C, S, S) inputs -> (N, L) probabilities, and (N, L) TTA spread when ``tta``."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if tta:
            # One pass over the image and its mirror (horizontal flip: a plausible film).
            both = self._forward(np.concatenate([x, np.ascontiguousarray(x[..., ::-1])]))
            views = np.stack([both[: len(x)], both[len(x) :]])
            return views.mean(0), views.std(0)
        return self._forward(x), None

    def _forward(self, x: np.ndarray) -> np.ndarray:
        if self.session is not None:
            from cxrdx.inference.backends import INPUT_NAME, OUTPUT_NAME

            return np.asarray(self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], dtype=np.float32)
        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device)
            if self.channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            return torch.sigmoid(self.model(t)).float().cpu().numpy()

    def _result(
        self, source: str, probs: np.ndarray, spread: np.ndarray | None, warnings: list[str]
    ) -> Prediction:
        by_name = {name: float(p) for name, p in zip(self.labels, probs, strict=True)}
        positive = None
        if self.thresholds:
            positive = {n: by_name[n] >= t for n, t in self.thresholds.items()}
        uncertainty = (
            None if spread is None else {n: float(s) for n, s in zip(self.labels, spread, strict=True)}
        )
        return Prediction(source, by_name, positive, uncertainty, warnings)

    def _load_one(self, item: ImageLike, source: str) -> tuple[np.ndarray | None, list[str], str | None]:
        """Decode + preprocess one item (runs in a worker thread); errors become a message."""
        try:
            image, warnings = self.read(item, uint8_ok=True)
            return self.prepare(image)[0], warnings, None
        except CxrdxError as exc:
            return None, [], str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop a batch
            return None, [], f"{source}: could not be read ({type(exc).__name__}: {exc})"

    def iter_predict(
        self,
        items: ImageLike | Sequence[ImageLike],
        batch_size: int = 8,
        tta: bool = False,
        workers: int | None = None,
    ) -> Iterator[Prediction]:
        """Yield one Prediction per item, in order, decoding ahead in ``workers`` threads (0: inline)."""
        if isinstance(items, (str, os.PathLike, np.ndarray)):
            items = [items]
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        workers = default_workers() if workers is None else workers
        sources = [f"array[{i}]" if isinstance(it, np.ndarray) else str(it) for i, it in enumerate(items)]
        groups = [list(range(i, min(i + batch_size, len(items)))) for i in range(0, len(items), batch_size)]

        def run_group(
            loaded: list[tuple[np.ndarray | None, list[str], str | None]], idx: list[int]
        ) -> list[Prediction]:
            good = [k for k, (x, _, _) in enumerate(loaded) if x is not None]
            out = [Prediction(sources[i], error=err) for i, (_, _, err) in zip(idx, loaded, strict=True)]
            if good:
                probs, spread = self.probabilities(np.stack([loaded[k][0] for k in good]), tta=tta)
                for row, k in enumerate(good):
                    out[k] = self._result(
                        sources[idx[k]], probs[row], None if spread is None else spread[row], loaded[k][1]
                    )
            return out

        if workers <= 0:
            for idx in groups:
                yield from run_group([self._load_one(items[i], sources[i]) for i in idx], idx)
            return
        with ThreadPoolExecutor(workers, thread_name_prefix="cxrdx-decode") as pool:
            ahead: deque[tuple[list[int], list[Future]]] = deque()
            pending = iter(groups)

            def submit_next() -> None:
                idx = next(pending, None)
                if idx is not None:
                    ahead.append((idx, [pool.submit(self._load_one, items[i], sources[i]) for i in idx]))

            for _ in range(2):  # the batch in the network and the next one decoding
                submit_next()
            while ahead:
                idx, futures = ahead.popleft()
                submit_next()
                yield from run_group([f.result() for f in futures], idx)

    def predict(
        self,
        items: ImageLike | Sequence[ImageLike],
        batch_size: int = 8,
        tta: bool = False,
        workers: int | None = None,
    ) -> list[Prediction]:
        """Predict every item; an unreadable one yields a Prediction with ``error`` set."""
        return list(self.iter_predict(items, batch_size=batch_size, tta=tta, workers=workers))

    def explain(self, image: ImageLike, finding: str) -> np.ndarray:
        """Grad-CAM heatmap for one finding, in [0, 1], on the source image's own pixel grid."""
        from cxrdx.explain.gradcam import GradCam

        finding = canonical(finding)
        if finding not in self.labels:
            raise CxrdxError(f"this model does not output {finding}; it outputs {', '.join(self.labels)}")
        if not isinstance(image, np.ndarray) or image.dtype != np.float32 or image.ndim != 2:
            image, _ = self.read(image)
        x, box = self.prepare(image)
        with self._explain_lock:
            if self._gradcam is None:
                # Grad-CAM's hooks stay on the network it wraps; with the torch backend other
                # threads run that network, so it gets a private copy.
                net = self.model if self.session is not None else copy.deepcopy(self.model)
                self._gradcam = GradCam(net)
            # One forward gives every finding's map (GradCam.many); the app and --heatmaps ask for
            # the top 3 of the same image one after another, so the last image's maps are kept.
            digest = hashlib.blake2b(np.ascontiguousarray(x).data, digest_size=16).digest()
            if self._cams is None or self._cams[0] != digest:
                batch = torch.from_numpy(x[None]).to(self.device)
                self._cams = (digest, self._gradcam.many(batch, range(len(self.labels)))[:, 0])
            square = self._cams[1][self.labels.index(finding)]
        return np.clip(box.unletterbox(square), 0.0, 1.0)
