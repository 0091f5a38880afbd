"""DICOM files -> gray float in [0, 1], bright = dense.

Modality LUT (rescale slope/intercept) first, then the VOI LUT or the first Window
Center/Width when present, scaled by its output range (a VOI LUT by 2**bits - 1 of its
LUT Descriptor, US or OW LUT Data, exactly pydicom's ``apply_voi``; a window by the
window's output range: what a viewer shows); without any VOI the image is min-max
normalised (per-image windowing over the full stored range). The image is inverted
last when it is MONOCHROME1 *or* its Presentation LUT Shape is INVERSE: PS3.3
C.8.11.6.1 pairs INVERSE with MONOCHROME1 to describe the same single inversion, so the
two never cancel; INVERSE on a MONOCHROME2 image inverts it. Pixel Padding Value (and
Pixel Padding Range Limit, inclusive) marks stored values outside the patient: they take
no part in the min-max estimate and come out 0 (black background). Warnings never
quote raw element bytes. Multi-frame DICOM: the first frame is
read, with a warning. Modality other than CR/DX/DR, a non-chest body part or a view
other than PA/AP (lateral LL/RL, oblique, decubitus) is *accepted with a warning*: the
model was trained on frontal chest radiographs and the result may not mean anything.
Refused: DICOMs without pixel data (structured reports), transfer syntaxes no
installed plugin decodes (the message names the plugin to install), and compressed
frames whose own header (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ, RLE segments) disagrees
with Rows/Columns or the pixel limit (``codestream``: checked before decoding), and
deflated data sets that inflate beyond what the pixel limit can fill. pydicom is
imported only when a DICOM is read.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from cxrdx.errors import ImageReadError
from cxrdx.imaging.codestream import check_deflated, check_frame_header
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

    check_deflated(path, max_pixels)  # pydicom inflates a deflated data set whole, even for its header
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
    check_frame_header(path, ds, tsuid, max_pixels)  # the codestream's own size, before any decoder runs

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
        pad = _padding_mask(arr, ds, warnings)
        gray = _dicom_gray(arr, ds, path, warnings, pad)
        shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
        if photometric == "MONOCHROME1" or shape == "INVERSE":
            gray = 1.0 - gray
        if pad is not None:
            gray = np.where(pad, 0.0, gray)
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


def _safe(exc: BaseException) -> str:
    """An exception for a message: its text unless that could quote raw bytes, else its type."""
    text = str(exc)
    if not text or len(text) > 200 or "b'" in text or 'b"' in text or "\\x" in text:
        return type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _padding_mask(arr: np.ndarray, ds, warnings: list[str]) -> np.ndarray | None:
    """Stored values equal to Pixel Padding Value (or within it..Range Limit), or None."""
    ppv = ds.get("PixelPaddingValue")
    if ppv is None or arr.ndim != 2:
        return None
    try:
        lo = hi = int(ppv)
        limit = ds.get("PixelPaddingRangeLimit")
        if limit is not None:
            lo, hi = sorted((lo, int(limit)))
    except (TypeError, ValueError) as exc:
        warnings.append(f"pixel padding value unusable ({type(exc).__name__}): ignored")
        return None
    pad = (arr >= lo) & (arr <= hi)
    return pad if pad.any() else None


def _voi_lut_problem(item) -> str | None:
    """Why the VOI LUT item cannot be applied (lengths and types only), or None."""
    desc = item.get("LUTDescriptor")
    desc = [desc] if isinstance(desc, (int, np.integer)) else list(desc or [])
    if len(desc) != 3 or not all(isinstance(v, (int, np.integer)) for v in desc):
        return f"LUT Descriptor has {len(desc)} values, not 3 integers"
    entries, bits = int(desc[0]) or 2**16, int(desc[2])
    if bits != 8 and not 10 <= bits <= 16:
        return f"LUT Descriptor gives {bits} bits per entry (8 or 10-16 allowed)"
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        if item["LUTData"].VR != "OW":
            return f"LUT Data is {len(data)} bytes with VR {item['LUTData'].VR}, not OW"
        if len(data) < 2 * entries:
            return f"LUT Data holds {len(data)} bytes, the descriptor needs {entries} 16-bit entries"
        return None
    values = [data] if isinstance(data, (int, np.integer)) else list(data or [])
    if len(values) < entries:
        return f"LUT Data holds {len(values)} entries, the descriptor needs {entries}"
    if not all(isinstance(v, (int, np.integer)) and 0 <= v < 2**bits for v in values):
        return f"LUT Data entries are not all integers in 0..{2**bits - 1}"
    return None


def _apply_voi_lut(values: np.ndarray, ds, item) -> np.ndarray:
    """pydicom's ``apply_voi`` (US or OW LUT Data) scaled by 2**bits - 1 of the LUT Descriptor.

    The lookup is done here with int64 indices: pydicom indexes an 8-bit LUT through a uint8
    array, which wraps for inputs more than 255 above the first mapped value.
    """
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 2**16
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        little = ts.is_little_endian if ts is not None else getattr(ds, "original_encoding", (0, True))[1]
        lut = np.frombuffer(bytes(data), dtype="<u2" if little is not False else ">u2", count=entries)
    else:
        lut = np.asarray([data] if isinstance(data, (int, np.integer)) else list(data), dtype=np.int64)
    idx = np.floor(np.asarray(values, dtype=np.float64) - first)
    idx = np.clip(np.nan_to_num(idx, nan=0.0), 0, entries - 1).astype(np.int64)
    return (lut[:entries].astype(np.float64)[idx] / float(2**bits - 1)).astype(np.float32)


def _dicom_gray(
    arr: np.ndarray, ds, path: Path, warnings: list[str], pad: np.ndarray | None = None
) -> np.ndarray:
    """Modality LUT, then VOI (LUT or window) scaled by its output range, else min-max."""
    from pydicom.pixels import apply_modality_lut, apply_windowing

    values = apply_modality_lut(arr, ds)
    if pad is not None:
        if pad.all():
            warnings.append("every pixel is padding (Pixel Padding Value): nothing to see")
            return np.zeros(arr.shape, dtype=np.float32)
        values = np.where(pad, values[~pad].min(), values)  # padding takes no part in min-max
    voi_seq = ds.get("VOILUTSequence")
    has_lut = bool(voi_seq) and "LUTData" in voi_seq[0] and "LUTDescriptor" in voi_seq[0]
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if has_lut:
        problem = _voi_lut_problem(voi_seq[0])
        if problem is None:
            try:
                return _apply_voi_lut(values, ds, voi_seq[0])
            except Exception as exc:  # noqa: BLE001 - a broken LUT falls back to the window or min-max
                problem = _safe(exc)
        warnings.append(f"VOI LUT unusable ({problem}): ignored")
    if has_window:
        try:
            out = apply_windowing(values.astype(np.float64), ds)
            with np.errstate(over="ignore", divide="ignore"):
                lo, hi = apply_windowing(np.array([-1e300, 1e300]), ds)
            if np.isfinite([lo, hi]).all() and hi > lo:
                return ((out - lo) / (hi - lo)).astype(np.float32)
            warnings.append("window center/width unusable: ignored")
        except Exception as exc:  # noqa: BLE001
            warnings.append(f"window center/width unusable ({_safe(exc)}): ignored")
    return minmax(values, path, warnings, None)
