"""HL7 "AI Transparency on FHIR" (STU1, on FHIR R4) for cxrdx's results: the label, the AI Device, the Provenance.

The guide asks for two levels of observability, both written here:

- **labelling**: every resource the AI asserted (the DiagnosticReport and each Observation)
  carries the security label ``AIAST`` "Artificial Intelligence asserted" (v3 ObservationValue)
  in ``meta.security``;
- **provenance**: a ``Provenance`` (profile AI-Provenance) whose ``target`` is the report and its
  Observations, whose ``reason`` is ``AIAST``, whose agent (type author, role
  ``Artificial-Intelligence``) is the algorithm's ``Device`` (profile AI-Device: ``type``
  ``Artificial-Intelligence`` from the guide's AIdeviceTypeCS, the AIKind extension
  ``Deep-Learning-Models``), and whose entity is the source study (role ``source``) when there is one.

The Device names the algorithm and its version, carries the checkpoint's SHA-256 as an identifier,
and says in ``note`` / ``safety`` what every result says (the demo stamp, the model card's training-data
line, research use only). R4 has no place for a Device on a DiagnosticReport (``performer`` takes
people and organisations only), so the report reaches its Device through the Provenance; each
Observation names it in ``device``. Profiles and codes are the guide's canonical URLs; no
terminology server is consulted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

IG = "http://hl7.org/fhir/uv/aitransparency"
AI_DEVICE_PROFILE = f"{IG}/StructureDefinition/AI-Device"
AI_PROVENANCE_PROFILE = f"{IG}/StructureDefinition/AI-Provenance"
AI_KIND_EXTENSION = f"{IG}/StructureDefinition/aitransparency.AIKind"
AI_DEVICE_TYPES = f"{IG}/CodeSystem/AIdeviceTypeCS"
AIAST = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}
AI = {
    "system": AI_DEVICE_TYPES,
    "code": "Artificial-Intelligence",
    "display": "All kinds of Artificial Intelligence",
}
DEEP_LEARNING = {"system": AI_DEVICE_TYPES, "code": "Deep-Learning-Models", "display": "Deep Learning Models"}
AUTHOR = {
    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
    "code": "author",
    "display": "Author",
}
CREATE = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
    "code": "CREATE",
    "display": "create",
}
CHECKPOINT_SYSTEM = "urn:cxrdx:checkpoint-sha256"


def label(resource: dict) -> dict:
    """``resource`` with the AIAST security label in ``meta.security`` (once)."""
    meta = resource.setdefault("meta", {})
    security = meta.setdefault("security", [])
    if AIAST not in security:
        security.append(dict(AIAST))
    return resource


def ai_device(device_id: str, algorithm: Mapping, notes: list[str], safety: list[str]) -> dict:
    """The algorithm as an AI-Device: name, version, checkpoint SHA-256, what its results always say."""
    sha = str(algorithm.get("checkpoint_sha256", ""))
    device: dict[str, Any] = {
        "resourceType": "Device",
        "id": device_id,
        "meta": {"profile": [AI_DEVICE_PROFILE]},
        "extension": [{"url": AI_KIND_EXTENSION, "valueCodeableConcept": {"coding": [dict(DEEP_LEARNING)]}}],
        "identifier": [
            {"system": CHECKPOINT_SYSTEM, "value": sha or "unknown", "type": {"text": "checkpoint SHA-256"}}
        ],
        "type": {"coding": [dict(AI)]},
        "manufacturer": "cxrdx",
        "deviceName": [{"name": str(algorithm.get("name", "cxrdx")), "type": "model-name"}],
        "version": [{"value": str(algorithm.get("version", "unknown"))}],
        "safety": [{"text": text} for text in safety],
        "note": [{"text": n} for n in notes],
    }
    if algorithm.get("checkpoint"):
        device["modelNumber"] = str(algorithm["checkpoint"])
    return device


def ai_provenance(
    provenance_id: str, targets: list[dict], device_id: str, recorded: str, source: dict | None
) -> dict:
    """The AI-Provenance of ``targets`` (resources of this Bundle): made by the Device, from ``source``."""
    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": provenance_id,
        "meta": {"profile": [AI_PROVENANCE_PROFILE]},
        "target": [{"reference": f"urn:uuid:{r['id']}", "type": r["resourceType"]} for r in targets],
        "occurredDateTime": recorded,
        "recorded": recorded,
        "reason": [{"coding": [dict(AIAST)]}],
        "activity": {"coding": [dict(CREATE)]},
        "agent": [
            {
                "type": {"coding": [dict(AUTHOR)]},
                "role": [{"coding": [dict(AI)]}],
                "who": {"reference": f"urn:uuid:{device_id}", "type": "Device"},
            }
        ],
    }
    if source is not None:
        provenance["entity"] = [{"role": "source", "what": source}]
    return provenance
