"""Results as DICOM: a Comprehensive SR following TID 1500 (highdicom's measurement report).

``results_for(source, prediction, overlays=..., algorithm=...)`` gives the objects a
PACS stores beside the source image, in its study: the SR first, then the heatmap SEG
(``cxrdx.interop.segmentation``), then, on request, one secondary capture per finding
(``cxrdx.interop.secondary_capture``): the same instances for every analysis of an image by a
checkpoint. The SR holds, per finding, one measurement group (TID 1410 referencing the finding's
segment of the SEG when it has one, else TID 1501 on the source image; finding type = the finding's code, tracking
identifier, algorithm identification, the source image) with

- a qualitative evaluation: the finding's code = Present / Absent by the checkpoint's
  threshold, or Undetermined when the checkpoint has none for it;
- the probability as a numeric measurement (DCM 122157 "Probability", unit "1"), or,
  for a finding that is not calibrated, a private "Model score (uncalibrated)" so nobody
  reads a score as a probability, with the finding's calibration state as its Measurement
  Method; the threshold behind the call ("Decision threshold"); the test-time-augmentation
  spread when there is one;

plus an out-of-distribution group (score, in distribution yes/no, threshold) when the
prediction has an OOD result, and TEXT "Comment"s in the root container: a demo model's
stamp, the OOD verdict, the model card's banners and training-data line
(``study.result_notes``) and the research-use disclaimer. An out-of-distribution image is
not evaluated (``study.withheld``): every finding is Undetermined and has no number, unless
the algorithm record says to send its findings (``--send-ood-findings``), and then marked. Algorithm
identification (TID 4019) names ``cxrdx``, its version and, as parameters, the
checkpoint's SHA-256 and file name. Content Qualification is RESEARCH, the document
PARTIAL/UNVERIFIED/PRELIMINARY: a machine's output that no one has signed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from cxrdx.interop import codes
from cxrdx.interop.study import (
    MANUFACTURER,
    RESEARCH_USE,
    SR_SERIES_NUMBER,
    calibration_states,
    copy_patient_study,
    finding_calibration,
    quiet_person_names,
    result_notes,
    result_uid,
    source_header,
    withheld,
)

SR_SERIES_DESCRIPTION = "cxrdx AI findings (research use only)"
DEMO_SERIES_DESCRIPTION = "cxrdx DEMO model findings (meaningless)"


def algorithm_for(
    weights: str | os.PathLike,
    meta: Any = None,
    calibrated: bool | None = None,
    *,
    thresholds: Mapping[str, float | None] | None = None,
    send_ood_findings: bool = False,
) -> dict:
    """The ``algorithm`` dict results_for expects, for a checkpoint file and its CheckpointMeta.

    With ``meta`` it carries what every result object must say (cxrdx.model.card): the demo
    stamp, the banners, the training-data line, each finding's threshold (``thresholds``: the
    ones applied, e.g. ``Predictor.thresholds``; default the checkpoint's) and calibration state
    (``study.calibration_states``). ``send_ood_findings``: report an out-of-distribution image's
    findings anyway (marked) instead of "not evaluated".
    """
    from cxrdx import __version__
    from cxrdx.files import file_sha256

    out: dict[str, Any] = {
        "name": "cxrdx",
        "version": __version__,
        "checkpoint": os.path.basename(os.fspath(weights)),
        "checkpoint_sha256": file_sha256(weights),
    }
    if meta is not None:
        out["architecture"] = meta.architecture
        out["threshold_method"] = meta.threshold_method
        calibration = meta.calibration or {}
        out["calibration"] = calibration.get("method", "none") if isinstance(calibration, dict) else "none"
        ood = meta.ood
        if isinstance(ood, dict) and ood.get("threshold") is not None:
            out["ood_threshold"] = float(ood["threshold"])
        from cxrdx.metrics.calibration import resolve_calibration
        from cxrdx.model import card

        names = list(meta.labels)
        record = resolve_calibration(meta.calibration, meta.provenance, names)
        out["calibration_by_finding"] = calibration_states(record, names)
        chosen = meta.thresholds if thresholds is None else thresholds
        out["thresholds"] = {n: float(t) for n, t in (chosen or {}).items() if t is not None}
        out["demo"] = card.demo_stamp(meta)
        out["caveats"] = card.banners(meta)
        out["training_data"] = card.training_line(meta)
    out["ood_findings"] = "send" if send_ood_findings else "withhold"
    if calibrated is not None:
        out["calibrated"] = bool(calibrated)
    return out


def results_for(
    source: Dataset,
    prediction: Any,
    *,
    overlays: Mapping[str, np.ndarray],
    algorithm: Mapping,
    image: np.ndarray | None = None,
    segmentation: bool = True,
    secondary_capture: bool = False,
) -> list[Dataset]:
    """THE result set of one source image and its Prediction: the SR, the heatmap SEG, the secondary captures.

    ``overlays``: finding -> Grad-CAM heatmap in [0, 1] on the source's pixel grid
    (``Predictor.explain``) for ``segmentation.heatmap_findings``. ``segmentation``: also the
    fractional SEG of the heatmaps, which the SR references (one segment per finding of
    ``segment_findings``). ``secondary_capture``: also one compressed secondary capture per
    finding of the model (``secondary_capture.secondary_captures``), so the set is the same
    for every analysis. ``image``: the [0, 1] gray image the prediction was made from (decoded
    from ``source`` when omitted and needed). ``algorithm``: see ``algorithm_for``.
    """
    from cxrdx.interop.segmentation import heatmap_segmentation, segment_findings

    header = source_header(source)
    segments = segment_findings(prediction) if segmentation else []
    objects: list[Dataset] = [structured_report(header, prediction, algorithm=algorithm, segments=segments)]
    with quiet_person_names():
        if segmentation:
            objects.append(heatmap_segmentation(header, prediction, heatmaps=overlays, algorithm=algorithm))
        if secondary_capture:
            from cxrdx.interop.secondary_capture import secondary_captures

            objects += secondary_captures(
                source, header, prediction, overlays=overlays, algorithm=algorithm, image=image
            )
    return objects


def structured_report(
    source: Dataset,
    prediction: Any,
    *,
    algorithm: Mapping,
    segments: list[str] | tuple[str, ...] = (),
    checked: bool = False,
) -> Dataset:
    """The TID 1500 Comprehensive SR for one prediction (``source``: its image's header).

    ``segments``: the findings of the heatmap SEG, in segment order (``segmentation.segment_findings``);
    each one's measurement group is then a TID 1410 planar ROI group that references its segment
    (segment i = frame i of the SEG), the others TID 1501 groups on the source image.

    The content tree is built by highdicom's templates (which check it); ``checked``: also let
    highdicom's ComprehensiveSR copy, re-parse and check the whole tree (about 3/4 of the cost, so
    only in tests, which hold the two documents equal element for element).
    """
    import highdicom as hd

    from cxrdx.interop.segmentation import seg_reference

    header = source_header(source)
    sha = str(algorithm.get("checkpoint_sha256", ""))
    src_uid = str(header.SOPInstanceUID)
    algo = _algorithm_id(algorithm)
    positive = prediction.positive or {}
    spread = prediction.uncertainty or {}
    thresholds = algorithm.get("thresholds") or {}
    hold = withheld(prediction, algorithm)  # out of distribution: not evaluated (qualitative "Undetermined")

    def image_ref() -> list:
        return [hd.sr.SourceImageForMeasurementGroup.from_source_image(header)]

    seg = seg_reference(header, algorithm) if segments else None
    numbers = {name: i + 1 for i, name in enumerate(segments)}

    groups = []
    used = [codes.CHEST_XRAY]
    for name, p in prediction.probabilities.items():
        concept = codes.finding_concept(name)
        used.append(concept)
        call = None if hold else positive.get(name)
        value = codes.UNDETERMINED if call is None else (codes.PRESENT if call else codes.ABSENT)
        measurements = None if hold else _finding_measurements(name, p, prediction, algorithm, used)
        if not hold and name in spread:
            measurements.append(
                hd.sr.Measurement(
                    name=_cc(codes.TTA_SPREAD), value=float(spread[name]), unit=_cc(codes.NO_UNITS)
                )
            )
            used.append(codes.TTA_SPREAD)
        if not hold and thresholds.get(name) is not None:
            measurements.append(
                hd.sr.Measurement(
                    name=_cc(codes.THRESHOLD), value=float(thresholds[name]), unit=_cc(codes.NO_UNITS)
                )
            )
            used.append(codes.THRESHOLD)
        common = {
            "tracking_identifier": hd.sr.TrackingIdentifier(
                uid=result_uid(src_uid, f"track:{name}", sha), identifier=f"cxrdx {name}"
            ),
            "finding_type": _cc(concept),
            "algorithm_id": algo,
            "measurements": measurements,
            "qualitative_evaluations": [hd.sr.QualitativeEvaluation(name=_cc(concept), value=_cc(value))],
        }
        if name in numbers:  # its heatmap is a segment of the SEG: a TID 1410 group pointing at it
            segment = hd.sr.ReferencedSegmentationFrame(
                sop_class_uid=seg.SOPClassUID,
                sop_instance_uid=seg.SOPInstanceUID,
                frame_number=numbers[name],
                segment_number=numbers[name],
                source_image=hd.sr.SourceImageForSegmentation.from_source_image(header),
            )
            # PS3.3 C.18.3.1 (Image SOP Instance Reference macro): Referenced Frame Number and Referenced
            # Segment Number are exclusive; the segment says it all (its frame is frame i)
            del segment[0].ReferencedSOPSequence[0].ReferencedFrameNumber
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_segment=segment, **common)
            )
        else:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(**common, source_images=image_ref()))
    ood = _ood_group(prediction, algorithm, src_uid, sha, algo, image_ref)
    if ood is not None:
        groups.append(ood)
        used += [codes.OOD_FINDING, codes.IN_DISTRIBUTION, codes.OOD_SCORE, codes.OOD_THRESHOLD]
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uid("device", str(algorithm.get("version", "")), sha),
            name=str(algorithm.get("name", "cxrdx")),
            manufacturer_name=MANUFACTURER,
            model_name=str(algorithm.get("architecture", "") or "cxrdx model")[:64],
        ),
    )
    notes = [*result_notes(prediction, algorithm), RESEARCH_USE]
    with quiet_person_names():
        return _document(header, observer, groups, algorithm, used, src_uid, sha, notes, seg, checked)


def _finding_measurements(name: str, p: float, prediction: Any, algorithm: Mapping, used: list) -> list:
    """The finding's number, named by its own calibration state (DCM 122157 "Probability" only when it is
    one), the state also as the measurement's method."""
    import highdicom as hd

    state = finding_calibration(prediction, algorithm, name)
    value_name = codes.UNCALIBRATED_SCORE if state == "none" else codes.PROBABILITY
    method = codes.calibration_concept(state)
    used += [value_name, method]
    return [
        hd.sr.Measurement(name=_cc(value_name), value=float(p), unit=_cc(codes.NO_UNITS), method=_cc(method))
    ]


