"""The app's work, independent of Gradio: read an upload, predict, and the JSON the API returns."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrdx.app.components import DISCLAIMER
from cxrdx.errors import CxrdxError, ImageReadError

if TYPE_CHECKING:
    import numpy as np

    from cxrdx.inference.predictor import Prediction, Predictor


def user_message(exc: Exception, upload: str) -> str:
    """The error without Gradio's temp-folder path: the user knows the file by its name."""
    if isinstance(exc, ImageReadError):
        return f"{Path(exc.path).name}: {exc.problem}"
    return str(exc).replace(str(upload), Path(upload).name)


def file_kind(path: str) -> str:
    """PNG, JPEG, DICOM ... from the file's first bytes (never its name: names may identify a patient)."""
    from cxrdx.imaging.sniff import sniff_image

    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return "unreadable"
    if head[128:132] == b"DICM":
        return "DICOM"
    return sniff_image(head) or "other"


def request_line(endpoint: str, path: str | None, seconds: float, outcome: str) -> str:
    """One server-log line per request: endpoint, file type, size, latency, outcome; no patient data.

    The time comes from the log format; the file name, pixels and findings are never logged.
    """
    size = "-"
    kind = "none"
    if path:
        kind = file_kind(path)
        with contextlib.suppress(OSError):
            size = str(os.path.getsize(path))
    return f"request endpoint={endpoint} type={kind} bytes={size} latency_ms={seconds * 1000:.0f} outcome={outcome}"


def public_card(card: dict[str, Any]) -> dict[str, Any]:
    """The model card as the API shows it: no ``path`` key and no server folder in ``dataset``.

    ``cxrdx train`` records the training data's folder as ``path`` (and as ``dataset`` when the
    data has no name). A server path is none of a client's business, and gradio_client takes any
    dict with a ``path`` string for a file to download, so every call failed (HTTP 403).
    """

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k != "path"}
        return [clean(v) for v in value] if isinstance(value, list) else value

    out = clean(card)
    dataset = out.get("dataset")
    if isinstance(dataset, str) and (dataset == card.get("path") or os.path.isabs(dataset)):
        out["dataset"] = " + ".join(Path(part.strip()).name for part in dataset.split(" + "))
    return out


class Analyzer:
    """The app's work, independent of Gradio (so it is testable without a server)."""

    def __init__(self, predictor: Predictor) -> None:
        from cxrdx.inference.heatmaps import capture_maps

        self.predictor = predictor
        capture_maps(predictor)  # a prediction keeps its maps: the overlays then need no network pass

    def read(self, path: str) -> tuple[np.ndarray, list[str]]:
        """Read an upload; refuse DICOMs that are not radiographs (the reader only warns)."""
        from cxrdx.imaging.dicom import CHEST_MODALITIES
        from cxrdx.imaging.read import read_image

        image, meta = read_image(path)
        if meta.format == "DICOM" and meta.modality and meta.modality not in CHEST_MODALITIES:
            raise ImageReadError(
                path,
                f"DICOM modality is {meta.modality}, not a radiograph ({'/'.join(CHEST_MODALITIES)}): "
                "this model only reads chest X-rays; upload a chest radiograph",
            )
        return image, list(meta.warnings)

    def predict(self, path: str) -> tuple[np.ndarray, Prediction]:
        image, warnings = self.read(path)
        pred = self.predictor.predict([image], batch_size=1, workers=0)[0]
        if not pred.ok:
            raise CxrdxError(pred.error or "prediction failed")
        pred.source = Path(path).name
        pred.warnings = warnings + pred.warnings
        return image, pred

    def record(self, pred: Prediction) -> dict[str, Any]:
        """The JSON the API returns: the Prediction plus the thresholds used and the disclaimer."""
        out = pred.to_dict()
        out["thresholds"] = self.predictor.thresholds
        ood = self.predictor.ood  # the cut-off that "in_distribution" compares "ood_score" with
        out["ood_threshold"] = None if ood is None else ood.threshold
        out["labels"] = self.predictor.labels
        out["disclaimer"] = DISCLAIMER
        from cxrdx.model.card import banners, training_card

        out["model_card"] = public_card(training_card(self.predictor.meta))  # what the model was trained on
        out["model_warnings"] = banners(self.predictor.meta)  # e.g. trained on phantoms, no evaluation
        return out
