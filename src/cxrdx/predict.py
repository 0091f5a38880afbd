"""The Python API users touch first: ``Predictor.load(ckpt).predict(paths_or_arrays)``; ``cxrdx predict``.

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

import argparse
import copy
import csv
import hashlib
import io
import json
import os
import sys
import threading
import warnings as _warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrdx.errors import CheckpointError, ConfigError, CxrdxError, ImageReadError
from cxrdx.labels import canonical
from cxrdx.model import CheckpointMeta, load_checkpoint
from cxrdx.preprocess import Letterbox

ImageLike = str | os.PathLike | np.ndarray
BACKENDS = ("auto", "torch", "onnx", "openvino")
NO_THRESHOLDS_NOTE = (
    "this checkpoint has no decision thresholds, so no finding is called positive or negative; "
    "choose them on labelled validation images with `cxrdx evaluate --weights CKPT --val VAL.csv ...`"
)
PROGRESS_MIN_IMAGES = 6  # a progress bar for more than a handful of images
HEATMAP_TOP_K = 3


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
    from cxrdx.export import available_threads

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
        """Load a checkpoint once; ``backend`` is torch, onnx or auto (onnx on CPU when installed)."""
        from cxrdx import export

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
            if backend == "openvino" and not export.openvino_available():
                raise ConfigError(
                    "--backend openvino needs OpenVINO: `pip install openvino`, or use --backend onnx"
                )
            if backend == "onnx" and not export.onnxruntime_available():
                raise ConfigError(
                    "--backend onnx needs onnxruntime: `pip install onnxruntime`, or use --backend torch"
                )
        session = None
        if backend == "openvino":
            session = export.cached_session(path, model, meta, threads, runtime="openvino")
        elif backend == "onnx" or (backend == "auto" and on_cpu and export.onnxruntime_available()):
            try:
                session = export.cached_session(path, model, meta, threads)
            except CheckpointError:
                if backend == "onnx":
                    raise
                _warnings.warn(f"{path}: ONNX export failed; using the PyTorch backend", stacklevel=2)
        return cls(model, meta, device, session=session)

    @property
    def labels(self) -> list[str]:
        return list(self.meta.labels)

    @property
    def thresholds(self) -> dict[str, float] | None:
        return self.meta.thresholds

    def read(self, item: ImageLike, uint8_ok: bool = False) -> tuple[np.ndarray, list[str]]:
        """A [0, 1] gray image and reader warnings, from a path or an array.

        ``uint8_ok``: an 8-bit file stays uint8 (v meaning v / 255), which ``prepare``
        letterboxes in 8-bit: a quarter less decode time (see cxrdx.preprocess).
        """
        from cxrdx.io import read_image

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
            from cxrdx.export import INPUT_NAME, OUTPUT_NAME

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
        from cxrdx.gradcam import GradCam

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


# --------------------------------------------------------------------------- output formats


def format_table(predictions: Sequence[Prediction], thresholds: dict[str, float] | None) -> str:
    """What a person reads: per image, findings by falling probability, positives marked."""
    lines: list[str] = []
    for pred in predictions:
        lines.append(f"== {pred.source}")
        if not pred.ok:
            lines.append(f"   ERROR: {pred.error}")
            lines.append("")
            continue
        header = f"   {'finding':<20} {'prob':>6}"
        if thresholds:
            header += f" {'thresh':>7}  call"
        if pred.uncertainty is not None:
            header += "  \u00b1tta"
        lines.append(header)
        for name, p in pred.ranked():
            row = f"   {name:<20} {p:6.3f}"
            if thresholds:
                t = thresholds.get(name)
                if t is None:
                    row += f" {'-':>7}  -"
                else:
                    row += f" {t:7.3f}  " + ("POS *" if pred.positive and pred.positive.get(name) else "neg")
            if pred.uncertainty is not None:
                row += f"  {pred.uncertainty[name]:.3f}"
            lines.append(row.rstrip())
        if pred.positive is not None:
            pos = [n for n, _ in pred.ranked() if pred.positive.get(n)]
            lines.append(f"   positive: {', '.join(pos) if pos else 'none'}")
        for w in pred.warnings:
            lines.append(f"   warning: {w}")
        lines.append("")
    if not thresholds and any(p.ok for p in predictions):
        lines.append(f"note: {NO_THRESHOLDS_NOTE}")
    return "\n".join(lines).rstrip() + "\n"


def format_json(predictions: Sequence[Prediction]) -> str:
    return json.dumps([p.to_dict() for p in predictions], indent=2) + "\n"


def format_csv(
    predictions: Sequence[Prediction], labels: Sequence[str], thresholds: dict[str, float] | None
) -> str:
    """One row per image, one column per finding (+ ``<Finding>_positive`` when thresholds exist)."""
    positive_cols = [n for n in labels if thresholds and n in thresholds]
    tta = any(p.uncertainty is not None for p in predictions)
    header = ["image", "error", *labels, *(f"{n}_positive" for n in positive_cols)]
    header += [f"{n}_uncertainty" for n in labels] if tta else []
    header += ["warnings"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for p in predictions:
        row: list[Any] = [p.source, p.error or ""]
        row += [f"{p.probabilities[n]:.6f}" if p.ok else "" for n in labels]
        row += [("1" if p.positive[n] else "0") if p.ok and p.positive else "" for n in positive_cols]
        if tta:
            row += [f"{p.uncertainty[n]:.6f}" if p.ok and p.uncertainty else "" for n in labels]
        row.append(" | ".join(p.warnings))
        writer.writerow(row)
    return buf.getvalue()


# --------------------------------------------------------------------------- heatmaps


def write_heatmaps(
    predictor: Predictor, pred: Prediction, item: ImageLike, out_dir: Path, stem: str
) -> list[Path]:
    """Grad-CAM overlays (PNG) for the image's top findings, named ``<stem>_<Finding>.png``."""
    from cxrdx.gradcam import overlay_png

    image, _ = predictor.read(item)
    written = []
    thresholds = predictor.thresholds or {}
    for finding, p in pred.ranked()[:HEATMAP_TOP_K]:
        heatmap = predictor.explain(image, finding)
        t = thresholds.get(finding)
        call = "no threshold" if t is None else f"{'positive' if p >= t else 'negative'} at {t:.3f}"
        written.append(
            overlay_png(image, heatmap, out_dir / f"{stem}_{finding}.png", f"{finding}: p={p:.2f} ({call})")
        )
    return written


