"""DICOM files -> gray float in [0, 1], bright = dense.

Modality LUT (rescale slope/intercept) first, then the VOI LUT or the first Window
Center/Width when present, scaled by the window's output range (what a viewer shows);
without any VOI the image is min-max normalised (per-image windowing over the full
stored range). MONOCHROME1 is inverted last. Multi-frame DICOM: the first frame is
read, with a warning. Modality other than CR/DX/DR, a non-chest body part or a view
other than PA/AP (lateral LL/RL, oblique, decubitus) is *accepted with a warning*: the
model was trained on frontal chest radiographs and the result may not mean anything.
Refused: DICOMs without pixel data (structured reports) and transfer syntaxes no
installed plugin decodes (the message names the plugin to install). pydicom is
imported only when a DICOM is read.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from cxrdx.errors import ImageReadError
from cxrdx.imaging.pixels import ImageMeta, check_dims, minmax, rgb_to_gray

CHEST_MODALITIES = ("CR", "DX", "DR")
FRONTAL_VIEWS = ("PA", "AP")


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file carries the DICOM Part 10 'DICM' marker at byte 128."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def read_dicom(path: Path, max_pixels: int, force: bool) -> tuple[np.ndarray, ImageMeta]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import UID

    try:
        hdr = pydicom.dcmread(path, stop_before_pixels=True, force=force)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, struct.error) as exc:
        raise ImageReadError(path, f"not a valid DICOM file: {exc}") from exc
    sop = hdr.get("SOPClassUID")
    sop_name = f"SOP class {UID(str(sop)).name}" if sop else "no SOP class"
    if "Rows" not in hdr or "Columns" not in hdr:
        if force:
            raise ImageReadError(path, "not a DICOM image: no 'DICM' marker and no image attributes")
        raise ImageReadError(
            path,
            f"DICOM has no pixel data ({sop_name}): it is not an image (a report or presentation state?)",
        )
    rows, cols = int(hdr.Rows), int(hdr.Columns)
    check_dims(path, rows, cols, max_pixels)

    tsuid = _transfer_syntax(hdr)
    _check_decodable(path, tsuid)

    try:
        ds = pydicom.dcmread(path, force=force)
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(path, f"corrupt DICOM file: {exc}") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(
            path,
            f"DICOM has no pixel data ({sop_name}): it is not an image (a report or presentation state?)",
        )
    ds.file_meta.TransferSyntaxUID = tsuid

    warnings: list[str] = []
    modality = str(ds.get("Modality", "") or "").strip().upper() or None
    view = str(ds.get("ViewPosition", "") or "").strip().upper() or None
    body = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if modality and modality not in CHEST_MODALITIES:
        warnings.append(
            f"modality is {modality}, not a radiograph (CR/DX): the model reads chest X-rays, "
            "so its output may be meaningless"
        )
    if body and not any(k in body for k in ("CHEST", "THORA", "TORAX", "LUNG")):
        warnings.append(f"body part examined is {body}, not chest: the output may be meaningless")
    if view and view not in FRONTAL_VIEWS:
        kind = "lateral" if view in ("LL", "RL", "LAT", "LATERAL") else "non-PA/AP"
        warnings.append(
            f"{kind} view ({view}): the model was trained on frontal PA/AP chest films; read the output with care"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        if frames > 1:
            warnings.append(f"multi-frame DICOM ({frames} frames): only the first frame was read")
            arr = pydicom.pixels.pixel_array(ds, index=0)
        else:
            arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(path, f"cannot decode the DICOM pixel data ({tsuid.name}): {exc}") from exc

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        gray = _dicom_gray(arr, ds, path, warnings)
        if photometric == "MONOCHROME1":
            gray = 1.0 - gray
    else:
        if photometric == "PALETTE COLOR":
            arr = pydicom.pixels.apply_color_lut(arr, ds)
            bits = 16 if arr.dtype == np.uint16 else 8
        elif arr.ndim != 3 or arr.shape[-1] != 3:
            raise ImageReadError(path, f"unsupported DICOM photometric interpretation {photometric}")
        # pydicom returns YBR_* as RGB already
        gray = rgb_to_gray(arr, float(2**bits - 1), warnings)  # warns when the channels differ
    out = np.ascontiguousarray(np.clip(gray, 0.0, 1.0), dtype=np.float32)
    meta = ImageMeta(
        path=str(path),
        format="DICOM",
        source_size=(int(out.shape[0]), int(out.shape[1])),
        bit_depth=bits,
        photometric=photometric,
        modality=modality,
        view=view,
        warnings=warnings,
    )
    return out, meta


def _transfer_syntax(hdr) -> Any:
    """The dataset's transfer syntax; preamble-less files get the one they were parsed with."""
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ts = hdr.file_meta.get("TransferSyntaxUID") if hasattr(hdr, "file_meta") else None
    if ts:
        return UID(str(ts))
    implicit, little = getattr(hdr, "original_encoding", (True, True))
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _check_decodable(path: Path, tsuid) -> None:
    """Refuse transfer syntaxes that no installed pixel-data plugin decodes, naming the fix."""
    from pydicom.pixels import get_decoder

    if not tsuid.is_transfer_syntax:
        raise ImageReadError(
            path,
            f"unsupported transfer syntax {tsuid} (unknown or private): no decoder can read its pixel data; "
            "convert it to an uncompressed DICOM (e.g. `dcmdjpeg`, `gdcmconv --raw`) or export a PNG",
        )
    if not tsuid.is_compressed:
        return
    try:
        decoder = get_decoder(tsuid)
    except NotImplementedError as exc:
        raise ImageReadError(
            path,
            f"unsupported transfer syntax {tsuid.name} ({tsuid}): pydicom has no decoder for it "
            "(video/other codecs are not chest radiographs); export the image as an uncompressed DICOM or PNG",
        ) from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise ImageReadError(
            path,
            f"transfer syntax {tsuid.name} ({tsuid}) needs a pixel-data plugin that is not installed: "
            f"install one of: {missing}",
        )


def _dicom_gray(arr: np.ndarray, ds, path: Path, warnings: list[str]) -> np.ndarray:
    """Modality LUT, then VOI (LUT or window) scaled by its output range, else min-max."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

    values = apply_modality_lut(arr, ds)
    voi_seq = ds.get("VOILUTSequence")
    has_lut = bool(voi_seq) and "LUTData" in voi_seq[0] and "LUTDescriptor" in voi_seq[0]
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if has_lut:
        try:
            out = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64)
            lut = np.asarray(voi_seq[0].LUTData, dtype=np.float64).ravel()
            lo, hi = float(lut.min()), float(lut.max())
            if hi > lo:
                return ((out - lo) / (hi - lo)).astype(np.float32)
        except Exception as exc:  # noqa: BLE001 - a broken LUT falls back to the window or min-max
            warnings.append(f"VOI LUT unusable ({exc}): ignored")
    if has_window:
        try:
            out = apply_windowing(values.astype(np.float64), ds)
            with np.errstate(over="ignore", divide="ignore"):
                lo, hi = apply_windowing(np.array([-1e300, 1e300]), ds)
            if np.isfinite([lo, hi]).all() and hi > lo:
                return ((out - lo) / (hi - lo)).astype(np.float32)
            warnings.append("window center/width unusable: ignored")
        except Exception as exc:  # noqa: BLE001
            warnings.append(f"window center/width unusable ({exc}): ignored")
    return minmax(values, path, warnings, None)