def _document(header, observer, groups, algorithm, used, src_uid, sha, notes, seg=None, checked=False):
    import highdicom as hd

    report = _measurement_report(observer, groups, header)
    for note in notes:  # the demo stamp, the OOD verdict, the caveats, the training data, research use
        report[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=hd.sr.CodedConcept("121106", "DCM", "Comment"),
                value=note,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    document = {
        "evidence": [header] if seg is None else [header, seg],
        "series_instance_uid": result_uid(src_uid, "sr-series", sha),
        "series_number": SR_SERIES_NUMBER,
        "sop_instance_uid": result_uid(src_uid, "sr", sha),
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "series_description": DEMO_SERIES_DESCRIPTION if algorithm.get("demo") else SR_SERIES_DESCRIPTION,
        "manufacturer_model_name": "cxrdx",
        "software_versions": str(algorithm.get("version", "")),
        "content_qualification": "RESEARCH",
        "coding_schemes": _private_scheme() if codes.uses_private(used) else None,
    }
    root = report[0]
    if checked:  # highdicom copies, re-parses and checks the whole content tree: ~3/4 of the cost
        sr = hd.sr.ComprehensiveSR(content=root, **document)
    else:  # the document's modules around the root with its first item only, then the whole tree
        shell = Dataset()
        for elem in root:
            if elem.keyword != "ContentSequence":
                shell.add(elem)
        shell.ContentSequence = [root.ContentSequence[0]]
        sr = hd.sr.ComprehensiveSR(content=shell, **document)
        sr.ContentSequence = root.ContentSequence
    copy_patient_study(header, sr)
    return sr


def _measurement_report(observer, groups: list, header: Dataset):
    """TID 1500 with the source in its image library, or without one (TID 1600 is optional there)
    when highdicom cannot describe the image (a radiograph without Patient Orientation or Imager
    Pixel Spacing, as many CR files are)."""
    import highdicom as hd

    def build(images):
        return hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=_cc(codes.CHEST_XRAY),
            imaging_measurements=groups,
            referenced_images=images,
        )

    try:
        return build([header])
    except (AttributeError, IndexError, TypeError, ValueError):
        return build(None)


