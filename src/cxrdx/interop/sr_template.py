"""The TID 1500 SR of ``sr.structured_report`` written from pieces highdicom built once, encoded once.

Building an SR's content tree with highdicom's templates and encoding its ~1,700 elements with pydicom
costs ~0.1 CPU-s per image, as much as the network. Per algorithm record and character set,
``ReportPieces`` keeps, encoded (``dicom_template``):

- the root's fixed items (language, observer context, procedure reported) and its "Imaging
  Measurements" container, whose groups are put in per image;
- each measurement group that occurs, built by ``sr_content`` with placeholder UIDs and numbers, keyed
  by what it says (``FindingGroup``, ``OodGroup``: the finding, its call, its calibration state, threshold,
  spread, segment): per image only the tracking UID, the source's and the SEG's UIDs and the numbers are
  written in;
- each comment (TEXT item).

The document's modules (patient, study, series, evidence, equipment) are still highdicom's, built around
the root's first item as ``sr`` does, and the image library item is highdicom's for each image; the
content sequence is the pieces' bytes (a raw element pydicom writes as it is). Tests hold the result equal,
byte for byte, to highdicom's ComprehensiveSR over the whole tree (``checked``), clock values aside.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from pydicom.dataset import Dataset

from cxrdx.interop import codes, sr_content
from cxrdx.interop import dicom_template as dt
from cxrdx.interop.study import copy_patient_study, result_uid

CONTENT_SEQUENCE = 0x0040A730
_PLACEHOLDER = {  # values nothing else in a group holds; each becomes a slot of that name
    ("UI", "1.2.999.7301.1"): "track",
    ("UI", "1.2.999.7301.2"): "class",
    ("UI", "1.2.999.7301.3"): "instance",
    ("UI", "1.2.999.7301.4"): "seg",
    ("DS", 0.123456789012): "value",
    ("FD", 0.123456789012): "value",
    ("DS", 0.987654321098): "spread",
    ("FD", 0.987654321098): "spread",
}
_STAND_IN = {name: value for (_, value), name in _PLACEHOLDER.items()}
_NOTES_KEPT = 256  # comments kept encoded (the OOD verdict's text changes with its score)
_PIECES: dict[tuple, ReportPieces] = {}


class ReportPieces:
    """The encoded pieces of the SRs of one algorithm record in one character set."""

    def __init__(self, algorithm: Mapping, encodings: Any) -> None:
        import highdicom as hd

        self.algorithm = algorithm
        self.encodings = encodings
        self.algo = sr_content.algorithm_id(algorithm)
        stand_in = self._source()
        track = _STAND_IN["track"]
        first = sr_content.FindingGroup("Atelectasis", codes.UNDETERMINED, None, False, None)
        group = sr_content.finding_group_item(first, 0.0, None, stand_in, None, track, self.algo)
        report = sr_content.measurement_report(sr_content.observer(algorithm), [group], None)
        root = report[0]
        items = list(root.ContentSequence)
        container = items[-1]
        if container.ConceptNameCodeSequence[0].CodeValue != "126010":  # "Imaging Measurements"
            raise dt.TemplateError("highdicom's TID 1500 no longer ends with its measurements")
        self.shell = sr_content.shell(root)
        self.prefix = dt.encode_items(items[:-1], encodings)
        self.container = dt.compile_item(container, splices={CONTENT_SEQUENCE: "groups"}, encodings=encodings)
        self.groups: dict[Any, dt.Item] = {}
        self.notes: dict[str, bytes] = {}
        self._hd = hd

    @staticmethod
    def _source(seg: bool = False) -> Dataset:
        ds = Dataset()
        ds.Modality, ds.Rows = "DX", 1  # what highdicom checks of a source image
        ds.SOPClassUID = _STAND_IN["class"]
        ds.SOPInstanceUID = _STAND_IN["seg" if seg else "instance"]
        return ds

    def _compile(self, group, expected: dict[str, int]) -> dt.Item:
        stand_in = self._source()
        seg = self._source(seg=True)
        seg.SOPClassUID = sr_seg_class()
        if isinstance(group, sr_content.OodGroup):
            built = sr_content.ood_group_item(
                group, _STAND_IN["value"], stand_in, _STAND_IN["track"], self.algo
            )
        else:
            p, spread = _STAND_IN["value"], _STAND_IN["spread"]
            built = sr_content.finding_group_item(
                group, p, spread, stand_in, seg, _STAND_IN["track"], self.algo
            )
        if len(built) != 1:
            raise dt.TemplateError(f"a measurement group of {len(built)} items")
        item = dt.compile_item(built[0], _PLACEHOLDER, encodings=self.encodings)
        if item.counts != expected:
            raise dt.TemplateError(f"placeholders found {item.counts}, expected {expected}")
        return item

    def group(self, group, value: float | None, spread: float | None, ids: Mapping[str, str]) -> bytes:
        """One group's item, encoded, with this image's UIDs (``ids``) and numbers."""
        item = self.groups.get(group)
        if item is None:
            expected = {"track": 1, "class": 1, "instance": 1}
            if isinstance(group, sr_content.OodGroup):
                expected.update({"value": 2} if group.score else {})
            else:
                expected.update({"seg": 1} if group.segment else {})
                expected.update({"value": 2} if group.state is not None else {})
                expected.update({"spread": 2} if group.spread else {})
            item = self.groups[group] = self._compile(group, expected)
        return dt.render(item, {**ids, "value": value, "spread": spread})

    def note(self, text: str) -> bytes:
        data = self.notes.get(text)
        if data is None:
            if len(self.notes) >= _NOTES_KEPT:
                self.notes.clear()
            data = self.notes[text] = dt.encode_items([sr_content.comment(text)], self.encodings)
        return data

    def library(self, header: Dataset) -> bytes:
        """The image library (TID 1600) of the source, as highdicom describes it, or nothing."""
        try:
            items = self._hd.sr.ImageLibrary([header])
        except sr_content.LIBRARY_ERRORS:
            return b""
        return dt.encode_items(items, self.encodings)


def sr_seg_class() -> str:
    from cxrdx.interop.segmentation import SEG_SOP_CLASS

    return SEG_SOP_CLASS


def pieces(algorithm: Mapping, encodings: Any) -> ReportPieces:
    """The pieces of this algorithm record and character set (made on first use, kept)."""
    charset = (encodings,) if isinstance(encodings, str) else tuple(encodings)
    key = (json.dumps(algorithm, sort_keys=True, default=str), charset)
    found = _PIECES.get(key)
    if found is None:
        if len(_PIECES) >= 16:
            _PIECES.clear()
        found = _PIECES[key] = ReportPieces(algorithm, encodings)
    return found


def templated_report(header, groups, ood, prediction, seg, algorithm: Mapping, used, notes) -> Dataset:
    """``sr.structured_report``'s document for this image, its content tree from the pieces."""
    import highdicom as hd
    from pydicom.charset import default_encoding

    sha = str(algorithm.get("checkpoint_sha256", ""))
    src_uid = str(header.SOPInstanceUID)
    first = pieces(algorithm, default_encoding)  # the shell is the same in every character set
    document = hd.sr.ComprehensiveSR(
        content=copy.deepcopy(first.shell), **sr_content.document_args(header, algorithm, used, seg)
    )
    copy_patient_study(header, document)
    encodings = document.get("SpecificCharacterSet", default_encoding)
    kit = pieces(algorithm, encodings)
    hd.sr.SourceImageForMeasurementGroup.from_source_image(header)  # highdicom's checks of the source
    ids = {"class": str(header.SOPClassUID), "instance": src_uid}
    if seg is not None:
        ids["seg"] = str(seg.SOPInstanceUID)
    items = []
    for group, p, spread in groups:
        track = result_uid(src_uid, f"track:{group.name}", sha)
        items.append(kit.group(group, p, spread, {**ids, "track": track}))
    if ood is not None:
        track = result_uid(src_uid, "track:ood", sha)
        items.append(kit.group(ood, prediction.ood_score, None, {**ids, "track": track}))
    container = dt.render(kit.container, {}, {"groups": items})
    content = b"".join([kit.prefix, kit.library(header), container, *(kit.note(n) for n in notes)])
    document[CONTENT_SEQUENCE] = dt.raw_sequence(CONTENT_SEQUENCE, content)
    document.set_original_encoding(False, True, document._character_set)
    return document
