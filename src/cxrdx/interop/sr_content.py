"""The SR's content as highdicom builds it: the measurement groups, the observer, comments, the document's modules.

``sr.structured_report`` assembles these into the TID 1500 document; ``sr_template`` builds each piece once
with placeholder values and encodes it. A finding's group is described by ``FindingGroup`` (what it says:
the finding, its call, its calibration state, threshold, spread, segment) apart from its image's values
(the tracking UID, the source's and the SEG's UIDs, the probability), so both build it the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from cxrdx.interop import codes
from cxrdx.interop.study import (
    MANUFACTURER,
    SR_SERIES_NUMBER,
    finding_calibration,
    result_uid,
    withheld,
)

SR_SERIES_DESCRIPTION = "cxrdx AI findings (research use only)"
DEMO_SERIES_DESCRIPTION = "cxrdx DEMO model findings (meaningless)"


@dataclass(frozen=True)
class FindingGroup:
    """What one finding's measurement group says, less its image's values (UIDs, probability, spread)."""

    name: str
    value: codes.Concept  # the qualitative evaluation: Present / Absent / Undetermined
    state: str | None  # the number's calibration state; None: no numbers (the image is not evaluated)
    spread: bool  # a test-time-augmentation spread follows the number
    threshold: float | None  # the decision threshold reported after it
    segment: int = 0  # its segment of the SEG (TID 1410), 0: TID 1501 on the source image


@dataclass(frozen=True)
class OodGroup:
    """What the out-of-distribution group says, less its image's values (UIDs, score)."""

    inside: bool | None
    score: bool
    threshold: float | None


def finding_groups(
    prediction: Any, algorithm: Mapping, segments
) -> list[tuple[FindingGroup, float, float | None]]:
    """Each finding's group, with its probability and its spread (or None)."""
    positive = prediction.positive or {}
    spread = prediction.uncertainty or {}
    thresholds = algorithm.get("thresholds") or {}
    hold = withheld(prediction, algorithm)  # out of distribution: not evaluated (qualitative "Undetermined")
    numbers = {name: i + 1 for i, name in enumerate(segments)}
    out = []
    for name, p in prediction.probabilities.items():
        call = None if hold else positive.get(name)
        value = codes.UNDETERMINED if call is None else (codes.PRESENT if call else codes.ABSENT)
        state = None if hold else finding_calibration(prediction, algorithm, name)
        has_spread = not hold and name in spread
        threshold = None if hold or thresholds.get(name) is None else float(thresholds[name])
        group = FindingGroup(name, value, state, has_spread, threshold, numbers.get(name, 0))
        out.append((group, float(p), float(spread[name]) if has_spread else None))
    return out


def ood_group(prediction: Any, algorithm: Mapping) -> OodGroup | None:
    if prediction.ood_score is None and prediction.in_distribution is None:
        return None
    threshold = algorithm.get("ood_threshold")
    return OodGroup(
        prediction.in_distribution,
        prediction.ood_score is not None,
        None if threshold is None else float(threshold),
    )


def concepts_used(groups: list, ood: OodGroup | None) -> list[codes.Concept]:
    """The coded concepts of the report (the private coding scheme is declared when one is ours)."""
    used = [codes.CHEST_XRAY]
    for group, _, _ in groups:
        used.append(codes.finding_concept(group.name))
        if group.state is not None:
            value_name = codes.UNCALIBRATED_SCORE if group.state == "none" else codes.PROBABILITY
            used += [value_name, codes.calibration_concept(group.state)]
        if group.spread:
            used.append(codes.TTA_SPREAD)
        if group.threshold is not None:
            used.append(codes.THRESHOLD)
    if ood is not None:
        used += [codes.OOD_FINDING, codes.IN_DISTRIBUTION, codes.OOD_SCORE, codes.OOD_THRESHOLD]
    return used