def _ood_group(prediction, algorithm, src_uid, sha, algo, image_ref):
    import highdicom as hd

    score = prediction.ood_score
    inside = prediction.in_distribution
    if score is None and inside is None:
        return None
    evaluations = []
    if inside is not None:
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                name=_cc(codes.IN_DISTRIBUTION), value=_cc(codes.YES if inside else codes.NO)
            )
        )
    measurements = []
    if score is not None:
        measurements.append(
            hd.sr.Measurement(name=_cc(codes.OOD_SCORE), value=float(score), unit=_cc(codes.NO_UNITS))
        )
    if algorithm.get("ood_threshold") is not None:
        measurements.append(
            hd.sr.Measurement(
                name=_cc(codes.OOD_THRESHOLD),
                value=float(algorithm["ood_threshold"]),
                unit=_cc(codes.NO_UNITS),
            )
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=result_uid(src_uid, "track:ood", sha), identifier="cxrdx out-of-distribution check"
        ),
        finding_type=_cc(codes.OOD_FINDING),
        algorithm_id=algo,
        measurements=measurements or None,
        qualitative_evaluations=evaluations or None,
        source_images=image_ref(),
    )


def _algorithm_id(algorithm: Mapping):
    import highdicom as hd

    params = [f"checkpoint-sha256={algorithm.get('checkpoint_sha256', 'unknown')}"]
    for key in ("checkpoint", "architecture", "calibration", "threshold_method"):
        if algorithm.get(key):
            params.append(f"{key}={algorithm[key]}")
    return hd.sr.AlgorithmIdentification(
        name=str(algorithm.get("name", "cxrdx")),
        version=str(algorithm.get("version", "unknown")),
        parameters=params,
        manufacturer=MANUFACTURER,
    )


def _private_scheme() -> list:
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return [
        CodingSchemeIdentificationItem(
            designator=codes.PRIVATE_SCHEME,
            name=codes.PRIVATE_SCHEME_NAME,
            responsible_organization="cxrdx",
        )
    ]


def _cc(concept: codes.Concept):
    import highdicom as hd

    return hd.sr.CodedConcept(concept.code, concept.scheme, concept.meaning)
