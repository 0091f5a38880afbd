"""Building blocks for a Ray Data pipeline: ``decode_images`` (CPU tasks) and ``PredictBatch`` (an actor).

Both are plain callables on Ray's ``"numpy"`` batches (a dict of column -> array), so they drop
into a user's own ``map_batches``; this module does not import Ray itself::

    import ray
    from cxrdx.integrations.ray import PredictBatch, decode_images

    ds = ray.data.read_parquet("s3://archive/manifest.parquet")          # a column "path"
    ds = ds.map_batches(decode_images, fn_kwargs={"column": "path"},
                        num_cpus=1, batch_size=16)                      # PNG/JPEG/DICOM: CPU tasks
    ds = ds.map_batches(PredictBatch, fn_constructor_kwargs={"weights": "model.safetensors"},
                        concurrency=2, num_cpus=4, batch_size=32)       # the network, loaded once per actor
    ds.write_parquet("s3://archive/predictions/")                       # image, error, 14 findings, ...

``DecodeImages`` reads each path (local, or a URI pyarrow's filesystems open: ``s3://``,
``gs://``, ``hdfs://``) with ``cxrdx.imaging.read.read_image`` (DICOM included) and adds the
decoded gray image as raw bytes (``pixels``, ``pixels_dtype``, ``pixels_shape``) and its reader
``warnings``, or an ``error``. ``PredictBatch`` loads a ``Predictor`` once per actor (ONNX Runtime
on CPU, autotuned batch and threads, or PyTorch on a GPU when Ray gave the actor one) and runs
the decoded images, or the paths themselves when there is no decode stage, through the same
``Predictor.iter_predict`` as ``cxrdx predict``: the probabilities are equal bit for bit. Its
output columns are the CSV columns of ``cxrdx predict --format csv`` (probabilities as float64,
calls as bool), and with ``record=True`` the JSON Lines record of ``--format jsonl``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrdx.errors import CxrdxError
from cxrdx.imaging.pixels import ARRAY_NAME
from cxrdx.inference.prediction import Prediction

ID_COLUMN = "image"  # the source of each row in the output, as in `cxrdx predict`
PIXEL_COLUMNS = ("pixels", "pixels_dtype", "pixels_shape")


def is_uri(path: str) -> bool:
    """``s3://bucket/x.png``, ``gs://``, ``file://`` ...: read through pyarrow's filesystems."""
    head, sep, _ = str(path).partition("://")
    return bool(sep) and head.isidentifier()


