"""``cxrdx predict --format dicom|fhir --out DIR``: each image's results as files in one folder.

``dicom`` (DICOM inputs only): ``<stem>.sr.dcm``, the TID 1500 SR, ``<stem>.seg.dcm``, the
Grad-CAM heatmaps as one fractional Segmentation (cxrdx.interop.segmentation), and with
``secondary_capture`` ``<stem>.sc-<Finding>.dcm``, one secondary capture per finding of the model
(cxrdx.interop.secondary_capture), all in the input's study; ready
for ``storescu`` or any PACS import. ``fhir``: ``<stem>.fhir.json``, the transaction
Bundle (cxrdx.interop.fhir), for DICOM and PNG/JPEG inputs alike. As for ``cxrdx listen``: a
phantom-trained or never-evaluated model is refused unless ``allow_demo`` (then every object is
stamped), and an out-of-distribution image is "not evaluated" (no calls, no pictures) unless
``send_ood_findings``. Each file is written
atomically; a result that cannot be made (a DICOM without a Study Instance UID, say)
turns that image's row into an error and the others go on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxrdx.errors import ConfigError, CxrdxError
from cxrdx.files import atomic_write, atomic_write_text, file_sha256, head_bytes

FOLDER_FORMATS = ("dicom", "fhir")
SHOWN = 5  # non-DICOM inputs named in the --format dicom error


def picture_inputs(files: Sequence[Path]) -> list[Path]:
    """The inputs that are PNG/JPEG/other pictures (not DICOM), by their first bytes."""
    from cxrdx.imaging.dicom import is_dicom_file
    from cxrdx.imaging.sniff import sniff_image

    out = []
    for path in files:
        try:
            head = head_bytes(path, 64)
        except OSError:
            continue  # unreadable: its own error row later
        if sniff_image(head) is not None and not is_dicom_file(path):
            out.append(Path(path))
    return out


def check_dicom_inputs(files: Sequence[Path]) -> None:
    """--format dicom needs DICOM inputs: say which are not, and why that cannot work."""
    pictures = picture_inputs(files)
    if not pictures:
        return
    names = ", ".join(str(p) for p in pictures[:SHOWN])
    more = f" and {len(pictures) - SHOWN} more" if len(pictures) > SHOWN else ""
    raise ConfigError(
        f"--format dicom needs DICOM inputs, but {names}{more} "
        f"{'is a PNG/JPEG picture' if len(pictures) == 1 else 'are PNG/JPEG pictures'}: "
        "DICOM results go into the source image's study (its Study Instance UID and patient), "
        "which a picture file does not have. Use --format fhir for them"
    )


class ResultFolder:
    """Writes each prediction's result files under ``out`` as predictions arrive."""

    def __init__(
        self,
        out: str | Path,
        fmt: str,
        predictor: Any,
        weights: str,
        *,
        allow_demo: bool = False,
        send_ood_findings: bool = False,
        fhir_patient_system: str | None = None,
        secondary_capture: bool = False,
    ) -> None:
        """``secondary_capture``: also write the secondary captures (dicom). ``allow_demo``: write a phantom-trained or never-evaluated model's results (stamped) instead of
        refusing; ``send_ood_findings``: report an out-of-distribution image's findings (marked) instead of
        "not evaluated"; ``fhir_patient_system``: the Patient identifier's system when a DICOM names no
        issuer (cxrdx.interop.fhir.patient_identifier)."""
        from cxrdx.interop.sr import algorithm_for
        from cxrdx.model.card import require_not_demo

        if fmt not in FOLDER_FORMATS:
            raise ConfigError(f"--format {fmt}: not a folder format ({', '.join(FOLDER_FORMATS)})")
        self.patient_system = fhir_patient_system
        if fmt == "fhir" and fhir_patient_system is not None:
            from cxrdx.interop.fhir import check_patient_system

            check_patient_system(fhir_patient_system)  # before any image is read
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"--out {out}: --format {fmt} writes a folder, and this is a file")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
        require_not_demo(predictor.meta, allow_demo, f"--format {fmt}")
        self.fmt = fmt
        self.predictor = predictor
        from cxrdx.model.pretrained import resolve_weights

        calibrated = predictor.calibrated  # False: "score (uncalibrated)" wording
        self.algorithm = algorithm_for(
            resolve_weights(weights),
            predictor.meta,
            calibrated,
            thresholds=predictor.thresholds,
            send_ood_findings=send_ood_findings,
        )
        self.secondary_capture = secondary_capture
        self.written: list[Path] = []
        self._stems: dict[str, int] = {}

    def add(self, pred: Any) -> None:
        """Write ``pred``'s files; a failure becomes ``pred.error`` (the row is then counted as failed)."""
        if not pred.ok:
            return
        try:
            if self.fmt == "dicom":
                self._dicom(pred)
            else:
                self._fhir(pred)
        except CxrdxError as exc:
            pred.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - one odd header must not stop the batch
            pred.error = f"{pred.source}: results could not be made ({type(exc).__name__}: {exc})"

    def _stem(self, source: str) -> str:
        stem = Path(source).stem or "image"
        self._stems[stem] = self._stems.get(stem, 0) + 1
        return stem if self._stems[stem] == 1 else f"{stem}_{self._stems[stem]}"

    def _dicom(self, pred: Any) -> None:
        import pydicom

        from cxrdx.interop.segmentation import heatmap_findings
        from cxrdx.interop.sr import results_for
        from cxrdx.interop.study import source_header

        path = Path(pred.source)
        source = pydicom.dcmread(path, stop_before_pixels=True)
        source_header(source, where=str(path))  # no study UID: say so before Grad-CAM runs
        wanted = heatmap_findings(pred, self.algorithm)  # none for an OOD image (study.withheld)
        image = None
        overlays = {}
        if wanted:
            image, _ = self.predictor.read(path)
            overlays = {name: self.predictor.explain(image, name) for name in wanted}
        objects = results_for(
            source,
            pred,
            overlays=overlays,
            algorithm=self.algorithm,
            image=image,
            secondary_capture=self.secondary_capture,
        )
        stem = self._stem(pred.source)
        names = [f"{stem}.sr.dcm", f"{stem}.seg.dcm"]
        if self.secondary_capture:
            names += [f"{stem}.sc-{name}.dcm" for name in pred.probabilities]
        for ds, name in zip(objects, names, strict=True):
            target = self.out / name
            atomic_write(target, lambda tmp, ds=ds: ds.save_as(tmp, enforce_file_format=True))
            self.written.append(target)

    def _fhir(self, pred: Any) -> None:
        import pydicom

        from cxrdx.imaging.dicom import is_dicom_file
        from cxrdx.interop.fhir import fhir_bundle

        path = Path(pred.source)
        source = None
        if is_dicom_file(path):
            source = pydicom.dcmread(path, stop_before_pixels=True)
            if not str(source.get("SOPInstanceUID", "") or "").strip():
                source = None  # no instance UID to key on: treat it like a picture
        source_id = None if source is not None else f"sha256:{file_sha256(path)}"
        bundle = fhir_bundle(
            pred,
            algorithm=self.algorithm,
            source=source,
            source_id=source_id,
            patient_system=self.patient_system,
        )
        target = self.out / f"{self._stem(pred.source)}.fhir.json"
        atomic_write_text(target, json.dumps(bundle, indent=1) + "\n")
        self.written.append(target)
