"""Results as FHIR R4: a DiagnosticReport with one Observation per finding, its Device and Provenance, in a Bundle.

Models and validation: ``fhir.resources`` (8.x), whose R4-line models are the
``fhir.resources.R4B`` package (its top level is R5; there is no separate R4 package).
R4B changed nothing in DiagnosticReport, Observation, Device, Provenance or Bundle that we use, so
what is written here is also valid R4. Every resource is validated with its own model
class (``fhir.resources`` does not validate a Bundle's entries by itself) and the Bundle
with its own; codes from required value sets are ours to get right and the tests check them.

What is written, for one image:

- ``Device`` (HL7 AI Transparency on FHIR's AI-Device; cxrdx.interop.fhir_ai): cxrdx, its version,
  the checkpoint's SHA-256 as an identifier, the demo stamp / model card line / research use in
  ``note`` and ``safety``;
- one ``Observation`` per finding: code = the finding's coded concept (SNOMED CT, DICOM
  or ``urn:cxrdx:code``; cxrdx.interop.codes), ``valueQuantity`` = the probability
  (unit "probability", or "score (uncalibrated)" for a finding that is not calibrated; UCUM "1"),
  interpretation POS / NEG by the checkpoint's threshold, IND without one; components and a
  note with the finding's calibration state and threshold; ``derivedFrom`` the ImagingStudy;
  for an out-of-distribution image no value (``dataAbsentReason`` "not-performed", IND) unless
  its findings are sent on request; plus one for the out-of-distribution check (score,
  in distribution, threshold) when there is one;
- ``DiagnosticReport`` (status preliminary): those Observations as ``result``, the study as
  ``imagingStudy`` (a logical reference: identifier ``urn:dicom:uid`` = ``urn:oid:<Study UID>``),
  the patient as ``subject`` (a logical reference by Patient ID) for a DICOM source, the
  demo stamp, the OOD verdict, the model card's banners and training-data line and the
  research-use disclaimer in ``conclusion`` (the Device's notes repeat the model's);
- ``Provenance`` (AI-Provenance): target the report and every Observation, agent the Device,
  entity the source study; the report and the Observations carry the ``AIAST`` security label.

The patient is a logical reference by identifier: ``value`` the Patient ID as the SR carries it,
``system`` from the source's Issuer of Patient ID (its qualifiers' Universal Entity ID when of type
ISO/URI/UUID, else the issuer itself when it is an OID, as ``urn:oid:``), else ``patient_system``
(``--fhir-patient-system``; default ``settings.FHIR_PATIENT_SYSTEM``), with a non-OID issuer kept
as the identifier's ``assigner.display``.

A PNG/JPEG source has no study or patient, so those references are left out. Resource ids
are name-based UUIDs of the source (SOP Instance UID, or the file's SHA-256) and the
checkpoint, and the Bundle PUTs them: sending the same result twice replaces, never duplicates.
"""

from __future__ import annotations

import datetime as _dt
import re
import uuid
from collections.abc import Mapping
from typing import Any

from pydicom.dataset import Dataset

from cxrdx.errors import ConfigError
from cxrdx.interop import codes
from cxrdx.interop.fhir_ai import ai_device, ai_provenance, label
from cxrdx.interop.study import (
    CALIBRATION_WORDS,
    RESEARCH_USE,
    STAMPS,
    finding_calibration,
    fit_value,
    is_calibrated,
    result_notes,
    result_uid,
    withheld,
)
from cxrdx.settings import FHIR_PATIENT_SYSTEM

FHIR_VERSION = "R4 (fhir.resources.R4B models)"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DICOM_UID_SYSTEM = "urn:dicom:uid"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cxrdx:fhir")
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")