def read_uri_image(uri: str) -> tuple[np.ndarray, list[str]]:
    """An image behind a URI, decoded by ``read_image`` from a temporary local copy (DICOM needs a file)."""
    from pyarrow import fs

    from cxrdx.imaging.read import read_image

    filesystem, path = fs.FileSystem.from_uri(uri)
    suffix = Path(path).suffix
    with tempfile.TemporaryDirectory(prefix="cxrdx-ray-") as tmp:
        local = Path(tmp) / f"image{suffix}"
        try:
            with filesystem.open_input_stream(path) as src, open(local, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        except OSError as exc:
            raise CxrdxError(f"{uri}: cannot be read ({exc})") from None
        try:
            image, meta = read_image(local, uint8_ok=True)
        except CxrdxError as exc:
            raise CxrdxError(str(exc).replace(str(local), uri)) from None
    return image, list(meta.warnings)


def decode_one(source: str) -> tuple[np.ndarray | None, list[str], str | None]:
    """(gray image, reader warnings, None) or (None, [], error message); never raises for a bad file."""
    from cxrdx.imaging.read import read_image

    try:
        if is_uri(source):
            image, warnings = read_uri_image(source)
        else:
            image, meta = read_image(source, uint8_ok=True)
            warnings = list(meta.warnings)
        return image, warnings, None
    except CxrdxError as exc:
        return None, [], str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop a batch
        return None, [], f"{source}: could not be read ({type(exc).__name__}: {exc})"


def decode_images(batch: dict[str, np.ndarray], column: str = "path") -> dict[str, np.ndarray]:
    """``DecodeImages`` as a function, so that Ray runs it as tasks: ``map_batches(decode_images)``."""
    return DecodeImages(column)(batch)


class DecodeImages:
    """The decode stage: ``column`` (paths) -> the decoded image (raw bytes), ``warnings``, ``error``.

    Run it as CPU tasks (``map_batches(decode_images)``; the class itself makes an actor pool) before
    ``PredictBatch``. The image is passed on as it was decoded (uint8 for 8-bit files, else float32
    in [0, 1]), so the actor letterboxes exactly what ``cxrdx predict`` would have.
    """

    def __init__(self, column: str = "path") -> None:
        self.column = column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sources = [str(s) for s in batch[self.column]]
        pixels, dtypes, shapes, warnings, errors = [], [], [], [], []
        for source in sources:
            image, warns, error = decode_one(source)
            if image is None:
                pixels.append(b"")
                dtypes.append("")
                shapes.append("")
            else:
                image = np.ascontiguousarray(image)
                pixels.append(image.tobytes())
                dtypes.append(image.dtype.str)
                shapes.append(",".join(str(n) for n in image.shape))
            warnings.append(json.dumps(warns))
            errors.append(error or "")
        out = dict(batch)
        out.update(
            pixels=np.array(pixels, dtype=object),
            pixels_dtype=np.array(dtypes),
            pixels_shape=np.array(shapes),
            warnings=np.array(warnings),
            error=np.array(errors),
        )
        return out


def image_of(pixels: bytes, dtype: str, shape: str) -> np.ndarray:
    """The array ``DecodeImages`` stored as bytes."""
    dims = tuple(int(n) for n in shape.split(","))
    return np.frombuffer(pixels, dtype=np.dtype(dtype)).reshape(dims)


class PredictBatch:
    """The network in a Ray actor: one ``Predictor`` per actor, reused for every batch.

    ``weights``: a cxrdx checkpoint (or a pretrained name); ``backend``, ``precision``, ``tta`` as
    in ``cxrdx predict``. ``threads``: ONNX Runtime intra-op threads (default: this node's CPUs,
    as ``cxrdx predict``). ``batch_size``: images per network call; ``None`` uses the settings
    ``cxrdx predict`` measured for this machine and model (autotune, measured at the actor's
    first batch when there are none and ``autotune``). ``column``: the paths (used when the batch
    has no decode-stage columns, and as the ``image`` id of each row). ``device``: ``None``
    picks ``cuda`` when Ray gave this actor a GPU (then the PyTorch network), else ``cpu``.
    ``id_column``: the column that names each row in the output (default ``column``). ``record``:
    add the ``record`` column (each row's ``--format jsonl`` line, what ``predictions_of`` reads).
    """

    def __init__(
        self,
        weights: str,
        column: str = "path",
        backend: str = "auto",
        precision: str = "fp32",
        tta: bool = False,
        threads: int | None = None,
        batch_size: int | None = None,
        autotune: bool = True,
        device: str | None = None,
        id_column: str | None = None,
        record: bool = False,
    ) -> None:
        from cxrdx.device import available_threads
        from cxrdx.inference.predictor import Predictor

        device = device or ("cuda" if _gpu_given() else "cpu")
        if device != "cpu" and backend == "auto":
            backend = "torch"
        self.column, self.tta, self.weights = column, tta, str(weights)
        self.backend, self.precision = backend, precision
        self.id_column = id_column or column
        self.record = record
        self.threads = threads or available_threads()
        self.predictor = Predictor.load(
            weights, device=device, backend=backend, threads=self.threads, precision=precision
        )
        if self.predictor.session is None and device == "cpu":
            import torch

            torch.set_num_threads(self.threads)
        self.batch_size = batch_size
        self.workers = 1  # the letterbox of the next images beside the network (decode ran before)
        self._tune = autotune and batch_size is None and self.predictor.session is not None
        labels, thresholds = self.predictor.labels, self.predictor.thresholds
        self.labels, self.thresholds = labels, thresholds

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(s) for s in batch[self.column]]
        sources = [str(s) for s in batch[self.id_column]]
        if "pixels" not in batch and any(is_uri(p) for p in paths):
            batch = DecodeImages(self.column)(batch)  # object storage: fetched and decoded here
        decoded = "pixels" in batch
        items: list[Any] = []
        index: list[int] = []  # rows that go to the network
        preds: list[Prediction | None] = [None] * len(sources)
        for k, source in enumerate(sources):
            if decoded and batch["error"][k]:
                preds[k] = Prediction(source, error=str(batch["error"][k]).replace(paths[k], source))
                continue
            if decoded:
                items.append(image_of(batch["pixels"][k], batch["pixels_dtype"][k], batch["pixels_shape"][k]))
            else:
                items.append(paths[k])
            index.append(k)
        if self._tune and items:
            self._autotune(items[0])
        it = self.predictor.iter_predict(
            items, batch_size=self.batch_size or 8, tta=self.tta, workers=self.workers
        )
        for k, pred in zip(index, it, strict=True):
            pred.source = sources[k]
            if decoded:
                pred.warnings[:0] = json.loads(batch["warnings"][k] or "[]")
            if pred.error:  # named as the image is named in the output
                pred.error = pred.error.replace(ARRAY_NAME, sources[k]).replace(paths[k], sources[k])
            preds[k] = pred
        done = [p for p in preds if p is not None]
        return result_columns(done, self.labels, self.thresholds, self.tta, record=self.record)

    def _autotune(self, sample: Any) -> None:
        """The backend, precision and batch size `cxrdx predict` measured for this machine and model
        (cxrdx.inference.choose; measured now if none)."""
        from cxrdx.inference import choose

        self._tune = False
        try:
            tuned = choose.for_job(
                self.predictor,
                self.weights,
                [sample],
                self.threads,
                self.backend,
                self.precision,
                True,
                log=_quiet,
            )
        except Exception:  # noqa: BLE001 - the defaults will do
            return
        if tuned is not None:
            self.batch_size = tuned.batch_size


