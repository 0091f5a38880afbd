"""The Python API users touch first: ``Predictor.load(ckpt).predict(paths_or_arrays)``.

A Predictor owns one network and the preprocessing its checkpoint declares, so a
CheXNet port, a torchxrayvision import and our own models are all fed exactly the
input they were trained on. It is loaded once and shared (the web app calls it
from several threads): inference holds no per-call state, Grad-CAM takes a lock
and runs on its own copy of the network (Grad-CAM's hooks would otherwise see
other threads' forward passes).

Backends: ``torch`` (eager, channels_last), ``onnx`` (the same network exported once, run by
ONNX Runtime, about twice as fast on a CPU) or ``openvino`` (the same ONNX file, optional:
bf16 on CPUs with native bf16, probabilities move by ~1e-3; docs/performance.md). ``auto``
picks ONNX Runtime on CPU when installed. Heatmaps: cxrdx.inference.heatmaps (the graph's ``cams``).

Every input is made by the checkpoint's recipe (``Preprocessing``: fit, resize kernel, bit
depth, normalisation, crops): for our own models the function that made the training
cache, for an import its publisher's pipeline (docs/weights.md has the measured agreement).

``predict`` decodes images in a thread pool while the previous batch is in the
network (Pillow, pydicom's decoders and the resize release the GIL), so on a
multi-core CPU decoding hides behind inference.
"""

from __future__ import annotations

import os
import threading
import warnings as _warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrdx.device import available_threads
from cxrdx.errors import CheckpointError, ConfigError, CxrdxError
from cxrdx.imaging.letterbox import Letterbox
from cxrdx.inference.prediction import Prediction
from cxrdx.model.checkpoint import CheckpointMeta, load_checkpoint, read_checkpoint_meta
from cxrdx.model.ood import DepthOod, OodStats, reference
from cxrdx.settings import BACKENDS

if TYPE_CHECKING:  # the ONNX path runs without torch and MONAI (they load with the network, on demand)
    import torch