def _unique_stems(paths: Sequence[str]) -> list[str]:
    """File stems for output names; repeats (same name in two folders) get _2, _3 ..."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = Path(p).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return stems


# --------------------------------------------------------------------------- CLI


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="findings for chest X-ray images (PNG, JPEG, DICOM; files or folders)",
        description="Predict the 14 findings for each image. A file that cannot be read gets an error row "
        "and the exit code is 1; 0 means every image was read.",
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="cxrdx .safetensors checkpoint")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders")
    p.add_argument("--recursive", "-r", action="store_true", help="also search subfolders of folders")
    p.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="output format (table)"
    )
    p.add_argument("--out", metavar="FILE", help="write the output here instead of stdout")
    p.add_argument(
        "--heatmaps", metavar="DIR", help=f"write Grad-CAM overlays of the top {HEATMAP_TOP_K} findings"
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto = onnx on CPU when installed; openvino is optional (bf16 where the CPU has it)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (torch backend only)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--workers", type=int, default=None, help="image decoding threads (default: CPUs - 1, at least 1)"
    )
    p.add_argument(
        "--tta", action="store_true", help="average over the image and its mirror; report the spread"
    )
    p.set_defaults(func=_run_predict)


def _collect(paths: Sequence[str], recursive: bool) -> tuple[list[Path], list[Prediction]]:
    """Files to read, plus error rows for paths that do not exist (they do not stop the batch)."""
    from cxrdx.io import find_images, no_images_message

    files: list[Path] = []
    errors: list[Prediction] = []
    for raw in paths:
        try:
            found = find_images([raw], recursive=recursive)
        except ImageReadError as exc:
            errors.append(Prediction(str(raw), error=str(exc)))
            continue
        if not found:
            errors.append(Prediction(str(raw), error=no_images_message([raw], recursive)))
        files.extend(found)
    unique = list(dict.fromkeys(files))
    if not unique:
        details = "; ".join(e.error or "" for e in errors)
        raise ImageReadError(", ".join(paths), f"nothing to predict: {details}")
    return unique, errors


def _run_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cxrdx.export import available_threads

    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers must be 0 or more, got {args.workers}")
    if args.out and Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: is a folder; give a file name")
    if args.out:  # fail before the work, not after it
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--out {args.out}: its folder cannot be created ({exc.strerror or exc})") from None
    files, errors = _collect(args.paths, args.recursive)
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: no CUDA device is available; use --device cpu")
    torch.set_num_threads(available_threads())
    predictor = Predictor.load(args.weights, device=args.device, backend=args.backend)
    heat_dir = Path(args.heatmaps) if args.heatmaps else None
    if heat_dir is not None:
        heat_dir.mkdir(parents=True, exist_ok=True)
    stems = _unique_stems([str(f) for f in files])
    results: list[Prediction] = []
    bar = tqdm(
        total=len(files),
        desc="predict",
        unit="img",
        file=sys.stderr,
        disable=len(files) < PROGRESS_MIN_IMAGES,
    )
    with bar:
        it = predictor.iter_predict(files, batch_size=args.batch_size, tta=args.tta, workers=args.workers)
        for k, pred in enumerate(it):
            if heat_dir is not None and pred.ok:
                try:
                    write_heatmaps(predictor, pred, files[k], heat_dir, stems[k])
                except CxrdxError as exc:
                    pred.warnings.append(f"heatmaps not written: {exc}")
            results.append(pred)
            bar.update(1)
    results = errors + results
    if args.format == "json":
        text = format_json(results)
    elif args.format == "csv":
        text = format_csv(results, predictor.labels, predictor.thresholds)
    else:
        text = format_table(results, predictor.thresholds)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    failed = sum(not p.ok for p in results)
    where = f" -> {args.out}" if args.out else ""
    heat = f"; heatmaps in {heat_dir}" if heat_dir else ""
    print(
        f"cxrdx predict: {len(results) - failed} image(s) predicted, {failed} failed "
        f"(backend {predictor.backend}){where}{heat}",
        file=sys.stderr,
    )
    if args.format != "table" and not predictor.thresholds:
        print(f"cxrdx predict: note: {NO_THRESHOLDS_NOTE}", file=sys.stderr)
    return 1 if failed else 0