def _quiet(_line: str) -> None:
    """Autotune's log line, not shown inside a Ray worker."""


def _gpu_given() -> bool:
    """True inside a Ray actor that was given a GPU (Ray sets CUDA_VISIBLE_DEVICES for it)."""
    try:
        import ray

        return bool(ray.get_gpu_ids())
    except Exception:  # noqa: BLE001 - not in Ray, or Ray not initialised
        return False


def result_columns(
    preds: Sequence[Prediction],
    labels: Sequence[str],
    thresholds: dict[str, float] | None,
    tta: bool,
    record: bool = False,
) -> dict[str, np.ndarray]:
    """Predictions -> the columns of ``cxrdx predict --format csv`` (typed), and with ``record`` the JSONL line."""
    positive = [n for n in labels if thresholds and n in thresholds]
    nan = float("nan")
    cols: dict[str, Any] = {
        ID_COLUMN: [p.source for p in preds],
        "error": [p.error or "" for p in preds],
    }
    for n in labels:
        cols[n] = np.array([p.probabilities[n] if p.ok else nan for p in preds], dtype=np.float64)
    for n in positive:
        cols[f"{n}_positive"] = [bool(p.positive[n]) if p.ok and p.positive else None for p in preds]
    if tta:
        for n in labels:
            cols[f"{n}_uncertainty"] = np.array(
                [p.uncertainty[n] if p.ok and p.uncertainty else nan for p in preds], dtype=np.float64
            )
    cols["calibration"] = [p.calibration if p.ok else "" for p in preds]
    cols["ood_score"] = np.array([nan if p.ood_score is None else p.ood_score for p in preds], np.float64)
    cols["in_distribution"] = [p.in_distribution for p in preds]
    cols["warnings"] = [" | ".join(p.warnings) for p in preds]
    if record:
        cols["record"] = [json.dumps(p.to_dict()) for p in preds]
    return {k: v if isinstance(v, np.ndarray) else np.array(v, dtype=object) for k, v in cols.items()}


def prediction_from_record(d: dict) -> Prediction:
    """A ``Prediction.to_dict()`` record (the ``record`` column) back as the Prediction it was."""
    return Prediction(
        d["image"],
        probabilities=d["probabilities"] or {},
        positive=d["positive"],
        uncertainty=d["uncertainty"],
        warnings=list(d["warnings"]),
        error=d["error"],
        calibration=d["calibration"],
        ood_score=d["ood_score"],
        in_distribution=d["in_distribution"],
    )


def predictions_of(batch: dict[str, np.ndarray]) -> list[Prediction]:
    """The Predictions of a ``PredictBatch`` output batch (exactly what it computed)."""
    return [prediction_from_record(json.loads(line)) for line in batch["record"]]


def worker_env() -> dict[str, str]:
    """Environment for Ray workers started from here: this process's cxrdx cache (ONNX exports, autotune)."""
    return {k: v for k, v in os.environ.items() if k.startswith("CXRDX_")}