ImageLike = str | os.PathLike | np.ndarray


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
        model: torch.nn.Module | None,
        meta: CheckpointMeta,
        device: str | torch.device = "cpu",
        session: Any = None,
        channels_last: bool = True,
        checkpoint: str | os.PathLike | None = None,
    ) -> None:
        """``model=None`` with an ONNX ``session``: the network is loaded from ``checkpoint`` on first use
        (Grad-CAM, features), so predicting needs neither torch nor MONAI."""
        if model is None and (session is None or checkpoint is None):
            raise ConfigError("Predictor needs a model, or an ONNX session and the checkpoint path")
        self._device = device
        self.channels_last = channels_last
        self._checkpoint = checkpoint
        self._model = None
        self._model_lock = threading.Lock()
        if model is not None:
            self.model = model
        self.meta = meta
        self.session = session  # an onnxruntime.InferenceSession, or None for the torch backend
        self.precision = "fp32"  # or the int8 variant of the session's file (Predictor.load(precision=...))
        self._explain_lock = threading.Lock()
        self._heatmaps = None  # cxrdx.inference.heatmaps.Heatmaps, made on the first explain

    @property
    def device(self) -> torch.device:
        import torch

        return torch.device(self._device)

    @property
    def model(self) -> torch.nn.Module:
        """The PyTorch network (loaded from the checkpoint on first use when running on ONNX)."""
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    self.model = load_checkpoint(self._checkpoint, device=self._device)[0]
        return self._model

    @model.setter
    def model(self, model: torch.nn.Module) -> None:
        import torch

        model = model.to(self.device).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self._model = model

    @property
    def backend(self) -> str:
        if self.session is None:
            return "torch"
        name = getattr(self.session, "backend_name", "onnx")
        return name if self.precision == "fp32" else f"{name} {self.precision}"

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        backend: str = "auto",
        threads: int | None = None,
        precision: str = "fp32",
    ) -> Predictor:
        """Load a checkpoint (a path, or a pretrained name such as ``xrv-nih``) once.

        ``backend`` is torch, onnx, openvino or auto (onnx on CPU when installed). ``precision="int8"``
        runs the int8 model ``cxrdx quantize`` made and checked for this checkpoint (ONNX Runtime on
        CPU), ``"bf16"`` OpenVINO bf16 (CPU); int8's Grad-CAM stays fp32 on PyTorch.
        """
        from cxrdx.inference import backends, export
        from cxrdx.model.pretrained import resolve_weights

        path = resolve_weights(path)
        if backend not in BACKENDS:
            raise ConfigError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        meta = read_checkpoint_meta(path)
        if meta.provenance.get("init_only"):
            raise CheckpointError(
                f"{path}: this is an ImageNet initialisation for training, not a chest X-ray model; "
                "train one with `cxrdx train --init` or import a chest X-ray checkpoint"
            )
        on_cpu = str(device).split(":")[0] == "cpu"
        if precision not in ("fp32", "auto"):  # auto: fp32 here; `cxrdx predict` measures the choice
            from cxrdx.inference.choose import reduced_session

            session, variant, meta = reduced_session(path, meta, precision, backend, device, threads)
            predictor = cls(None, meta, device, session=session, checkpoint=path)
            predictor.precision = variant
            return predictor
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
        runtime = "openvino" if backend == "openvino" else "onnx"
        if backend == runtime or (backend == "auto" and on_cpu and backends.onnxruntime_available()):
            # already exported (the cache is keyed by the file's sha256, and the export was made from
            # a checkpoint load_checkpoint accepted): no torch, no MONAI
            session = export.exported_session(path, threads, runtime)
            if session is not None:
                return cls(None, meta, device, session=session, checkpoint=path)
        model, meta = load_checkpoint(path, device=device)
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
        """The thresholds on the scale of the outputs: thresholds stored before calibration existed (no
        ``threshold_info["calibration"]``) were chosen on raw scores and are moved, so calls stay the same."""
        meta = self.meta

        def make() -> dict[str, float] | None:
            stored = meta.thresholds
            if not stored or "calibration" in (meta.threshold_info or {}):
                return stored
            cal = self.calibration
            if cal["method"] == "none":
                return stored
            from cxrdx.metrics.calibration import map_thresholds

            return map_thresholds(stored, None, cal, self.labels)

        return self._derived("thresholds", (meta.thresholds, meta.threshold_info, meta.calibration), make)

    @property
    def calibration(self) -> dict:
        """The calibration applied to every output (stored, else from the training prevalence, else none)."""
        from cxrdx.metrics.calibration import resolve_calibration

        meta = self.meta
        return self._derived(
            "calibration",
            (meta.calibration, meta.provenance),
            lambda: resolve_calibration(meta.calibration, meta.provenance, self.labels),
        )

    def _derived(self, name: str, sources: tuple, make: Any) -> Any:
        """``make()``, computed once per set of metadata objects it reads (they are replaced, not mutated,
        when a checkpoint's metadata changes): these are read for every image."""
        cache = self.__dict__.setdefault("_derived_cache", {})
        hit = cache.get(name)
        if hit is None or any(a is not b for a, b in zip(hit[0], sources, strict=True)):
            hit = cache[name] = (sources, make())
        return hit[1]

    @property
    def calibrated(self) -> bool:
        """True when outputs are probabilities; False: "score (uncalibrated)" (e.g. an imported checkpoint)."""
        return self.calibration["method"] != "none"

    def threshold_notes(self, tta: bool) -> list[str]:
        """Warnings when the thresholds are applied differently from how they were chosen."""
        info = self.meta.threshold_info or {}
        if not self.thresholds or not info:
            return []
        notes = []
        if info.get("tta") is not None and bool(info["tta"]) != bool(tta):
            chosen, now = ("with", "without") if info["tta"] else ("without", "with")
            notes.append(
                f"the thresholds were chosen {chosen} test-time augmentation but are applied {now} it"
                f" ({'add' if info['tta'] else 'drop'} --tta to match); calls near a threshold may differ"
            )
        method = self.calibration["method"]
        if info.get("calibration") is not None and info["calibration"] != method:
            notes.append(
                f"the thresholds were chosen on {info['calibration']!r}-calibrated outputs but the checkpoint now "
                f"applies {method!r}; choose them again with `cxrdx evaluate --write-thresholds`"
            )
        return notes

    def read(
        self, item: ImageLike, uint8_ok: bool = False, reduced: bool = False
    ) -> tuple[np.ndarray, list[str]]:
        """A [0, 1] gray image and reader warnings; ``uint8_ok``: an 8-bit file stays uint8 (v meaning
        v / 255); ``reduced``: a large JPEG at the recipe's reduced DCT scale (cxrdx.imaging.jpeg)."""
        from cxrdx.imaging.read import read_image

        target = self.meta.preprocessing.decode_target if reduced else None
        image, info = read_image(item, uint8_ok=uint8_ok, target=target)
        return image, list(info.warnings)

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """[0, 1] gray image (or uint8) -> (C, S, S) network input exactly as the checkpoint's recipe makes
        it (``Preprocessing.square``, the function that made the training cache for our own models; for
        ten-crop, the centre crop)."""
        return self.meta.preprocessing(image)

    def probabilities(
        self, batch: np.ndarray, tta: bool = False, calibrated: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, C, S, S) inputs -> (N, L) probabilities, and (N, L) TTA spread when ``tta``.

        THE place calibration is applied (both backends output raw sigmoid scores): each
        view is calibrated, then averaged. ``calibrated=False``: the raw scores.
        """
        from cxrdx.metrics.calibration import combine_views

        views = self.raw_views(batch, tta)
        return combine_views(views, self.calibration if calibrated else None, self.labels)

    def _scored(
        self, batch: np.ndarray, tta: bool, gray: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Calibrated probabilities, TTA spread and OOD scores (None without a reference), one pass.
        ``gray``: ``batch`` is (N, 1, S, S) letterboxed gray in [0, 1] for a folded graph."""
        from cxrdx.metrics.calibration import combine_views

        ood = self.ood
        views, feats = self._views(batch, tta, with_features=ood is not None, gray=gray)
        probs, spread = combine_views(views, self.calibration, self.labels)
        return probs, spread, None if ood is None else ood.score(feats)

    def raw_views(self, batch: np.ndarray, tta: bool = False) -> np.ndarray:
        """(V, N, L) uncalibrated sigmoid outputs: V = 1, or 2 with ``tta`` (the image and its mirror).

        ``batch`` is (N, C, S, S), or (N, K, C, S, S) for a recipe with K crops (ten-crop), whose K
        sigmoid outputs are averaged per view, as the publisher evaluates."""
        return self._views(batch, tta)[0]

    def features(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, S, S) inputs -> (N, F) pooled features of several depths, the final ones last
        (``cxrdx.model.networks.depth_features_and_logits``: what the out-of-distribution score reads)."""
        return self._forward(np.ascontiguousarray(batch, dtype=np.float32), with_features=True)[1]

    @property
    def ood(self) -> OodStats | DepthOod | None:
        """The checkpoint's out-of-distribution reference (cxrdx.model.ood, either format), or None."""
        meta = self.meta
        return self._derived("ood", (meta.ood,), lambda: reference(meta.ood))

    def _views(self, batch: np.ndarray, tta: bool, with_features: bool = False, gray: bool = False) -> Any:
        """(V, N, L) raw outputs and, when asked, the (N, F) features of the unflipped view: one pass.
        A (N, K, C, S, S) batch of K crops: each view's K outputs averaged; features of the first crop."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        crops = x.shape[1] if x.ndim == 5 else 1
        n = len(x)
        x = x.reshape(n * crops, *x.shape[-3:])
        if tta:
            # One pass over the image and its mirror (horizontal flip: a plausible film).
            both, feats = self._forward(
                np.concatenate([x, np.ascontiguousarray(x[..., ::-1])]), with_features, gray
            )
            views = np.stack([both[: len(x)], both[len(x) :]])
        else:
            probs, feats = self._forward(x, with_features, gray)
            views = probs[None]
        if feats is not None:
            feats = feats[: len(x)][::crops]
        if crops > 1:
            views = views.reshape(len(views), n, crops, -1).mean(2, dtype=np.float32)
        return views, feats

    def _forward(
        self, x: np.ndarray, with_features: bool = False, gray: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities (N, L), pooled features (N, F) or None), from one forward pass."""
        if self.session is not None:
            from cxrdx.inference.backends import FEATURES_NAME, GRAY_NAME, INPUT_NAME, OUTPUT_NAME

            names = [OUTPUT_NAME, FEATURES_NAME] if with_features else [OUTPUT_NAME]
            out = self.session.run(names, {GRAY_NAME if gray else INPUT_NAME: x})
            feats = np.asarray(out[1], dtype=np.float32) if with_features else None
            return np.asarray(out[0], dtype=np.float32), feats
        import torch

        from cxrdx.model.networks import depth_features_and_logits

        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device)
            if self.channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            if not with_features:
                return torch.sigmoid(self.model(t)).float().cpu().numpy(), None
            feats, logits = depth_features_and_logits(self.model, t)
            return torch.sigmoid(logits).float().cpu().numpy(), feats.float().cpu().numpy()

    def _result(
        self, source: str, probs: np.ndarray, spread: np.ndarray | None, warnings: list[str]
    ) -> Prediction:
        by_name = {name: float(p) for name, p in zip(self.labels, probs, strict=True)}
        positive = None
        thresholds = self.thresholds
        if thresholds:
            positive = {n: by_name[n] >= t for n, t in thresholds.items()}
        uncertainty = (
            None if spread is None else {n: float(s) for n, s in zip(self.labels, spread, strict=True)}
        )
        cal = self.calibration
        return Prediction(
            source,
            by_name,
            positive,
            uncertainty,
            warnings,
            calibration=cal["method"],
            calibration_by_finding=dict(cal["per_finding"]),
        )

    def _load_one(
        self, item: ImageLike, source: str, gray: bool = False
    ) -> tuple[np.ndarray | None, list[str], str | None]:
        """Decode + preprocess one item (in a worker thread); errors become a message.
        ``gray``: letterbox only, for a folded graph."""
        try:
            image, warnings = self.read(item, uint8_ok=True, reduced=True)
            prep = self.meta.preprocessing
            x = (prep.gray_views(image) if gray else prep.views(image))[0]
            return (x[0] if len(x) == 1 else x), warnings, None
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
        # a folded graph (GrayFeed) is fed gray squares, not a normalisation it would only undo
        gray = bool(getattr(self.session, "takes_gray", False))
        groups = [list(range(i, min(i + batch_size, len(items)))) for i in range(0, len(items), batch_size)]

        def run_group(
            loaded: list[tuple[np.ndarray | None, list[str], str | None]], idx: list[int]
        ) -> list[Prediction]:
            good = [k for k, (x, _, _) in enumerate(loaded) if x is not None]
            out = [Prediction(sources[i], error=err) for i, (_, _, err) in zip(idx, loaded, strict=True)]
            if good:
                probs, spread, scores = self._scored(np.stack([loaded[k][0] for k in good]), tta, gray)
                for row, k in enumerate(good):
                    out[k] = self._result(
                        sources[idx[k]], probs[row], None if spread is None else spread[row], loaded[k][1]
                    )
                    if scores is not None:  # the OOD gate (cxrdx.model.ood)
                        out[k].ood_score, out[k].in_distribution = self.ood.verdict(scores[row])
            return out

        if workers <= 0:
            for idx in groups:
                yield from run_group([self._load_one(items[i], sources[i], gray) for i in idx], idx)
            return
        with ThreadPoolExecutor(workers, thread_name_prefix="cxrdx-decode") as pool:
            ahead: deque[tuple[list[int], list[Future]]] = deque()
            pending = iter(groups)

            def submit_next() -> None:
                idx = next(pending, None)
                if idx is not None:
                    ahead.append(
                        (idx, [pool.submit(self._load_one, items[i], sources[i], gray) for i in idx])
                    )

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
        """Grad-CAM heatmap for one finding, in [0, 1], on the source image's own pixel grid: from the
        forward pass where the network allows it (cxrdx.inference.heatmaps)."""
        from cxrdx.inference.heatmaps import heatmaps

        return heatmaps(self).explain(image, finding)
