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

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from cxrdx.interop.sr_content import (
    DEMO_SERIES_DESCRIPTION,
    SR_SERIES_DESCRIPTION,
    algorithm_id,
    comment,
    concepts_used,
    document_args,
    finding_group_item,
    finding_groups,
    measurement_report,
    observer,
    ood_group,
    ood_group_item,
    shell,
)
from cxrdx.interop.study import (
    RESEARCH_USE,
    calibration_states,
    copy_patient_study,
    quiet_person_names,
    result_notes,
    result_uid,
    source_header,
)

__all__ = [
    "DEMO_SERIES_DESCRIPTION",
    "SR_SERIES_DESCRIPTION",
    "algorithm_for",
    "results_for",
    "structured_report",
]

log = logging.getLogger("cxrdx.interop")


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
    templated: bool = True,
) -> Dataset:
    """The TID 1500 Comprehensive SR for one prediction (``source``: its image's header).

    ``segments``: the findings of the heatmap SEG, in segment order (``segmentation.segment_findings``);
    each one's measurement group is then a TID 1410 planar ROI group that references its segment
    (segment i = frame i of the SEG), the others TID 1501 groups on the source image.

    The content tree is built by highdicom's templates (which check it). By default (``templated``) the
    content tree is written from pieces highdicom built and checked once per algorithm, encoded once,
    with this image's UIDs and numbers put in (``sr_template``); tests hold the two equal.
    ``checked``: also let highdicom's ComprehensiveSR copy, re-parse and check the whole tree (about 3/4
    of the highdicom path's cost, so only in tests, which hold the documents equal element for element).
    """
    header = source_header(source)
    sha = str(algorithm.get("checkpoint_sha256", ""))
    src_uid = str(header.SOPInstanceUID)
    groups = finding_groups(prediction, algorithm, segments)
    ood = ood_group(prediction, algorithm)
    used = concepts_used(groups, ood)
    notes = [*result_notes(prediction, algorithm), RESEARCH_USE]
    from cxrdx.interop.segmentation import seg_reference

    seg = seg_reference(header, algorithm) if segments else None
    if templated and not checked:
        from cxrdx.interop.dicom_template import TemplateError
        from cxrdx.interop.sr_template import templated_report

        try:
            with quiet_person_names():
                return templated_report(header, groups, ood, prediction, seg, algorithm, used, notes)
        except TemplateError as exc:  # never expected: the highdicom path writes the same document
            log.warning("the SR's templates failed (%s); highdicom builds it", exc)
    algo = algorithm_id(algorithm)
    track = {g.name: result_uid(src_uid, f"track:{g.name}", sha) for g, _, _ in groups}
    built = [finding_group_item(g, p, s, header, seg, track[g.name], algo) for g, p, s in groups]
    if ood is not None:
        track_ood = result_uid(src_uid, "track:ood", sha)
        built.append(ood_group_item(ood, prediction.ood_score, header, track_ood, algo))
    with quiet_person_names():
        return _document(header, observer(algorithm), built, algorithm, used, notes, seg, checked)


def _document(header, device, groups, algorithm, used, notes, seg=None, checked=False):
    import highdicom as hd

    report = measurement_report(device, groups, [header])
    for note in notes:  # the demo stamp, the OOD verdict, the caveats, the training data, research use
        report[0].ContentSequence.append(comment(note))
    document = document_args(header, algorithm, used, seg)
    root = report[0]
    if checked:  # highdicom copies, re-parses and checks the whole content tree: ~3/4 of the cost
        sr = hd.sr.ComprehensiveSR(content=root, **document)
    else:  # the document's modules around the root with its first item only, then the whole tree
        sr = hd.sr.ComprehensiveSR(content=shell(root), **document)
        sr.ContentSequence = root.ContentSequence
    copy_patient_study(header, sr)
    return sr
