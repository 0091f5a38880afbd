"""Grad-CAM pictures as DICOM Secondary Capture images, in the source's study (optional: ``--secondary-capture``).

The heatmaps' standard object is the SEG (``cxrdx.interop.segmentation``); these pictures are for
viewers that show nothing else. The set is fixed per (image, model), so a re-analysis replaces
every one of them: one SC per finding of the model, instance number = the finding's place in
the model's findings. A pictured finding (``pictured_findings``: every positive finding, or, for
a checkpoint without thresholds, the top three) gets the Grad-CAM overlay; every other finding
gets a small card (``CARD_SIDE`` wide, text only) saying it has no heatmap and why (called negative,
not among the top three, not evaluated), so an earlier positive picture of it never survives a
re-analysis that turned it negative. JPEG baseline (lossy, quality ``JPEG_QUALITY``, YBR_FULL_422):
an RGB picture for people, not pixels to measure; Lossy Image Compression says so. The overlay picture is the Grad-CAM overlay
(``cxrdx.explain.overlay.overlay_rgb``) on the source image, RGB 8-bit, with a black
band above saying "NOT FOR DIAGNOSTIC USE" (plus DEMO MODEL / OUT OF DISTRIBUTION when
they apply) and bands below naming the finding, its probability, the call and its threshold,
then a demo model's stamp and the OOD verdict, burned into the pixels. An out-of-distribution
image gets no picture unless its findings are sent on request (``pictured_findings``). So the words travel with the picture
into any viewer, and Burned In Annotation is YES. Pictures are ``MIN_SIDE`` to
``MAX_SIDE`` pixels on their long side (Pixel Spacing scaled to match); each references
its source image (Source Image Sequence) and copies its patient and study modules.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from cxrdx.errors import DataError
from cxrdx.interop.study import (
    MANUFACTURER,
    SC_SERIES_NUMBER,
    STAMPS,
    copy_patient_study,
    finding_calibration,
    result_notes,
    result_uid,
    withheld,
)

MAX_SIDE = 1024
MIN_SIDE = 512
CARD_SIDE = 512
JPEG_QUALITY = 95  # highdicom's JPEG baseline encoder quality
TOP_WITHOUT_THRESHOLDS = 3
BANNER = "NOT FOR DIAGNOSTIC USE"
SC_SERIES_DESCRIPTION = "cxrdx Grad-CAM (NOT FOR DIAGNOSTIC USE)"


def pictured_findings(
    prediction: Any, top_k: int = TOP_WITHOUT_THRESHOLDS, algorithm: Mapping | None = None
) -> list[str]:
    """The findings that get a picture: the positive ones (most probable first), or the top k without thresholds;
    none for an out-of-distribution image unless ``algorithm`` says to send its findings (``--send-ood-findings``)."""
    if withheld(prediction, algorithm or {}):
        return []
    ranked = [name for name, _ in sorted(prediction.probabilities.items(), key=lambda kv: -kv[1])]
    if prediction.positive is None:
        return ranked[:top_k]
    return [name for name in ranked if prediction.positive.get(name)]


def caption(finding: str, prediction: Any, algorithm: Mapping) -> str:
    """The finding, its number named by its calibration state, the call and the threshold behind it."""
    p = prediction.probabilities[finding]
    call = (prediction.positive or {}).get(finding)
    state = finding_calibration(prediction, algorithm, finding)
    word = "score (uncalibrated)" if state == "none" else "probability"
    threshold = (algorithm.get("thresholds") or {}).get(finding)
    said = "no threshold" if call is None else ("positive" if call else "negative")
    if call is not None and threshold is not None:
        said += f" at threshold {threshold:.3f}"
    return f"cxrdx Grad-CAM: {finding}, {word} {p:.2f} ({said}). Research use only."


def top_banner(prediction: Any, algorithm: Mapping) -> str:
    """The yellow band: NOT FOR DIAGNOSTIC USE, plus DEMO MODEL and OUT OF DISTRIBUTION when they apply."""
    parts = [BANNER]
    if algorithm.get("demo"):
        parts.append("DEMO MODEL")
    if getattr(prediction, "in_distribution", None) is False:
        parts.append("OUT OF DISTRIBUTION")
    return " - ".join(parts)


def burn_in(picture: np.ndarray, top: str, bottom: str | list[str]) -> np.ndarray:
    """``picture`` (H, W, 3) uint8 with a black band of text above and one per ``bottom`` line below."""
    from PIL import Image, ImageDraw, ImageFont

    lines = [bottom] if isinstance(bottom, str) else list(bottom)
    h, w = picture.shape[:2]
    size = max(9, w // 28)
    band = int(size * 1.8)
    canvas = Image.new("RGB", (w, h + (1 + len(lines)) * band), (0, 0, 0))
    canvas.paste(Image.fromarray(picture), (0, band))
    draw = ImageDraw.Draw(canvas)
    texts = [(top, 0, size, (255, 255, 0))]
    texts += [
        (line, h + (1 + i) * band, max(8, int(size * 0.62)), (255, 255, 255)) for i, line in enumerate(lines)
    ]
    for text, y, font_size, colour in texts:
        font = ImageFont.load_default(size=font_size)
        while draw.textlength(text, font=font) > w - 4 and font_size > 6:
            font_size -= 1
            font = ImageFont.load_default(size=font_size)
        x = max(2, int((w - draw.textlength(text, font=font)) / 2))
        draw.text((x, y + (band - font_size) // 2), text, fill=colour, font=font)
    return np.asarray(canvas, dtype=np.uint8)


def caption_lines(finding: str, prediction: Any, algorithm: Mapping) -> list[str]:
    """The bottom bands: the caption, then the demo stamp and the OOD verdict when they apply."""
    notes = result_notes(prediction, algorithm)
    stamps = [n for n in notes if n.startswith(STAMPS)]
    return [caption(finding, prediction, algorithm), *stamps]


def secondary_captures(
    source: Dataset,
    header: Dataset,
    prediction: Any,
    *,
    overlays: Mapping[str, np.ndarray],
    algorithm: Mapping,
    image: np.ndarray | None = None,
) -> list[Dataset]:
    """One SC image per overlay (finding -> heatmap on the source grid, or a composed RGB picture)."""
    import highdicom as hd
    from pydicom.uid import JPEGBaseline8Bit

    from cxrdx.explain.overlay import overlay_rgb

    sha = str(algorithm.get("checkpoint_sha256", ""))
    src_uid = str(header.SOPInstanceUID)
    pictured = pictured_findings(prediction, algorithm=algorithm)
    out = []
    for number, finding in enumerate(prediction.probabilities, start=1):
        overlay = overlays.get(finding) if finding in pictured else None
        if overlay is None:
            picture, scale = _card(), 0.0
        else:
            overlay = np.asarray(overlay)
            if overlay.ndim == 3:
                picture = overlay.astype(np.uint8)
            else:
                if image is None:
                    image = _gray_from(source)
                picture = overlay_rgb(image, overlay)
            picture, scale = _fit(picture)
        lines = caption_lines(finding, prediction, algorithm)
        if overlay is None:
            lines = [_no_heatmap(finding, prediction, algorithm), *lines[1:]]
        pixels = burn_in(picture, top_banner(prediction, algorithm), lines)
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=header,
            pixel_array=pixels,
            photometric_interpretation="YBR_FULL_422",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=result_uid(src_uid, "sc-series", sha),
            series_number=SC_SERIES_NUMBER,
            sop_instance_uid=result_uid(src_uid, f"sc:{finding}", sha),
            instance_number=number,
            manufacturer=MANUFACTURER,
            patient_orientation=("L", "F"),  # replaced below by the source's own (or empty)
            transfer_syntax_uid=JPEGBaseline8Bit,
            series_description=SC_SERIES_DESCRIPTION,
            content_qualification="RESEARCH",
            manufacturer_model_name="cxrdx",
            software_versions=str(algorithm.get("version", "")),
        )
        copy_patient_study(header, sc)
        _describe(
            sc,
            header,
            finding,
            scale,
            result_notes(prediction, algorithm),
            pictured=overlay is not None,
            said=lines[0],
        )
        out.append(sc)
    return out


def _no_heatmap(finding: str, prediction: Any, algorithm: Mapping) -> str:
    """Why a finding's picture is a card: its call (or "not evaluated"), in the caption's words."""
    if withheld(prediction, algorithm):
        return f"cxrdx: {finding} not evaluated (out of distribution): no heatmap. Research use only."
    said = (
        caption(finding, prediction, algorithm)
        .removeprefix("cxrdx Grad-CAM: ")
        .removesuffix(" Research use only.")
    )
    return f"cxrdx: {said} No heatmap pictured. Research use only."


def _card() -> np.ndarray:
    """A dark grey panel for a finding that has no picture (the bands below it carry the words)."""
    return np.full((CARD_SIDE // 4, CARD_SIDE, 3), 32, dtype=np.uint8)


def _describe(
    sc: Dataset,
    header: Dataset,
    finding: str,
    scale: float,
    notes: list[str],
    *,
    pictured: bool = True,
    said: str = "",
) -> None:
    orientation = header.get("PatientOrientation")
    sc.PatientOrientation = orientation if orientation and len(orientation) == 2 else ""
    body = str(header.get("BodyPartExamined", "") or "").strip()
    if body:
        sc.BodyPartExamined = body  # a chest: an unpaired part, so Laterality stays absent
    if header.get("Laterality"):
        sc.Laterality = header.Laterality
    sc.BurnedInAnnotation = "YES"
    if any(n.startswith("DEMO MODEL") for n in notes):
        sc.SeriesDescription = "cxrdx Grad-CAM DEMO MODEL (NOT FOR DIAGNOSTIC USE)"
    sc.ConversionType = "WSD"  # made on a workstation, not scanned
    what = f"Grad-CAM heatmap for {finding}" if pictured else f"No heatmap for {finding} ({said})"
    sc.ImageComments = " ".join([f"{what}. {BANNER}: research use only.", *notes])
    sc.DerivationDescription = (
        f"Grad-CAM overlay for {finding} on the source image (cxrdx)"
        if pictured
        else f"Text card for {finding}: no heatmap pictured (cxrdx)"
    )
    spacing = header.get("PixelSpacing")
    if pictured and spacing and len(spacing) == 2:
        sc.PixelSpacing = [round(float(v) / scale, 6) for v in spacing]
    sc.LossyImageCompression = "01"  # JPEG baseline (PS3.3 C.7.6.1.1.5)
    sc.LossyImageCompressionMethod = "ISO_10918_1"
    raw = int(sc.Rows) * int(sc.Columns) * 3
    sc.LossyImageCompressionRatio = f"{raw / max(1, len(_frame_bytes(sc))):.2f}"
    ref = Dataset()
    ref.ReferencedSOPClassUID = header.SOPClassUID
    ref.ReferencedSOPInstanceUID = header.SOPInstanceUID
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator = "121322", "DCM"
    purpose.CodeMeaning = "Source image for image processing operation"
    ref.PurposeOfReferenceCodeSequence = [purpose]
    sc.SourceImageSequence = [ref]


def _frame_bytes(sc: Dataset) -> bytes:
    """The one JPEG frame of an encapsulated SC."""
    from pydicom.encaps import generate_frames

    return next(generate_frames(sc.PixelData, number_of_frames=1))


def _fit(picture: np.ndarray) -> tuple[np.ndarray, float]:
    """MIN_SIDE to MAX_SIDE on the long side (small films are enlarged so the words stay legible)."""
    from PIL import Image

    h, w = picture.shape[:2]
    scale = min(1.0, MAX_SIDE / max(h, w)) if max(h, w) >= MIN_SIDE else MIN_SIDE / max(h, w)
    if scale == 1.0:
        return picture, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.LANCZOS)), scale


def _gray_from(source: Dataset) -> np.ndarray:
    """The source's pixels as THE reader sees them ([0, 1], bright = dense)."""
    from cxrdx.imaging.read import read_image

    if "PixelData" not in source:
        raise DataError(
            "the source DICOM has no pixel data here; pass image= (the image the prediction was made from)"
        )
    fd, path = tempfile.mkstemp(suffix=".dcm")
    os.close(fd)
    try:
        source.save_as(path, enforce_file_format=False)
        image, _ = read_image(path)
    finally:
        os.unlink(path)
    return image