def finding_group_item(group: FindingGroup, p: float, spread: float | None, header, seg, track: str, algo):
    """One finding's highdicom measurement group (TID 1410 on its segment, else TID 1501)."""
    import highdicom as hd

    concept = codes.finding_concept(group.name)
    measurements = None
    if group.state is not None:
        value_name = codes.UNCALIBRATED_SCORE if group.state == "none" else codes.PROBABILITY
        method = codes.calibration_concept(group.state)
        measurements = [
            hd.sr.Measurement(name=cc(value_name), value=p, unit=cc(codes.NO_UNITS), method=cc(method))
        ]
        if group.spread:
            measurements.append(
                hd.sr.Measurement(name=cc(codes.TTA_SPREAD), value=spread, unit=cc(codes.NO_UNITS))
            )
        if group.threshold is not None:
            measurements.append(
                hd.sr.Measurement(name=cc(codes.THRESHOLD), value=group.threshold, unit=cc(codes.NO_UNITS))
            )
    common = {
        "tracking_identifier": hd.sr.TrackingIdentifier(uid=track, identifier=f"cxrdx {group.name}"),
        "finding_type": cc(concept),
        "algorithm_id": algo,
        "measurements": measurements,
        "qualitative_evaluations": [hd.sr.QualitativeEvaluation(name=cc(concept), value=cc(group.value))],
    }
    if group.segment:  # its heatmap is a segment of the SEG: a TID 1410 group pointing at it
        segment = hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            frame_number=group.segment,
            segment_number=group.segment,
            source_image=hd.sr.SourceImageForSegmentation.from_source_image(header),
        )
        # PS3.3 C.18.3.1 (Image SOP Instance Reference macro): Referenced Frame Number and Referenced
        # Segment Number are exclusive; the segment says it all (its frame is frame i)
        del segment[0].ReferencedSOPSequence[0].ReferencedFrameNumber
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_segment=segment, **common)
    source = [hd.sr.SourceImageForMeasurementGroup.from_source_image(header)]
    return hd.sr.MeasurementsAndQualitativeEvaluations(**common, source_images=source)


def observer(algorithm: Mapping):
    import highdicom as hd

    sha = str(algorithm.get("checkpoint_sha256", ""))
    return hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uid("device", str(algorithm.get("version", "")), sha),
            name=str(algorithm.get("name", "cxrdx")),
            manufacturer_name=MANUFACTURER,
            model_name=str(algorithm.get("architecture", "") or "cxrdx model")[:64],
        ),
    )


def comment(note: str):
    """A TEXT "Comment" of the root container: a demo stamp, the OOD verdict, a caveat, research use."""
    import highdicom as hd

    return hd.sr.TextContentItem(
        name=hd.sr.CodedConcept("121106", "DCM", "Comment"),
        value=note,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


def document_args(header: Dataset, algorithm: Mapping, used: list, seg: Dataset | None) -> dict:
    """highdicom's ComprehensiveSR arguments besides the content: evidence, UIDs, series, equipment."""
    sha = str(algorithm.get("checkpoint_sha256", ""))
    src_uid = str(header.SOPInstanceUID)
    return {
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
        "coding_schemes": private_scheme() if codes.uses_private(used) else None,
    }


def shell(root: Dataset) -> Dataset:
    """The root container less its content but its first item: what highdicom needs to write the
    document's modules around it (copying and checking the whole tree is ~3/4 of the cost)."""
    out = Dataset()
    for elem in root:
        if elem.keyword != "ContentSequence":
            out.add(elem)
    out.ContentSequence = [root.ContentSequence[0]]
    return out


LIBRARY_ERRORS = (AttributeError, IndexError, TypeError, ValueError)  # highdicom cannot describe the image


def measurement_report(observer, groups: list, images: list | None):
    """TID 1500 with the source in its image library, or without one (TID 1600 is optional there)
    when highdicom cannot describe the image (a radiograph without Patient Orientation or Imager
    Pixel Spacing, as many CR files are)."""
    import highdicom as hd

    def build(images):
        return hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=cc(codes.CHEST_XRAY),
            imaging_measurements=groups,
            referenced_images=images,
        )

    if not images:
        return build(None)
    try:
        return build(images)
    except LIBRARY_ERRORS:
        return build(None)


def ood_group_item(ood: OodGroup, score: float | None, header, track: str, algo):
    import highdicom as hd

    evaluations = []
    if ood.inside is not None:
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                name=cc(codes.IN_DISTRIBUTION), value=cc(codes.YES if ood.inside else codes.NO)
            )
        )
    measurements = []
    if ood.score:
        measurements.append(
            hd.sr.Measurement(name=cc(codes.OOD_SCORE), value=float(score), unit=cc(codes.NO_UNITS))
        )
    if ood.threshold is not None:
        measurements.append(
            hd.sr.Measurement(name=cc(codes.OOD_THRESHOLD), value=ood.threshold, unit=cc(codes.NO_UNITS))
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=track, identifier="cxrdx out-of-distribution check"),
        finding_type=cc(codes.OOD_FINDING),
        algorithm_id=algo,
        measurements=measurements or None,
        qualitative_evaluations=evaluations or None,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(header)],
    )


def algorithm_id(algorithm: Mapping):
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


def private_scheme() -> list:
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return [
        CodingSchemeIdentificationItem(
            designator=codes.PRIVATE_SCHEME,
            name=codes.PRIVATE_SCHEME_NAME,
            responsible_organization="cxrdx",
        )
    ]


def cc(concept: codes.Concept):
    import highdicom as hd

    return hd.sr.CodedConcept(concept.code, concept.scheme, concept.meaning)
