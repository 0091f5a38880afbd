"""FHIR results under HL7 "AI Transparency on FHIR" (STU1): the AI Device, the Provenance, the AIAST label, and
a Patient identifier with a system.

Every resource is parsed back by its own fhir.resources (R4B) model from the JSON written, and every
``reference`` in the Bundle must resolve to an entry's ``fullUrl``. The expected values are the guide's
canonical URLs and codes and DICOM's definition of the issuer attributes, written out here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydicom.dataset import Dataset
from results_kit import ALGORITHM, SHA, prediction
from testkit import phantom_dicom, png_bytes, run_cli, tiny_checkpoint

from cxrdx import settings
from cxrdx.errors import ConfigError
from cxrdx.interop.fhir import fhir_bundle

IG = "http://hl7.org/fhir/uv/aitransparency"
AIAST = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}
DEMO = "DEMO MODEL: trained on synthetic phantoms"


def _by_type(bundle: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for entry in bundle["entry"]:
        out.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    return out


def _references(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return found + [r for v in node.values() for r in _references(v)]
    if isinstance(node, list):
        return [r for v in node for r in _references(v)]
    return []


def test_device_provenance_and_labels_follow_the_ai_transparency_guide():
    from fhir.resources.R4B import get_fhir_model_class

    source = phantom_dicom(5)
    bundle = fhir_bundle(prediction(), algorithm={**ALGORITHM, "demo": DEMO}, source=source)
    text = json.dumps(bundle)
    parsed = json.loads(text)
    for entry in parsed["entry"]:  # each resource, parsed back by its own model from the JSON written
        resource = entry["resource"]
        model = get_fhir_model_class(resource["resourceType"]).model_validate_json(json.dumps(resource))
        assert model.id == resource["id"]
    full_urls = {e["fullUrl"] for e in bundle["entry"]}
    refs = _references([e["resource"] for e in bundle["entry"]])
    assert refs and set(refs) <= full_urls  # every literal reference resolves inside the Bundle

    res = _by_type(bundle)
    (report,), (device,), (provenance,) = res["DiagnosticReport"], res["Device"], res["Provenance"]
    observations = res["Observation"]
    for resource in (report, *observations):  # level 1: every AI-asserted resource is labelled
        assert AIAST in resource["meta"]["security"]
    assert "security" not in device.get("meta", {})

    assert device["meta"]["profile"] == [f"{IG}/StructureDefinition/AI-Device"]
    assert device["type"]["coding"][0]["system"] == f"{IG}/CodeSystem/AIdeviceTypeCS"
    assert device["type"]["coding"][0]["code"] == "Artificial-Intelligence"
    (kind,) = device["extension"]
    assert kind["url"] == f"{IG}/StructureDefinition/aitransparency.AIKind"
    assert kind["valueCodeableConcept"]["coding"][0]["code"] == "Deep-Learning-Models"
    assert {k: device["identifier"][0][k] for k in ("system", "value")} == {
        "system": "urn:cxrdx:checkpoint-sha256",
        "value": SHA,
    }
    assert device["deviceName"][0]["name"] == "cxrdx" and device["version"][0]["value"] == "0.1.0"
    assert DEMO in [s["text"] for s in device["safety"]] and DEMO in [n["text"] for n in device["note"]]
    assert DEMO in report["conclusion"]

    # level 2: the Provenance of the report and every Observation, made by the Device, from the study
    assert provenance["meta"]["profile"] == [f"{IG}/StructureDefinition/AI-Provenance"]
    targets = {t["reference"] for t in provenance["target"]}
    assert targets == {f"urn:uuid:{r['id']}" for r in (report, *observations)}
    assert provenance["reason"][0]["coding"] == [AIAST]
    (agent,) = provenance["agent"]
    assert agent["who"] == {"reference": f"urn:uuid:{device['id']}", "type": "Device"}
    assert agent["role"][0]["coding"][0]["code"] == "Artificial-Intelligence"
    assert agent["type"]["coding"][0]["code"] == "author"
    study = {"system": "urn:dicom:uid", "value": f"urn:oid:{source.StudyInstanceUID}"}
    assert provenance["entity"] == [{"role": "source", "what": {"type": "ImagingStudy", "identifier": study}}]
    assert provenance["recorded"] == report["issued"]
    for obs in observations:
        assert obs["device"]["reference"] == f"urn:uuid:{device['id']}"


def test_a_picture_source_has_a_provenance_without_entity():
    bundle = fhir_bundle(prediction(), algorithm=ALGORITHM, source_id="sha256:" + "0" * 64)
    (provenance,) = _by_type(bundle)["Provenance"]
    assert "entity" not in provenance and len(provenance["target"]) == 1 + len(
        _by_type(bundle)["Observation"]
    )


def _patient(source: Dataset, **kw) -> dict:
    bundle = fhir_bundle(prediction(), algorithm=ALGORITHM, source=source, **kw)
    return _by_type(bundle)["DiagnosticReport"][0]["subject"]["identifier"]


def _qualifiers(uid: str, kind: str) -> list[Dataset]:
    item = Dataset()
    item.UniversalEntityID, item.UniversalEntityIDType = uid, kind
    return [item]


@pytest.mark.parametrize(
    ("attrs", "system", "assigner"),
    [
        ({}, settings.FHIR_PATIENT_SYSTEM, None),  # no issuer: the configured default
        ({"IssuerOfPatientID": "1.2.840.113619.6.1"}, "urn:oid:1.2.840.113619.6.1", None),
        ({"IssuerOfPatientID": "urn:oid:2.16.840.1.1"}, "urn:oid:2.16.840.1.1", None),
        ({"IssuerOfPatientID": "ST MARY HOSPITAL"}, settings.FHIR_PATIENT_SYSTEM, "ST MARY HOSPITAL"),
        ({"IssuerOfPatientID": "1.02.3"}, settings.FHIR_PATIENT_SYSTEM, "1.02.3"),  # not an OID (leading 0)
        (
            {
                "IssuerOfPatientID": "MRN",
                "IssuerOfPatientIDQualifiersSequence": _qualifiers("2.16.840.1.113883.3.72", "ISO"),
            },
            "urn:oid:2.16.840.1.113883.3.72",
            "MRN",
        ),
        (
            {"IssuerOfPatientIDQualifiersSequence": _qualifiers("https://hospital.example/mrn", "URI")},
            "https://hospital.example/mrn",
            None,
        ),
        (
            {"IssuerOfPatientIDQualifiersSequence": _qualifiers("hospital.example", "DNS")},
            settings.FHIR_PATIENT_SYSTEM,
            None,
        ),
    ],
)
def test_patient_identifier_system_comes_from_the_issuer_of_patient_id(attrs, system, assigner):
    source = phantom_dicom(6)
    for key, value in attrs.items():
        setattr(source, key, value)
    identifier = _patient(source)
    assert identifier["system"] == system and identifier["value"] == source.PatientID
    assert identifier.get("assigner", {}).get("display") == assigner


def test_the_default_patient_system_is_configurable():
    source = phantom_dicom(7)
    assert _patient(source, patient_system="urn:oid:1.2.3.4")["system"] == "urn:oid:1.2.3.4"
    source.IssuerOfPatientID = "1.2.5"
    assert _patient(source, patient_system="urn:oid:1.2.3.4")["system"] == "urn:oid:1.2.5"  # the source wins
    with pytest.raises(ConfigError, match="`fhir_patient_system` 'no namespace' is not an absolute URI"):
        _patient(source, patient_system="no namespace")


def test_cli_fhir_patient_system(capsys, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")
    film = tmp_path / "film.dcm"
    phantom_dicom(8, 64).save_as(film, enforce_file_format=True)
    png = tmp_path / "photo.png"
    png.write_bytes(png_bytes(np.full((64, 64), 90, np.uint8)))
    base = ["predict", "--weights", ckpt, film, png, "--format", "fhir", "--allow-demo-model"]
    rc, _out, err = run_cli(
        capsys, [*base, "--out", tmp_path / "a", "--fhir-patient-system", "urn:oid:1.2.3.4"]
    )
    assert rc == 0, err
    bundle = json.loads((tmp_path / "a" / "film.fhir.json").read_text())
    assert _by_type(bundle)["DiagnosticReport"][0]["subject"]["identifier"]["system"] == "urn:oid:1.2.3.4"
    (device,) = _by_type(bundle)["Device"]
    assert any(s["text"].startswith("DEMO") for s in device["safety"])  # the demo stamp on the Device
    assert "Provenance" in _by_type(json.loads((tmp_path / "a" / "photo.fhir.json").read_text()))
    rc, _out, err = run_cli(capsys, [*base, "--out", tmp_path / "b", "--fhir-patient-system", "hospital"])
    assert (
        rc == 2
        and "--fhir-patient-system 'hospital' is not an absolute URI" in err
        and "Traceback" not in err
    )
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())
