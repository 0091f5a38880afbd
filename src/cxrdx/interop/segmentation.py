"""Grad-CAM heatmaps as ONE DICOM object: a fractional Segmentation, one segment per shown finding.

``heatmap_segmentation(header, prediction, heatmaps=..., algorithm=...)`` writes the maps of
``segment_findings`` (every finding called positive, plus the ``TOP_K`` most probable ones, so
there is always something to show) as a FRACTIONAL Segmentation (PS3.3 A.51) of the source image:

- one frame per segment, on the source's own pixel grid (a projection radiograph has no Frame
  of Reference, so a SEG of it must have the source's Rows and Columns, PS3.3 C.8.20.2; a map
  on another grid, e.g. from an image decoded at a reduced scale, is resized onto it);
- Segmentation Fractional Type PROBABILITY, Maximum Fractional Value 255: the Grad-CAM map in
  [0, 1] scaled to 0-255. It is a relative saliency, not a probability of disease, and the
  segment and content descriptions say so;
- each segment coded with the finding's concept of the SR (``cxrdx.interop.codes``): category
  "Morphologically abnormal structure" (SCT 49755003), type the finding's code; algorithm type
  AUTOMATIC with the algorithm identification of the SR (cxrdx, its version, the checkpoint's
  file name and SHA-256 as parameters);
- every note of the SR (demo stamp, OOD verdict, model card's caveats, research use) in Image Comments;
- JPEG-LS lossless (highdicom encodes it with pyjpegls): the smooth maps compress about 8:1, about three
  times faster than JPEG 2000 lossless (which compresses 30 % better), and Orthanc's own DCMTK decodes it
  (JPEG 2000 needs Orthanc's GDCM plugin). Viewers: 3D Slicer and Weasis show fractional SEGs; OHIF shows
  binary ones only (its issue #1346), and Parametric Maps since 3.9 (README, "In the hospital").

An out-of-distribution image whose findings are withheld (``study.withheld``) still gets its SEG,
with the same segments and empty maps saying "not evaluated" (Content Description, Image Comments), so that the result set of an image is
always the same instances (``study``) and a re-analysis leaves nothing stale. Its UIDs are
``study.result_uid`` of the source instance, the checkpoint and the role "seg".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from cxrdx.interop import codes
from cxrdx.interop.study import (
    MANUFACTURER,
    RESEARCH_USE,
    SEG_SERIES_NUMBER,
    copy_patient_study,
    result_notes,
    result_uid,
    withheld,
)
from cxrdx.settings import TOP_K

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
SEG_SERIES_DESCRIPTION = "cxrdx Grad-CAM heatmaps (research use only)"
DEMO_SEG_SERIES_DESCRIPTION = "cxrdx DEMO model heatmaps (meaningless)"
ABNORMAL = codes.Concept("SCT", "49755003", "Morphologically abnormal structure")  # CID 7150 category
SALIENCY_NOTE = (
    "Grad-CAM saliency scaled to 0-255 (relative to this finding's strongest region), not a probability "
    "of disease. Research use only, not for diagnostic use."
)
# CIELab display colours (PS3.3 C.10.7.1.1: L 0-100 a, b -128..127 scaled to 0-65535), one per segment
_RGB = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180)]
_RGB += [(70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255)]
_RGB += [(170, 110, 40), (128, 0, 0), (170, 255, 195), (128, 128, 0)]


def segment_findings(prediction: Any, top_k: int = TOP_K) -> list[str]:
    """The findings that get a segment, most probable first: every positive call, plus the top ``top_k``."""
    ranked = [name for name, _ in sorted(prediction.probabilities.items(), key=lambda kv: -kv[1])]
    positive = prediction.positive or {}
    return [name for i, name in enumerate(ranked) if i < top_k or positive.get(name)]


def heatmap_findings(prediction: Any, algorithm: Mapping) -> list[str]:
    """The findings whose Grad-CAM map must be computed (none when the image's findings are withheld)."""
    return [] if withheld(prediction, algorithm) else segment_findings(prediction)


def seg_reference(header: Dataset, algorithm: Mapping) -> Dataset:
    """What the SR needs to point at the SEG of ``header``'s image: its study, series, class and instance."""
    ref = Dataset()
    sha = str(algorithm.get("checkpoint_sha256", ""))
    src_uid = str(header.SOPInstanceUID)
    ref.StudyInstanceUID = header.StudyInstanceUID
    ref.SeriesInstanceUID = result_uid(src_uid, "seg-series", sha)
    ref.SOPClassUID = SEG_SOP_CLASS
    ref.SOPInstanceUID = result_uid(src_uid, "seg", sha)
    return ref


def heatmap_segmentation(
    header: Dataset,
    prediction: Any,
    *,
    heatmaps: Mapping[str, np.ndarray],
    algorithm: Mapping,
    checked: bool = False,
) -> Dataset:
    """The fractional SEG of ``segment_findings(prediction)``; a finding without a map gets an empty one.

    highdicom builds the object around all-zero maps (its checks of the values, a sort of every pixel,
    cost more than the maps' encoding), then the maps are scaled to 0-255 as highdicom does (rounded) and
    encoded by highdicom's own ``encode_frame``. ``checked``: let highdicom build it from the maps (tests
    hold the two equal element for element, pixel data included).
    """
    import highdicom as hd
    from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

    names = segment_findings(prediction)
    rows, cols = int(header.Rows), int(header.Columns)
    hold = withheld(prediction, algorithm)
    frames = np.zeros((len(names), rows, cols), dtype=np.float32)  # one contiguous map per segment
    for i, name in enumerate(names):
        heat = heatmaps.get(name)
        if heat is None or hold:
            continue
        heat = np.asarray(heat, dtype=np.float32)
        if heat.ndim != 2:
            continue  # an already composed picture (secondary captures only): no map to store
        if heat.shape != (rows, cols):  # e.g. decoded at a reduced scale: onto the source's grid
            heat = _resize(heat, rows, cols)
        np.clip(heat, 0.0, 1.0, out=frames[i])  # +-inf -> 1 / 0 as clip(nan_to_num(.)) does
        frames[i][np.isnan(frames[i])] = 0.0  # NaN -> 0
    if checked:
        maps = np.moveaxis(frames, 0, -1)[None]  # (1, rows, cols, segments), highdicom's layout
    else:
        # all-zero maps as 8-bit integers (highdicom checks them without sorting every pixel), stored
        # uncompressed (nothing to encode); the real frames are encoded below
        maps = np.zeros((1, rows, cols, len(names)), dtype=np.uint8)
    src_uid = str(header.SOPInstanceUID)
    descriptions = [
        _segment(i + 1, name, prediction, algorithm, hold, src_uid) for i, name in enumerate(names)
    ]
    ref = seg_reference(header, algorithm)
    seg = hd.seg.Segmentation(
        source_images=[_pixel_header(header)],
        pixel_array=maps,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=descriptions,
        series_instance_uid=ref.SeriesInstanceUID,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=ref.SOPInstanceUID,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="cxrdx",
        software_versions=str(algorithm.get("version", "")) or "unknown",
        device_serial_number=str(algorithm.get("checkpoint_sha256", ""))[:16] or "unknown",
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=255,
        content_label="CXRDX_GRADCAM",
        content_description=("NOT EVALUATED (out of distribution). " if hold else "") + "Grad-CAM heatmaps",
        transfer_syntax_uid=JPEGLSLossless if checked else ExplicitVRLittleEndian,
        omit_empty_frames=False,  # one frame per segment, always: the SR points at frame i for segment i
        series_description=DEMO_SEG_SERIES_DESCRIPTION if algorithm.get("demo") else SEG_SERIES_DESCRIPTION,
        content_qualification="RESEARCH",
    )
    if not checked:
        seg.file_meta.TransferSyntaxUID = JPEGLSLossless
        _encode_frames(seg, frames)
        if len(names) > 1:  # what highdicom says of float maps of several segments (integer zeros: "NO")
            seg.SegmentsOverlap = "UNDEFINED"
    dimensions = result_uid(src_uid, "seg-dimensions", str(algorithm.get("checkpoint_sha256", "")))
    for item in [*seg.get("DimensionOrganizationSequence", []), *seg.get("DimensionIndexSequence", [])]:
        item.DimensionOrganizationUID = dimensions  # not a random one: the same analysis, the same object
    copy_patient_study(header, seg)
    orientation = header.get("PatientOrientation")
    seg.PatientOrientation = orientation if orientation and len(orientation) == 2 else ""  # Type 2C: no FoR
    if codes.uses_private([codes.finding_concept(n) for n in names]):
        from highdicom.coding_schemes import CodingSchemeIdentificationItem

        seg.CodingSchemeIdentificationSequence = [
            CodingSchemeIdentificationItem(
                designator=codes.PRIVATE_SCHEME,
                name=codes.PRIVATE_SCHEME_NAME,
                responsible_organization="cxrdx",
            )
        ]
    seg.ImageComments = " ".join([*result_notes(prediction, algorithm), SALIENCY_NOTE, RESEARCH_USE])[:10240]
    if str(header.get("LossyImageCompression", "")) == "01":
        seg.LossyImageCompression = "01"  # derived from a lossy source (PS3.3 C.7.6.1.1.5)
    return seg


def _resize(heat: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A map onto the source's pixel grid (bilinear): a SEG of a radiograph has the source's Rows and Columns."""
    from PIL import Image

    return np.asarray(Image.fromarray(heat).resize((cols, rows), Image.Resampling.BILINEAR))


def _encode_frames(seg: Dataset, maps: np.ndarray) -> None:
    """The SEG's Pixel Data: each map (segment, H, W) as highdicom stores a fractional frame."""
    from highdicom.frame import encode_frame
    from pydicom.encaps import encapsulate

    scale = float(seg.MaximumFractionalValue)
    frames = [
        encode_frame(
            np.around(maps[k] * scale).astype(np.uint8),
            transfer_syntax_uid=seg.file_meta.TransferSyntaxUID,
            bits_allocated=seg.BitsAllocated,
            bits_stored=seg.BitsStored,
            photometric_interpretation=seg.PhotometricInterpretation,
            pixel_representation=seg.PixelRepresentation,
        )
        for k in range(len(maps))
    ]
    seg.PixelData = encapsulate(frames)


def _segment(number: int, name: str, prediction: Any, algorithm: Mapping, hold: bool, src: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes as dcm

    concept = codes.finding_concept(name)
    params = {"checkpoint-sha256": str(algorithm.get("checkpoint_sha256", "unknown"))}
    if algorithm.get("checkpoint"):
        params["checkpoint"] = str(algorithm["checkpoint"])
    sha = str(algorithm.get("checkpoint_sha256", ""))
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=f"{name} Grad-CAM"[:64],
        segmented_property_category=_cc(ABNORMAL),
        segmented_property_type=_cc(concept),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=str(algorithm.get("name", "cxrdx")),
            family=dcm.cid7162.ArtificialIntelligence,
            version=str(algorithm.get("version", "unknown")),
            parameters=params,
        ),
        tracking_uid=result_uid(src, f"track:{name}", sha),  # the SR's tracking UID of this finding
        tracking_id=f"cxrdx {name}",
        display_color=hd.color.CIELabColor(*_lab(_RGB[(number - 1) % len(_RGB)])),
    )
    p = prediction.probabilities.get(name)
    call = None if hold else (prediction.positive or {}).get(name)
    said = (
        "not evaluated"
        if hold
        else ("no threshold" if call is None else ("positive" if call else "negative"))
    )
    score = "" if p is None or hold else f", score {p:.2f}"
    description.SegmentDescription = f"{name} ({said}{score}). {SALIENCY_NOTE}"
    return description


def _pixel_header(header: Dataset) -> Dataset:
    """The source header as highdicom's SEG wants it (image pixel attributes, a Modality)."""
    out = Dataset()
    out.update(header)
    if "file_meta" in header.__dict__:
        out.file_meta = header.file_meta
    return out


def _lab(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """sRGB 0-255 -> CIE L*a*b* (D65), as highdicom's CIELabColor takes it."""
    c = np.array(rgb, dtype=np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = m @ c / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    lab = (116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2]))
    return (
        float(np.clip(lab[0], 0, 100)),
        float(np.clip(lab[1], -128, 127)),
        float(np.clip(lab[2], -128, 127)),
    )


def _cc(concept: codes.Concept):
    import highdicom as hd

    return hd.sr.CodedConcept(concept.code, concept.scheme, concept.meaning)