def fhir_bundle(
    prediction: Any,
    *,
    algorithm: Mapping,
    source: Dataset | None = None,
    source_id: str | None = None,
    patient_system: str | None = None,
) -> dict:
    """The validated transaction Bundle (a JSON-able dict) for one prediction.

    ``source``: the DICOM header of the image, when it is a DICOM; else ``source_id``
    names the image for the ids (e.g. ``sha256:<file digest>``), and no study or patient
    is referenced. ``patient_system``: the Patient identifier's system when the source names no
    issuer (default ``settings.FHIR_PATIENT_SYSTEM``).
    """
    patient_system = check_patient_system(patient_system or FHIR_PATIENT_SYSTEM)
    sha = str(algorithm.get("checkpoint_sha256", ""))
    key = str(source.SOPInstanceUID) if source is not None else str(source_id or prediction.source)

    def rid(role: str) -> str:
        return str(uuid.uuid5(_NAMESPACE, f"{key}|{sha}|{role}"))

    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    context: dict[str, Any] = {"issued": now}
    study_ref = None
    if source is not None:
        study_uid = str(source.get("StudyInstanceUID", "") or "")
        if study_uid:
            study_ref = {
                "type": "ImagingStudy",
                "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"},
            }
        patient_id = str(fit_value(str(source.get("PatientID", "") or ""), "LO"))  # as the SR carries it
        if patient_id:
            subject: dict[str, Any] = {
                "type": "Patient",
                "identifier": patient_identifier(source, patient_id, patient_system),
            }
            name = str(fit_value(str(source.get("PatientName", "") or ""), "PN"))
            if name:
                subject["display"] = name
            context["subject"] = subject
        effective = _dicom_date(source.get("StudyDate"))
        if effective:
            context["effectiveDateTime"] = effective

    device_id = rid("device")
    stamp = [str(algorithm["demo"])] if algorithm.get("demo") else []
    device = ai_device(
        device_id, algorithm, [*result_notes(None, algorithm), RESEARCH_USE], [*stamp, RESEARCH_USE]
    )
    calibrated = is_calibrated(prediction, algorithm)
    hold = withheld(prediction, algorithm)  # out of distribution: not evaluated
    notes = result_notes(prediction, algorithm)
    observations = []
    for name, p in prediction.probabilities.items():
        concept = codes.finding_concept(name)
        obs = _observation(rid(f"obs:{name}"), concept, context, device_id, study_ref)
        obs["code"]["text"] = name
        if hold:
            obs["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": "not-performed"}]}
            obs["interpretation"] = [_interpretation(None)]
            obs["note"] = [{"text": next(n for n in notes if n.startswith("NOT EVALUATED"))}]
        else:
            _finding_values(obs, name, p, prediction, algorithm)
        observations.append(obs)
    ood = _ood_observation(prediction, rid("obs:ood"), context, device_id, study_ref, algorithm)
    if ood is not None:
        observations.append(ood)

    report = {
        "resourceType": "DiagnosticReport",
        "id": rid("report"),
        "status": "preliminary",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                        "code": "RAD",
                        "display": "Radiology",
                    }
                ]
            }
        ],
        "code": {"coding": [_coding(codes.CHEST_XRAY)], "text": "cxrdx chest X-ray findings (AI)"},
        **context,
        "result": [{"reference": f"urn:uuid:{o['id']}", "type": "Observation"} for o in observations],
        "conclusion": _conclusion(prediction, calibrated, hold, notes),
    }
    if source is not None:
        report["identifier"] = [
            {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{result_uid(key, 'sr', sha)}"}
        ]  # the SR's SOP Instance UID: the same result, in the other standard
    if study_ref is not None:
        report["imagingStudy"] = [study_ref]
    for resource in (report, *observations):
        label(resource)  # AI asserted
    provenance = ai_provenance(rid("provenance"), [report, *observations], device_id, now, study_ref)
    resources = [report, *observations, device, provenance]
    bundle = {
        "resourceType": "Bundle",
        "id": rid("bundle"),
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{r['id']}",
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in resources
        ],
    }
    validate(bundle)
    return bundle


def check_patient_system(system: str) -> str:
    """An absolute URI (``urn:oid:...``, ``https://...``), else a ConfigError naming the parameter."""
    if not _URI.match(system or ""):
        raise ConfigError(
            f"`fhir_patient_system` {system!r} is not an absolute URI; give the namespace of your Patient IDs, "
            "e.g. urn:oid:1.2.3.4 or https://hospital.example/patient-id"
        )
    return system


def patient_identifier(source: Dataset, patient_id: str, default_system: str) -> dict:
    """The Patient identifier: ``system`` from the source's issuer of the Patient ID, else ``default_system``."""
    issuer = str(source.get("IssuerOfPatientID", "") or "").strip()
    system = None
    for qualifiers in source.get("IssuerOfPatientIDQualifiersSequence", None) or []:
        uid = str(qualifiers.get("UniversalEntityID", "") or "").strip()
        kind = str(qualifiers.get("UniversalEntityIDType", "") or "").strip().upper()
        if kind == "ISO" and _OID.match(uid):
            system = f"urn:oid:{uid}"
        elif kind == "UUID" and uid:
            system = f"urn:uuid:{uid.lower()}"
        elif kind == "URI" and _URI.match(uid):
            system = uid
        if system:
            break
    if system is None and _OID.match(issuer.removeprefix("urn:oid:")):
        system = f"urn:oid:{issuer.removeprefix('urn:oid:')}"
    identifier: dict[str, Any] = {"system": system or default_system, "value": patient_id}
    if issuer and not _OID.match(issuer.removeprefix("urn:oid:")):
        identifier["assigner"] = {"display": issuer}  # the issuer's name, for a person to read
    return identifier


