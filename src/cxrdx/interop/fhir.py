"""Results as FHIR R4: a DiagnosticReport with one Observation per finding, in a transaction Bundle.

Models and validation: ``fhir.resources`` (8.x), whose R4-line models are the
``fhir.resources.R4B`` package (its top level is R5; there is no separate R4 package).
R4B changed nothing in DiagnosticReport, Observation, Device or Bundle that we use, so
what is written here is also valid R4. Every resource is validated with its own model
class (``fhir.resources`` does not validate a Bundle's entries by itself) and the Bundle
with its own; codes from required value sets are ours to get right and the tests check them.

What is written, for one image:

- ``Device``: cxrdx, its version, the checkpoint's SHA-256 as an identifier;
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
  research-use disclaimer in ``conclusion`` (the Device's notes repeat the model's).

A PNG/JPEG source has no study or patient, so those references are left out. Resource ids
are name-based UUIDs of the source (SOP Instance UID, or the file's SHA-256) and the
checkpoint, and the Bundle PUTs them: sending the same result twice replaces, never duplicates.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from collections.abc import Mapping
from typing import Any

from pydicom.dataset import Dataset

from cxrdx.interop import codes
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

FHIR_VERSION = "R4 (fhir.resources.R4B models)"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DICOM_UID_SYSTEM = "urn:dicom:uid"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cxrdx:fhir")


def fhir_bundle(
    prediction: Any,
    *,
    algorithm: Mapping,
    source: Dataset | None = None,
    source_id: str | None = None,
) -> dict:
    """The validated transaction Bundle (a JSON-able dict) for one prediction.

    ``source``: the DICOM header of the image, when it is a DICOM; else ``source_id``
    names the image for the ids (e.g. ``sha256:<file digest>``), and no study or patient
    is referenced.
    """
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
            subject: dict[str, Any] = {"type": "Patient", "identifier": {"value": patient_id}}
            name = str(fit_value(str(source.get("PatientName", "") or ""), "PN"))
            if name:
                subject["display"] = name
            context["subject"] = subject
        effective = _dicom_date(source.get("StudyDate"))
        if effective:
            context["effectiveDateTime"] = effective

    device_id = rid("device")
    device = {
        "resourceType": "Device",
        "id": device_id,
        "identifier": [{"system": "urn:cxrdx:checkpoint-sha256", "value": sha or "unknown"}],
        "manufacturer": "cxrdx",
        "deviceName": [{"name": str(algorithm.get("name", "cxrdx")), "type": "model-name"}],
        "version": [{"value": str(algorithm.get("version", "unknown"))}],
        "note": [{"text": n} for n in [*result_notes(None, algorithm), RESEARCH_USE]],
    }
    if algorithm.get("checkpoint"):
        device["modelNumber"] = str(algorithm["checkpoint"])
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
    resources = [report, *observations, device]
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
