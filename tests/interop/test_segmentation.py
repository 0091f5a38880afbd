"""The Grad-CAM heatmaps as one fractional DICOM SEG: segments, codes, pixels, references, validity, size."""

from __future__ import annotations

import types

import numpy as np
import pydicom
import pytest
from results_kit import ALGORITHM, dciodvfy, dsr2xml, items, prediction
from testkit import phantom_dicom

from cxrdx.interop import codes
from cxrdx.interop.segmentation import SEG_SOP_CLASS, heatmap_findings, segment_findings
from cxrdx.interop.sr import results_for

JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"


def _heat(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth map in [0, 1] like an upsampled Grad-CAM (a Gaussian blob)."""
    rng = np.random.default_rng(seed)
    cy, cx = rng.uniform(0.2, 0.8, 2) * (h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.02 * h * w)).astype(np.float32)


def test_segment_findings_are_the_positive_calls_plus_the_top_three():
    # PROBS: Cardiomegaly .81, Effusion .55, Fracture .3, Atelectasis .12, Pneumothorax .07
    assert segment_findings(prediction()) == ["Cardiomegaly", "Effusion", "Fracture"]
    pred = prediction(calls={"Pneumothorax": True, "Cardiomegaly": False})
    assert segment_findings(pred) == ["Cardiomegaly", "Effusion", "Fracture", "Pneumothorax"]
    withheld = prediction(ood_score=9.0, in_distribution=False)
    assert heatmap_findings(withheld, ALGORITHM) == []  # no Grad-CAM for an OOD image ...
    assert heatmap_findings(withheld, {**ALGORITHM, "ood_findings": "send"}) == segment_findings(withheld)


def test_the_seg_holds_each_map_as_its_fraction_of_255_coded_like_the_sr(tmp_path):
    source = phantom_dicom(31, 96)
    pred = prediction()
    names = segment_findings(pred)
    heat = {name: _heat(96, 96, k) for k, name in enumerate(names)}
    sr, seg = results_for(source, pred, overlays=heat, algorithm=ALGORITHM)
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == SEG_SOP_CLASS and back.SegmentationType == "FRACTIONAL"
    assert back.SegmentationFractionalType == "PROBABILITY" and back.MaximumFractionalValue == 255
    assert back.file_meta.TransferSyntaxUID == JPEG_LS_LOSSLESS
    assert back.StudyInstanceUID == source.StudyInstanceUID and back.PatientID == source.PatientID
    assert (back.Rows, back.Columns, back.NumberOfFrames) == (96, 96, len(names))
    ref = back.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    frames = back.pixel_array.reshape(len(names), 96, 96)
    for k, (name, segment) in enumerate(zip(names, back.SegmentSequence, strict=True)):
        concept = codes.finding_concept(name)
        kind = segment.SegmentedPropertyTypeCodeSequence[0]
        assert (kind.CodingSchemeDesignator, kind.CodeValue) == (concept.scheme, concept.code)
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert segment.SegmentAlgorithmType == "AUTOMATIC" and segment.SegmentAlgorithmName == "cxrdx"
        assert f"checkpoint-sha256={ALGORITHM['checkpoint_sha256']}" in str(
            segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
        )
        assert "not a probability" in segment.SegmentDescription
        # PS3.3 C.8.20.2.3: the fraction is the stored value / Maximum Fractional Value (lossless)
        assert np.abs(frames[k] / 255.0 - heat[name]).max() <= 0.5 / 255 + 1e-6, name
    assert dciodvfy(path) == []
    # the SR's group of each finding with a segment points at that segment of this SEG
    refs = {}
    for item in items(sr):
        for r in item.get("ReferencedSOPSequence", []):
            if r.ReferencedSOPInstanceUID == seg.SOPInstanceUID:
                assert "ReferencedFrameNumber" not in r  # exclusive with the segment number (PS3.3 C.18.3.1)
                refs[int(r.ReferencedSegmentNumber)] = r
    assert sorted(refs) == list(range(1, len(names) + 1))
    sr_path = tmp_path / "sr.dcm"
    sr.save_as(sr_path, enforce_file_format=True)
    assert dciodvfy(sr_path) == []
    assert dsr2xml(sr_path).returncode == 0


def test_a_withheld_image_gets_the_same_seg_with_empty_maps_saying_not_evaluated():
    source = phantom_dicom(32, 64)
    pred = prediction(ood_score=9.0, in_distribution=False)
    sr, seg = results_for(source, pred, overlays={}, algorithm=ALGORITHM)
    again = results_for(source, prediction(), overlays={}, algorithm=ALGORITHM)[1]
    assert seg.SOPInstanceUID == again.SOPInstanceUID  # the same instance as an evaluated analysis
    assert seg.ContentDescription.startswith("NOT EVALUATED") and seg.pixel_array.max() == 0
    assert all("(not evaluated" in s.SegmentDescription for s in seg.SegmentSequence)


def test_a_heatmap_off_the_source_grid_is_put_onto_it():
    source = phantom_dicom(33, 64)
    half = np.zeros((32, 32), np.float32)
    half[:, 16:] = 1.0  # the right half, at half the source's resolution
    pred = prediction(calls={"Cardiomegaly": True})
    (seg,) = results_for(source, pred, overlays={"Cardiomegaly": half}, algorithm=ALGORITHM)[1:]
    frame = seg.pixel_array.reshape(-1, 64, 64)[segment_findings(pred).index("Cardiomegaly")]
    assert frame.shape == (64, 64)
    assert frame[:, :30].max() == 0 and frame[:, 34:].min() == 255  # the same half, at the source's grid


def test_the_sender_decodes_the_seg_for_a_peer_without_jpeg_ls(tmp_path):
    from cxrdx.interop.cstore import EXPLICIT, _payload

    source = phantom_dicom(34, 64)
    seg = results_for(source, prediction(), overlays={"Cardiomegaly": _heat(64, 64, 1)}, algorithm=ALGORITHM)[
        1
    ]
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)

    def peer(*accepted):
        ctx = [types.SimpleNamespace(abstract_syntax=SEG_SOP_CLASS, transfer_syntax=[t]) for t in accepted]
        return types.SimpleNamespace(accepted_contexts=ctx)

    assert _payload(peer(JPEG_LS_LOSSLESS, EXPLICIT), path, SEG_SOP_CLASS, JPEG_LS_LOSSLESS) == path
    plain = _payload(peer(EXPLICIT), path, SEG_SOP_CLASS, JPEG_LS_LOSSLESS)
    assert plain.file_meta.TransferSyntaxUID == EXPLICIT
    assert np.array_equal(plain.pixel_array, pydicom.dcmread(path).pixel_array)  # lossless both ways


@pytest.mark.realdata
def test_the_result_set_of_the_real_siim_film_is_valid_and_small(shared_data, tmp_path):
    source = pydicom.dcmread(shared_data / "dicom" / "siim_pneumothorax_sample.dcm")
    rows, cols = int(source.Rows), int(source.Columns)
    names = [n for n, _ in sorted(prediction().probabilities.items(), key=lambda kv: -kv[1])]
    pred = prediction(calls={n: True for n in names})  # every finding positive: the largest SEG
    heat = {name: _heat(rows, cols, k) for k, name in enumerate(segment_findings(pred))}
    objects = results_for(source, pred, overlays=heat, algorithm=ALGORITHM)
    total = 0
    for k, obj in enumerate(objects):
        path = tmp_path / f"{k}-{obj.Modality}.dcm"
        obj.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
        assert dciodvfy(path) == [], obj.Modality
    assert [o.Modality for o in objects] == ["SR", "SEG"]
    assert total < 2_000_000  # the budget for the SIIM film's objects


def test_the_fast_seg_equals_the_one_highdicom_builds_from_the_maps_element_for_element():
    from cxrdx.interop.segmentation import heatmap_segmentation
    from cxrdx.interop.study import source_header

    header = source_header(phantom_dicom(35, 80))
    pred = prediction()
    heat = {name: _heat(80, 80, k) for k, name in enumerate(segment_findings(pred))}
    checked = heatmap_segmentation(header, pred, heatmaps=heat, algorithm=ALGORITHM, checked=True)
    fast = heatmap_segmentation(header, pred, heatmaps=heat, algorithm=ALGORITHM)
    clock = {"00080012", "00080013", "00080023", "00080033", "0018A002"}  # creation/content/contribution time

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in clock}
        return [strip(v) for v in node] if isinstance(node, list) else node

    def plain(ds):
        return strip(ds.to_json_dict(bulk_data_threshold=1 << 30))

    assert plain(fast) == plain(checked)  # Pixel Data included (inline base64)
    assert fast.file_meta.TransferSyntaxUID == checked.file_meta.TransferSyntaxUID
    empty = heatmap_segmentation(header, pred, heatmaps={}, algorithm=ALGORITHM)
    assert plain(empty) != plain(checked)  # control: the pixels are compared
    odd = {name: heat[name].copy() for name in heat}  # non-finite values: NaN and -inf -> 0, +inf -> 255
    first = segment_findings(pred)[0]
    odd[first][0, :3] = [np.nan, np.inf, -np.inf]
    frame = heatmap_segmentation(header, pred, heatmaps=odd, algorithm=ALGORITHM).pixel_array[0]
    assert frame[0, :3].tolist() == [0, 255, 0]
