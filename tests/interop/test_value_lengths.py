"""Header values longer than their VR allows are cut per VR in the SR, SC and FHIR (issue 28, item 9).

A source whose Patient's Name is 10 KB (and whose other patient/study values overflow their
VRs) must give result objects a PACS accepts: every text value within PS3.5's length for its
VR, checked by pydicom's own limits and by dciodvfy; the source dataset is not modified.
"""

from __future__ import annotations

import numpy as np
import pytest
from corpus.hostile_headers import unvalidated
from pydicom.dataset import Dataset
from pydicom.valuerep import MAX_VALUE_LEN
from results_kit import ALGORITHM, dciodvfy, prediction
from testkit import phantom_dicom

from cxrdx.errors import DataError
from cxrdx.interop.fhir import fhir_bundle
from cxrdx.interop.sr import results_for

LIMITS = {**MAX_VALUE_LEN, "PN": 64, "AS": 4, "DA": 8, "TM": 14}  # PN: in all, as dciodvfy checks


def _long_source():
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID = "9" * 500, "X" * 300
    with unvalidated():
        return phantom_dicom(
            7,
            PatientName="Doe^" + "J" * 10_240,
            PatientID="P" * 200,  # LO 64
            AccessionNumber="A" * 100,  # SH 16
            StudyID="S" * 40,  # SH 16
            StudyDescription="chest " * 2000,  # LO 64
            ReferringPhysicianName="Ref^" + "R" * 5000 + "=" + "I" * 300,  # PN, two component groups
            PatientComments="c" * 20_000,  # LT 10240
            StudyTime="1200001234567890123",  # TM 14: cut would be wrong, emptied
            BodyPartExamined="CHEST" + "X" * 40,  # CS 16
            OtherPatientIDsSequence=[other],
        )


def _too_long(ds: Dataset, where: str = "") -> list[str]:
    bad = []
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                bad += _too_long(item, f"{where}{elem.keyword}>")
            continue
        values = elem.value if elem.VM > 1 else [elem.value]
        for v in values:
            text = str(v)
            limit = LIMITS.get(elem.VR)
            if limit and len(text) > limit:
                bad.append(f"{where}{elem.keyword} ({elem.VR}): {len(text)} characters")
    return bad


def test_sr_and_sc_carry_no_value_beyond_its_vr(tmp_path):
    source = _long_source()
    assert _too_long(source)  # the source really overflows (positive control)
    before = str(source.PatientName)
    overlay = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    objects = results_for(
        source, prediction(), overlays={"Effusion": overlay}, algorithm=ALGORITHM, secondary_capture=True
    )
    assert [o.Modality for o in objects] == ["SR", "SEG"] + ["OT"] * len(prediction().probabilities)
    for k, obj in enumerate(objects):
        assert _too_long(obj) == [], obj.Modality
        assert str(obj.PatientName) == "Doe^" + "J" * 60 and obj.PatientID == "P" * 64
        assert obj.AccessionNumber == "A" * 16 and str(obj.ReferringPhysicianName) == f"Ref^{'R' * 60}"
        path = tmp_path / f"{k}.dcm"
        obj.save_as(path, enforce_file_format=True)
        assert not [e for e in dciodvfy(path) if "length" in e.lower()], dciodvfy(path)
    assert str(source.PatientName) == before  # the source is left as it was


def test_fhir_carries_the_same_cut_values():
    bundle = fhir_bundle(prediction(), algorithm=ALGORITHM, source=_long_source())
    report = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"
    )
    subject = report["subject"]
    assert subject["display"] == "Doe^" + "J" * 60 and subject["identifier"]["value"] == "P" * 64


def test_fit_value_per_vr():
    from cxrdx.interop.study import fit_value

    assert fit_value("x" * 100, "LO") == "x" * 64 and fit_value("x" * 20, "SH") == "x" * 16
    assert fit_value("20260101", "DA") == "20260101" and fit_value("2026010112", "DA") == ""
    assert fit_value("a=b=c=d", "PN") == "a=b=c" and fit_value(None, "LO") is None
    assert fit_value("Yamada^Tarou=" + "Y" * 60, "PN") == "Yamada^Tarou"  # a group kept only if it fits
    assert fit_value(3.5, "FD") == 3.5


def test_a_uid_beyond_64_characters_is_refused():
    from cxrdx.interop.study import source_header

    with unvalidated():
        source = phantom_dicom(8, StudyInstanceUID="1." + "2" * 80)
    with pytest.raises(DataError, match="StudyInstanceUID is 82 characters"):
        source_header(source)