def validate(bundle: dict) -> None:
    """Validate the Bundle and each of its resources with fhir.resources (R4B); raises on a problem."""
    from fhir.resources.R4B import get_fhir_model_class

    get_fhir_model_class("Bundle").model_validate(bundle)
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def _observation(oid: str, concept: codes.Concept, context: dict, device_id: str, study_ref) -> dict:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "preliminary",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "imaging",
                        "display": "Imaging",
                    }
                ]
            }
        ],
        "code": {"coding": [_coding(concept)]},
        **context,
        "device": {"reference": f"urn:uuid:{device_id}", "type": "Device"},
    }
    if study_ref is not None:
        obs["derivedFrom"] = [study_ref]
    return obs


def _finding_values(obs: dict, name: str, p: float, prediction: Any, algorithm: Mapping) -> None:
    """The number (unit = its calibration state), the call, and the threshold behind it."""
    state = finding_calibration(prediction, algorithm, name)
    obs["valueQuantity"] = _quantity(p, "score (uncalibrated)" if state == "none" else "probability")
    call = (prediction.positive or {}).get(name)
    obs["interpretation"] = [_interpretation(call)]
    threshold = (algorithm.get("thresholds") or {}).get(name)
    said = f"calibration: {state}, the value is a {CALIBRATION_WORDS.get(state, CALIBRATION_WORDS['none'])}"
    components = [{"code": {"coding": [_coding(codes.calibration_concept(state))]}, "valueString": state}]
    if threshold is not None:
        said += f"; positive at or above the threshold {threshold:.4f}"
        components.append(
            {
                "code": {"coding": [_coding(codes.THRESHOLD)]},
                "valueQuantity": _quantity(threshold, "threshold"),
            }
        )
    obs["note"] = [{"text": said}]
    obs["component"] = components


def _ood_observation(prediction, oid, context, device_id, study_ref, algorithm) -> dict | None:
    score = prediction.ood_score
    inside = prediction.in_distribution
    if score is None and inside is None:
        return None
    obs = _observation(oid, codes.OOD_SCORE, context, device_id, study_ref)
    obs["code"]["text"] = "out-of-distribution score"
    if score is not None:
        obs["valueQuantity"] = _quantity(score, "Mahalanobis distance")
    if inside is not None:
        obs["component"] = [
            {"code": {"coding": [_coding(codes.IN_DISTRIBUTION)]}, "valueBoolean": bool(inside)}
        ]
        if algorithm.get("ood_threshold") is not None:
            obs["component"].append(
                {
                    "code": {"coding": [_coding(codes.OOD_THRESHOLD)]},
                    "valueQuantity": _quantity(algorithm["ood_threshold"], "threshold"),
                }
            )
        # outside the training images' range: flag it (v3 "A" abnormal), the numbers are unreliable
        obs["interpretation"] = [_v3("N", "Normal") if inside else _v3("A", "Abnormal")]
    return obs


def _conclusion(prediction, calibrated: bool, hold: bool, notes: list[str]) -> str:
    word = "probability" if calibrated else "score (uncalibrated)"
    if hold:
        found = "no finding reported present or absent"
    elif prediction.positive is None:
        found = "no thresholds in the checkpoint: findings not called positive or negative"
    else:
        pos = [n for n, v in prediction.positive.items() if v]
        found = "positive: " + (", ".join(pos) if pos else "none") + f" (values are the model's {word})"
    stamps = [n for n in notes if n.startswith(STAMPS)]  # the demo stamp and the OOD verdict first
    return " ".join([*stamps, f"{found}.", *(n for n in notes if n not in stamps), RESEARCH_USE])


def _coding(concept: codes.Concept) -> dict:
    return {"system": codes.FHIR_SYSTEMS[concept.scheme], "code": concept.code, "display": concept.meaning}


def _quantity(value: float, unit: str) -> dict:
    return {"value": round(float(value), 6), "unit": unit, "system": "http://unitsofmeasure.org", "code": "1"}


def _v3(code: str, display: str) -> dict:
    return {"coding": [{"system": INTERPRETATION, "code": code, "display": display}]}


def _interpretation(call: bool | None) -> dict:
    if call is None:
        return _v3("IND", "Indeterminate")
    return _v3("POS", "Positive") if call else _v3("NEG", "Negative")


def _dicom_date(date: Any) -> str | None:
    """DICOM DA -> FHIR date (a dateTime may be a date alone; DICOM times carry no zone, FHIR's must)."""
    text = str(date or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    return f"{text[:4]}-{text[4:6]}-{text[6:]}"
