"""The TID 1500 Structured Report: read back with pydicom (and highdicom), checked by dciodvfy and DCMTK."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.uid import ComprehensiveSRStorage
from results_kit import ALGORITHM, PROBS, SHA, concept, dciodvfy, dsr2xml, groups, items, prediction
from testkit import phantom_dicom, tiny_checkpoint

from cxrdx.errors import DataError
from cxrdx.files import file_sha256
from cxrdx.interop import codes
from cxrdx.interop.sr import RESEARCH_USE, algorithm_for, results_for, structured_report


def _write_read(ds, path):
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def _by_finding(sr) -> dict[str, dict]:
    """finding code -> {"value": the qualitative evaluation's code, "num": {code: value}, "refs": [uids]}."""
    out = {}
    for group in groups(sr):
        kids = group.ContentSequence
        finding = next(k for k in kids if concept(k) == ("DCM", "121071"))  # "Finding"
        code = finding.ConceptCodeSequence[0]
        key = str(code.get("CodeValue") or code.get("LongCodeValue"))
        evals = [k for k in kids if k.ValueType == "CODE" and concept(k)[1] == key]
        nums = {
            concept(k)[1]: float(k.MeasuredValueSequence[0].NumericValue)
            for k in kids
            if k.ValueType == "NUM"
        }
        refs = [k.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for k in kids if k.ValueType == "IMAGE"]
        out[key] = {
            "value": evals[0].ConceptCodeSequence[0].CodeValue if evals else None,
            "num": nums,
            "refs": refs,
        }
    return out


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")  # the source's age is invalid on purpose
def test_sr_is_in_the_source_study_with_its_patient(tmp_path):
    source = phantom_dicom(3, PatientAge="45", PatientWeight=70)
    sr, _seg = results_for(source, prediction(), overlays={}, algorithm=ALGORITHM)
    back = _write_read(sr, tmp_path / "sr.dcm")
    assert back.SOPClassUID == ComprehensiveSRStorage and back.Modality == "SR"
    assert back.StudyInstanceUID == source.StudyInstanceUID
    for key in (
        "PatientID",
        "PatientName",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
    ):
        assert back[key].value == source[key].value, key
    assert back.PatientAge == "045Y"  # "45" is not a valid AS: repaired, not copied invalid
    assert float(back.PatientWeight) == 70
    assert back.SeriesInstanceUID != source.SeriesInstanceUID
    assert back.SOPInstanceUID != source.SOPInstanceUID
    assert back.ContentQualification == "RESEARCH"
    assert back.CompletionFlag == "PARTIAL" and back.VerificationFlag == "UNVERIFIED"
    ev = back.CurrentRequestedProcedureEvidenceSequence[0]
    assert ev.StudyInstanceUID == source.StudyInstanceUID
    ref = ev.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_sr_uids_are_derived_from_the_source_and_the_checkpoint():
    source = phantom_dicom(4)
    a = structured_report(source, prediction(), algorithm=ALGORITHM)
    b = structured_report(source, prediction(calls=None), algorithm=ALGORITHM)  # a resend, other content
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    other_model = structured_report(
        source, prediction(), algorithm={**ALGORITHM, "checkpoint_sha256": "cd" * 32}
    )
    other_image = structured_report(phantom_dicom(5), prediction(), algorithm=ALGORITHM)
    assert len({a.SOPInstanceUID, other_model.SOPInstanceUID, other_image.SOPInstanceUID}) == 3
    assert a.SOPInstanceUID.startswith("2.25.") and len(a.SOPInstanceUID) <= 64


def test_sr_has_one_group_per_finding_with_call_and_probability(tmp_path):
    source = phantom_dicom(6)
    back = _write_read(structured_report(source, prediction(), algorithm=ALGORITHM), tmp_path / "sr.dcm")
    found = _by_finding(back)
    present, absent, undetermined = codes.PRESENT.code, codes.ABSENT.code, codes.UNDETERMINED.code
    expect = {"Atelectasis": absent, "Cardiomegaly": present, "Effusion": present, "Pneumothorax": absent}
    expect["Fracture"] = undetermined  # no threshold for it
    assert set(found) == {codes.finding_concept(n).code for n in PROBS}
    for name, value in expect.items():
        got = found[codes.finding_concept(name).code]
        assert got["value"] == value, name
        assert got["num"][codes.PROBABILITY.code] == pytest.approx(PROBS[name], abs=1e-9)
        assert got["refs"] == [source.SOPInstanceUID]
    assert codes.finding_concept("Effusion") == ("SCT", "60046008", "Pleural effusion")


def test_sr_without_thresholds_says_not_determined_and_uncalibrated_says_score(tmp_path):
    pred = prediction(calls=None, calibration="none")
    back = _write_read(structured_report(phantom_dicom(7), pred, algorithm=ALGORITHM), tmp_path / "sr.dcm")
    found = _by_finding(back)
    assert {g["value"] for g in found.values()} == {codes.UNDETERMINED.code}
    assert all(set(g["num"]) == {codes.UNCALIBRATED_SCORE.code} for g in found.values())
    schemes = [s.CodingSchemeDesignator for s in back.CodingSchemeIdentificationSequence]
    assert codes.PRIVATE_SCHEME in schemes  # the local codes are declared


def test_sr_algorithm_identification_disclaimer_and_ood(tmp_path):
    pred = prediction(ood_score=12.5, in_distribution=False)
    back = _write_read(structured_report(phantom_dicom(8), pred, algorithm=ALGORITHM), tmp_path / "sr.dcm")
    texts = {(concept(i)[1], i.TextValue) for i in items(back) if i.ValueType == "TEXT"}
    assert ("111001", "cxrdx") in texts  # Algorithm Name
    assert ("111003", "0.1.0") in texts  # Algorithm Version
    assert ("111002", f"checkpoint-sha256={SHA}") in texts  # Algorithm Parameters
    assert ("121106", RESEARCH_USE) in texts  # Comment: research use only
    (ood,) = [
        g for g in groups(back) if any(concept(k)[1] == codes.OOD_SCORE.code for k in g.ContentSequence)
    ]
    finding = next(k for k in ood.ContentSequence if concept(k) == ("DCM", "121071"))
    assert finding.ConceptCodeSequence[0].CodeValue == codes.OOD_FINDING.code
    kids = {concept(k)[1]: k for k in ood.ContentSequence}
    assert float(kids[codes.OOD_SCORE.code].MeasuredValueSequence[0].NumericValue) == 12.5
    assert kids[codes.IN_DISTRIBUTION.code].ConceptCodeSequence[0].CodeValue == codes.NO.code
    # no OOD result: no OOD group
    plain = structured_report(phantom_dicom(8), prediction(), algorithm=ALGORITHM)
    assert len(groups(plain)) == len(PROBS)


def test_highdicom_reads_the_report_back(tmp_path):
    import highdicom as hd

    path = tmp_path / "sr.dcm"
    structured_report(phantom_dicom(9), prediction(), algorithm=ALGORITHM).save_as(
        path, enforce_file_format=True
    )
    report = hd.sr.srread(path)
    measured = report.content.get_image_measurement_groups()
    assert len(measured) == len(PROBS)
    assert {g.finding_type.value for g in measured} == {codes.finding_concept(n).code for n in PROBS}


def test_source_without_a_study_is_refused_clearly():
    source = phantom_dicom(10, StudyInstanceUID=None)
    with pytest.raises(DataError, match="no StudyInstanceUID.*--format fhir"):
        results_for(source, prediction(), overlays={}, algorithm=ALGORITHM)


def test_algorithm_for_a_checkpoint(tmp_path):
    from cxrdx.model.checkpoint import read_checkpoint_meta

    ckpt = tiny_checkpoint(tmp_path / "m.safetensors")
    algo = algorithm_for(ckpt, read_checkpoint_meta(ckpt), calibrated=False)
    assert algo["checkpoint_sha256"] == file_sha256(ckpt) and algo["name"] == "cxrdx"
    assert algo["architecture"] == "densenet-tiny" and algo["calibrated"] is False


def test_sr_passes_dciodvfy_and_dcmtk(tmp_path):
    path = tmp_path / "sr.dcm"
    pred = prediction(ood_score=1.0, in_distribution=True)
    structured_report(phantom_dicom(11), pred, algorithm=ALGORITHM).save_as(path, enforce_file_format=True)
    assert dciodvfy(path) == []
    parsed = dsr2xml(path)
    assert parsed.returncode == 0 and "error" not in parsed.stderr.lower(), parsed.stderr


@pytest.mark.realdata
def test_sr_of_the_real_siim_dicom(shared_data, tmp_path):
    source = pydicom.dcmread(shared_data / "dicom" / "siim_pneumothorax_sample.dcm")
    sr, _seg = results_for(source, prediction(), overlays={}, algorithm=ALGORITHM)
    path = tmp_path / "sr.dcm"
    back = _write_read(sr, path)
    assert back.StudyInstanceUID == source.StudyInstanceUID and back.PatientID == source.PatientID
    assert back.PatientAge == "062Y"  # the file's "62" made valid
    assert dciodvfy(path) == []
    assert dsr2xml(path).returncode == 0


def _without_clock(ds) -> dict:
    """The SR as DICOM JSON, less what the clock writes (creation/content date and time)."""
    clock = {"00080012", "00080013", "00080023", "00080033", "0018A002"}  # ... and Contribution DateTime

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in clock}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(ds.to_json_dict())


