"""FHIR R4 results: a DiagnosticReport and one Observation per finding, validated by fhir.resources (R4B)."""

from __future__ import annotations

import json

import pydicom
import pytest
from results_kit import ALGORITHM, PROBS, SHA, prediction
from testkit import phantom_dicom

from cxrdx.interop import codes
from cxrdx.interop.fhir import fhir_bundle, validate
from cxrdx.interop.study import RESEARCH_USE, result_uid

# codes from the required value sets of the elements we fill (FHIR R4)
OBSERVATION_STATUS = {"registered", "preliminary", "final", "amended", "corrected", "cancelled"}
REPORT_STATUS = OBSERVATION_STATUS | {"partial", "appended", "entered-in-error", "unknown"}


def _resources(bundle: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for entry in bundle["entry"]:
        out.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    return out


def _by_code(observations: list[dict]) -> dict[str, dict]:
    return {o["code"]["coding"][0]["code"]: o for o in observations}


def test_dicom_source_bundle(tmp_path):
    source = phantom_dicom(1)
    bundle = fhir_bundle(prediction(), algorithm=ALGORITHM, source=source)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    res = _resources(bundle)
    (report,) = res["DiagnosticReport"]
    (device,) = res["Device"]
    assert report["status"] in REPORT_STATUS and report["status"] == "preliminary"
    study = {"system": "urn:dicom:uid", "value": f"urn:oid:{source.StudyInstanceUID}"}
    assert report["imagingStudy"] == [{"type": "ImagingStudy", "identifier": study}]
    assert report["subject"]["identifier"]["value"] == source.PatientID
    assert report["effectiveDateTime"] == "2026-01-01"
    assert report["identifier"][0]["value"] == f"urn:oid:{result_uid(source.SOPInstanceUID, 'sr', SHA)}"
    assert RESEARCH_USE in report["conclusion"] and "positive: Cardiomegaly, Effusion" in report["conclusion"]
    observations = _by_code(res["Observation"])
    assert len(observations) == len(PROBS)
    assert {r["reference"] for r in report["result"]} == {f"urn:uuid:{o['id']}" for o in res["Observation"]}
    expect = {
        "Atelectasis": "NEG",
        "Cardiomegaly": "POS",
        "Effusion": "POS",
        "Pneumothorax": "NEG",
        "Fracture": "IND",
    }
    for name, call in expect.items():
        c = codes.finding_concept(name)
        obs = observations[c.code]
        assert obs["status"] in OBSERVATION_STATUS
        assert obs["code"]["coding"][0] == {
            "system": codes.FHIR_SYSTEMS[c.scheme],
            "code": c.code,
            "display": c.meaning,
        }
        assert obs["valueQuantity"] == {
            "value": PROBS[name],
            "unit": "probability",
            "system": "http://unitsofmeasure.org",
            "code": "1",
        }
        assert obs["interpretation"][0]["coding"][0]["code"] == call
        assert obs["derivedFrom"] == [{"type": "ImagingStudy", "identifier": study}]
        assert obs["device"]["reference"] == f"urn:uuid:{device['id']}"
        assert obs["subject"] == report["subject"]
    assert observations["60046008"]["code"]["coding"][0]["system"] == "http://snomed.info/sct"
    assert device["identifier"][0]["value"] == SHA and device["version"][0]["value"] == "0.1.0"
    for entry in bundle["entry"]:  # PUT by id: a resend replaces
        r = entry["resource"]
        assert entry["request"] == {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}
        assert entry["fullUrl"] == f"urn:uuid:{r['id']}"
    # what is written as JSON parses back into the R4B models
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    from fhir.resources.R4B.observation import Observation

    text = json.dumps(bundle)
    Bundle.model_validate_json(text)
    DiagnosticReport.model_validate(report)
    parsed = Observation.model_validate(res["Observation"][0])
    assert parsed.valueQuantity.code == "1"


def test_ids_are_stable_per_source_and_model():
    source = phantom_dicom(2)
    a = fhir_bundle(prediction(), algorithm=ALGORITHM, source=source)
    b = fhir_bundle(prediction(calls=None), algorithm=ALGORITHM, source=source)
    c = fhir_bundle(prediction(), algorithm={**ALGORITHM, "checkpoint_sha256": "cd" * 32}, source=source)
    ids = [[e["resource"]["id"] for e in x["entry"]] for x in (a, b, c)]
    assert ids[0] == ids[1] and not set(ids[0]) & set(ids[2])


def test_picture_source_has_no_study_or_patient():
    bundle = fhir_bundle(
        prediction(calls=None, calibration="none"), algorithm=ALGORITHM, source_id="sha256:00ff"
    )
    res = _resources(bundle)
    (report,) = res["DiagnosticReport"]
    assert "imagingStudy" not in report and "subject" not in report and "identifier" not in report
    for obs in res["Observation"]:
        assert "derivedFrom" not in obs
        assert obs["valueQuantity"]["unit"] == "score (uncalibrated)"
        assert obs["interpretation"][0]["coding"][0]["code"] == "IND"


def test_ood_observation():
    pred = prediction(ood_score=9.5, in_distribution=False)
    bundle = fhir_bundle(pred, algorithm=ALGORITHM, source=phantom_dicom(3))
    obs = _by_code(_resources(bundle)["Observation"])[codes.OOD_SCORE.code]
    assert obs["valueQuantity"]["value"] == 9.5
    assert obs["component"][0]["valueBoolean"] is False
    assert obs["interpretation"][0]["coding"][0]["code"] == "A"
    assert (
        "unlike the images the model was trained on"
        in _resources(bundle)["DiagnosticReport"][0]["conclusion"]
    )


def test_validate_rejects_a_broken_resource():
    bundle = fhir_bundle(prediction(), algorithm=ALGORITHM, source=phantom_dicom(4))
    bundle["entry"][1]["resource"]["valueQuantity"]["value"] = "lots"
    with pytest.raises(ValueError, match="valueQuantity"):
        validate(bundle)
    bundle = fhir_bundle(prediction(), algorithm=ALGORITHM, source=phantom_dicom(4))
    bundle["entry"][0]["resource"]["notAnElement"] = 1
    with pytest.raises(ValueError, match="notAnElement"):
        validate(bundle)


@pytest.mark.realdata
def test_fhir_for_the_real_siim_dicom(shared_data):
    source = pydicom.dcmread(shared_data / "dicom" / "siim_pneumothorax_sample.dcm", stop_before_pixels=True)
    bundle = fhir_bundle(prediction(), algorithm=ALGORITHM, source=source)
    (report,) = _resources(bundle)["DiagnosticReport"]
    assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{source.StudyInstanceUID}"
    assert report["effectiveDateTime"] == "1901-01-01"
