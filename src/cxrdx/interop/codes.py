"""THE coded concepts of cxrdx results, shared by the DICOM SR and the FHIR resources.

Each finding name maps to one (scheme, code, meaning): SNOMED CT where a well-known
concept exists, DICOM (DCM) where PS3.16 has one, else a private code in the local
scheme ``99CXRDX`` (DICOM's rule for local codes: a designator starting with "99"),
named in the SR's Coding Scheme Identification Sequence and given the FHIR system
``urn:cxrdx:code``; its code is the finding's name. A finding nobody mapped (a future label) gets a private code too,
so nothing is ever written uncoded.
"""

from __future__ import annotations

from typing import NamedTuple


class Concept(NamedTuple):
    scheme: str  # DICOM coding scheme designator: SCT, DCM, UCUM, 99CXRDX
    code: str
    meaning: str


PRIVATE_SCHEME = "99CXRDX"
PRIVATE_SCHEME_NAME = "cxrdx local codes"

# name -> concept; SNOMED CT codes are the (disorder) / (finding) concepts a radiology report uses.
FINDING_CONCEPTS: dict[str, Concept] = {
    "Atelectasis": Concept("SCT", "46621007", "Atelectasis"),
    "Cardiomegaly": Concept("SCT", "287272002", "Cardiomegaly"),  # as in DICOM CID 12248
    "Consolidation": Concept("SCT", "95436008", "Lung consolidation"),
    "Edema": Concept("SCT", "19242006", "Pulmonary edema"),
    "Effusion": Concept("SCT", "60046008", "Pleural effusion"),
    "Emphysema": Concept("SCT", "87433001", "Pulmonary emphysema"),
    "Fibrosis": Concept("SCT", "51615001", "Fibrosis of lung"),
    "Hernia": Concept("SCT", "84089009", "Hiatal hernia"),
    "Infiltration": Concept("DCM", "112121", "Infiltrate"),  # DICOM CID 6102 chest findings
    "Mass": Concept("SCT", "4147007", "Mass"),
    "Nodule": Concept("SCT", "27925004", "Nodule"),
    "Pneumonia": Concept("SCT", "233604007", "Pneumonia"),
    "Pneumothorax": Concept("SCT", "36118008", "Pneumothorax"),
    "Fracture": Concept("SCT", "125605004", "Fracture of bone"),
    "Lung_Opacity": Concept("DCM", "112001", "Opacity"),
    "ILD": Concept("SCT", "233703007", "Interstitial lung disease"),
}

# presence values (DICOM CID 230-style), yes/no, and the measurement names
PRESENT = Concept("SCT", "52101004", "Present")
ABSENT = Concept("SCT", "272519000", "Absent")
UNDETERMINED = Concept("SCT", "373068000", "Undetermined")
YES = Concept("SCT", "373066001", "Yes")
NO = Concept("SCT", "373067005", "No")
PROBABILITY = Concept("DCM", "122157", "Probability")
UNCALIBRATED_SCORE = Concept(PRIVATE_SCHEME, "score-uncal", "Model score (uncalibrated)")
TTA_SPREAD = Concept(PRIVATE_SCHEME, "tta-spread", "Spread over test-time augmentation")
IN_DISTRIBUTION = Concept(PRIVATE_SCHEME, "in-distrib", "Input resembles the training images")
OOD_FINDING = Concept(PRIVATE_SCHEME, "ood-check", "Out-of-distribution check")
OOD_SCORE = Concept(PRIVATE_SCHEME, "ood-score", "Out-of-distribution score (Mahalanobis)")
OOD_THRESHOLD = Concept(PRIVATE_SCHEME, "ood-threshold", "Out-of-distribution threshold")
THRESHOLD = Concept(PRIVATE_SCHEME, "threshold", "Decision threshold (present at or above)")
CALIBRATION = {  # each finding's calibration state (cxrdx.metrics.calibration), as a measurement method
    "prior+temperature": Concept(
        PRIVATE_SCHEME, "cal-prior-temp", "Calibrated: training prior and temperature"
    ),
    "prior": Concept(PRIVATE_SCHEME, "cal-prior", "Calibrated for the training prior only"),
    "none": Concept(PRIVATE_SCHEME, "cal-none", "Not calibrated: model score, not a probability"),
}
NO_UNITS = Concept("UCUM", "1", "no units")
CHEST_XRAY = Concept("SCT", "399208008", "Plain X-ray of chest")
AI_FINDINGS = Concept(PRIVATE_SCHEME, "report", "Chest X-ray AI findings (cxrdx)")

# FHIR code systems for the DICOM designators used above
FHIR_SYSTEMS = {
    "SCT": "http://snomed.info/sct",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "UCUM": "http://unitsofmeasure.org",
    PRIVATE_SCHEME: "urn:cxrdx:code",
}


def finding_concept(name: str) -> Concept:
    """The coded concept of one finding; a private code for a name with no standard one."""
    known = FINDING_CONCEPTS.get(name)
    if known is not None:
        return known
    return Concept(PRIVATE_SCHEME, name, name.replace("_", " "))  # > 16 chars: DICOM Long Code Value


def uses_private(concepts: list[Concept]) -> bool:
    return any(c.scheme == PRIVATE_SCHEME for c in concepts)


def calibration_concept(state: str) -> Concept:
    """The coded calibration state of one finding's number (an unknown state reads as not calibrated)."""
    return CALIBRATION.get(state, CALIBRATION["none"])