@pytest.mark.parametrize("case", ["calls", "no-thresholds", "ood", "withheld"])
def test_the_fast_sr_equals_the_one_highdicom_checks_element_for_element(case, tmp_path):
    from cxrdx.interop.segmentation import segment_findings

    source = phantom_dicom(21)
    made = {
        "calls": lambda: prediction(),
        "no-thresholds": lambda: prediction(calls=None, calibration="none"),
        "ood": lambda: prediction(ood_score=1.0, in_distribution=True),
        "withheld": lambda: prediction(ood_score=9.0, in_distribution=False),
    }
    pred = made[case]()
    if case == "ood":
        pred.uncertainty = {"Effusion": 0.05}  # the TTA spread, too
    algorithm = {**ALGORITHM, "thresholds": {"Cardiomegaly": 0.5, "Effusion": 0.4}, "ood_threshold": 3.0}
    segments = segment_findings(pred)
    checked = structured_report(source, pred, algorithm=algorithm, segments=segments, checked=True)
    fast = structured_report(source, pred, algorithm=algorithm, segments=segments)
    assert _without_clock(fast) == _without_clock(checked)
    assert _without_clock(fast) != _without_clock(
        structured_report(source, pred, algorithm=ALGORITHM)
    )  # control
    path = tmp_path / "fast.dcm"
    fast.save_as(path, enforce_file_format=True)
    assert dciodvfy(path) == []
    parsed = dsr2xml(path)
    assert parsed.returncode == 0 and "error" not in parsed.stderr.lower(), parsed.stderr
