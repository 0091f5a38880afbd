"""One result set per (image, model), read back from a real Orthanc: a re-analysis leaves nothing stale.

A film goes to the node (``cxrdx listen --secondary-capture``), its results to Orthanc; then the same
instance (same SOP Instance UID) with other pixels, whose call differs: the study must then hold the
second analysis only, the same instances (one SR, one SEG, one SC per finding), none of them saying
what the first analysis said. The checkpoint's threshold is put between the two films' scores by a
prediction made here first, so the call really changes.
"""

from __future__ import annotations

import copy
import io
from collections import Counter

import pydicom
import pytest
import testkit
from node_kit import ORTHANC_BIN, Listener, Orthanc, phantom_dicom, store, wait_for

from cxrdx.labels import FINDINGS

pytestmark = pytest.mark.skipif(
    ORTHANC_BIN is None,
    reason="Orthanc is not installed (Debian `orthanc`; `make test` installs it with apt)",
)


def _study(orthanc: Orthanc, study_uid: str) -> list:
    """Every result instance (not the source) of a study in Orthanc, read back as datasets."""
    ids = orthanc.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}})
    objects = [pydicom.dcmread(io.BytesIO(orthanc.file(i))) for i in ids]
    return [o for o in objects if o.Modality in ("SR", "SEG", "OT")]


def _call(sr, meaning: str) -> str | None:
    """The qualitative evaluation (Present / Absent) of one finding in an SR."""

    def walk(items):
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
            if item.ValueType == "CODE" and name == meaning:
                yield str(item.ConceptCodeSequence[0].CodeMeaning)
            yield from walk(item.get("ContentSequence", []))

    return next(walk(sr.ContentSequence), None)


def _about(sc, finding: str) -> bool:
    """Is this SC the one of ``finding`` (picture: "overlay for X on", card: "card for X:")?"""
    return f"for {finding} " in sc.DerivationDescription or f"for {finding}:" in sc.DerivationDescription


def test_a_reanalysis_replaces_the_whole_result_set_in_orthanc(tmp_path):
    from cxrdx.inference.predictor import Predictor
    from cxrdx.interop.codes import finding_concept

    first = phantom_dicom(70, 64)
    second = copy.deepcopy(first)  # the same instance (all UIDs), other pixels: a corrected re-send
    other = phantom_dicom(71, 64)
    second.PixelData = other.PixelData
    paths = []
    for name, ds in (("first", first), ("second", second)):
        paths.append(tmp_path / f"{name}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    probe = testkit.tiny_checkpoint(tmp_path / "probe.safetensors", 32)
    p1, p2 = (
        p.probabilities for p in Predictor.load(probe, backend="torch").predict([str(p) for p in paths])
    )
    flip = max(FINDINGS, key=lambda n: p1[n] - p2[n])
    assert p1[flip] > p2[flip], "the two films score differently"
    thresholds = {n: 1.01 for n in FINDINGS} | {flip: (p1[flip] + p2[flip]) / 2}  # positive, then negative
    ckpt = testkit.tiny_checkpoint(
        tmp_path / "flip.safetensors",
        32,
        thresholds=thresholds,
        threshold_method="test",
        evaluation={"mean_auroc": 0.5, "dataset": "node test fixture (not a real evaluation)"},
    )
    (tmp_path / "orthanc").mkdir()
    orthanc = Orthanc(tmp_path / "orthanc")
    node = Listener(
        ckpt, orthanc.destination, tmp_path / "spool", None, "--secondary-capture", "--backend", "torch"
    )
    meaning = finding_concept(flip).meaning
    study = str(first.StudyInstanceUID)
    expected = Counter({"SR": 1, "SEG": 1, "OT": len(FINDINGS)})
    try:

        def complete(call: str, picture: str):
            """The study's result set when every instance says the analysis that ``call`` stands for."""
            objects = _study(orthanc, study)
            if Counter(o.Modality for o in objects) != expected:
                return None
            sr = next(o for o in objects if o.Modality == "SR")
            sc = next(o for o in objects if o.Modality == "OT" and _about(o, flip))
            return (
                objects
                if _call(sr, meaning) == call and sc.DerivationDescription.startswith(picture)
                else None
            )

        assert store(node.port, [first], "CXRDX") == [0]
        before = wait_for(
            lambda: complete("Present", "Grad-CAM overlay"), 120, "the first analysis in Orthanc"
        )
        assert store(node.port, [second], "CXRDX") == [0]
        after = wait_for(lambda: complete("Absent", "Text card"), 120, "the second analysis in Orthanc")
    finally:
        node.stop()
        orthanc.stop()
    assert {o.SOPInstanceUID for o in after} == {o.SOPInstanceUID for o in before}  # replaced, not added
    assert Counter(o.Modality for o in after) == expected
    sr = next(o for o in after if o.Modality == "SR")
    assert [_call(sr, finding_concept(n).meaning) for n in FINDINGS] == ["Absent"] * len(FINDINGS)
    # nothing stale: no picture, no segment, no SR line of the first analysis survives
    assert not [o for o in after if o.Modality == "OT" and o.DerivationDescription.startswith("Grad-CAM")]
    seg = next(o for o in after if o.Modality == "SEG")
    said = {str(s.SegmentLabel): str(s.SegmentDescription) for s in seg.SegmentSequence}
    # its segment is gone (it is neither positive nor among the top three now) or says negative
    assert said.get(f"{flip} Grad-CAM", f"{flip} (negative").startswith(f"{flip} (negative")
    assert all(d.split(" (")[1].startswith("negative") for d in said.values())
    assert not [d for d in said.values() if "(positive" in d]
    assert all(
        o.SourceImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
        for o in after
        if o.Modality == "OT"
    )
