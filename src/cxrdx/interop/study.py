"""Where results go: the source image's study, and THE result UIDs derived from the source instance.

Every result object (SR, secondary captures) lands in the source's study (its Study
Instance UID), carries its patient and study modules copied, and gets new series and
instance UIDs that are a pure function of the source SOP Instance UID, the checkpoint
(SHA-256) and the object's role. Sending the same image through the same model twice
therefore gives the very same UIDs, so a PACS replaces the first copy instead of
showing two; another model gives other UIDs, as DICOM requires for different content.
The UIDs are ``2.25.<UUID as an integer>`` (PS3.5 B.2), the UUID a name-based
(version 5) one, so no organisation root is needed.
"""

from __future__ import annotations

import contextlib
import copy
import re
import uuid
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from pydicom.dataset import Dataset

from cxrdx.errors import DataError

MANUFACTURER = "cxrdx"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
SEG_SERIES_NUMBER = 9903
RESEARCH_USE = (
    "RESEARCH USE ONLY - NOT FOR DIAGNOSTIC USE. Produced by the cxrdx research software, "
    "not a medical device: it has not been cleared or approved by any regulator, and its "
    "output must not be used to diagnose or treat patients."
)

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cxrdx:results")

# Patient, Patient Study and General Study module attributes copied into every result object.
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "PatientComments",
    "EthnicGroup",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime")
TYPE2 += ("ReferringPhysicianName", "StudyID", "AccessionNumber")

# PS3.5 6.2: the most characters one value of a text VR may hold (PN: per component group).
# Longer values are cut to this, so a 10 KB Patient's Name does not reach a PACS that refuses it.
TEXT_MAX = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "ST": 1024, "LT": 10240}
# Structured values a cut would make wrong: a too-long one is emptied instead.
EXACT_MAX = {"AS": 4, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "TM": 14}


def result_uid(source_uid: str, role: str, checkpoint_sha256: str = "") -> str:
    """A UID for one result object (or series), the same every time for the same inputs."""
    name = f"{source_uid}|{checkpoint_sha256}|{role}"
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


def source_header(source: Dataset, where: str = "") -> Dataset:
    """A copy of the source's header (no pixels) with what results need, or a DataError saying what is missing.

    Type 2 patient/study attributes that the source lacks are added empty (they are
    allowed to be empty, not absent, in the result objects).
    """
    label = where or str(getattr(source, "filename", "") or "the source image")
    for keyword in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not str(source.get(keyword, "") or "").strip():
            raise DataError(
                f"{label}: has no {keyword}, so its results cannot be placed in its DICOM study; "
                "use --format fhir for it, or fix the file's header"
            )
    for keyword in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if len(str(source.get(keyword))) > 64:
            raise DataError(
                f"{label}: its {keyword} is {len(str(source.get(keyword)))} characters long (a UID holds at "
                "most 64), so no result can refer to it; fix the file's header"
            )
    header = Dataset()
    for elem in source:
        if elem.tag.group != 0x7FE0:  # leave the pixel data behind
            header.add(copy.deepcopy(elem))  # a copy: the lengths are fitted below, the source stays as it is
    fit_lengths(header)
    for keyword in TYPE2:
        if keyword not in header:
            setattr(header, keyword, "")
    if not getattr(header, "Modality", None):
        header.Modality = "OT"
    return header


def fit_value(value: Any, vr: str) -> Any:
    """One value within its VR's length (PS3.5 6.2): text cut, a structured value emptied."""
    if value is None or vr not in TEXT_MAX and vr not in EXACT_MAX:
        return value
    text = str(value)
    if vr == "PN":
        # 64 per component group (PS3.5), and 64 in all (what dciodvfy and older PACS check):
        # the first group is cut, later ones (ideographic, phonetic) kept only while they fit
        first, *rest = [g[: TEXT_MAX["PN"]].rstrip() for g in text.split("=")[:3]]
        fitted = first
        for group in rest:
            if len(fitted) + 1 + len(group) > TEXT_MAX["PN"]:
                break
            fitted += "=" + group
        return value if fitted == text else fitted
    if vr in EXACT_MAX:
        return "" if len(text) > EXACT_MAX[vr] else value
    return text[: TEXT_MAX[vr]].rstrip() if len(text) > TEXT_MAX[vr] else value


def fit_lengths(ds: Dataset) -> None:
    """Every text value of ``ds`` (and of its sequences' items) within its VR's length, in place."""
    from pydicom.multival import MultiValue

    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                fit_lengths(item)
        elif isinstance(elem.value, MultiValue | list):
            elem.value = [fit_value(v, elem.VR) for v in elem.value]
        elif isinstance(elem.value, str) or elem.VR == "PN":
            elem.value = fit_value(elem.value, elem.VR)


def copy_patient_study(source: Dataset, target: Dataset) -> None:
    """Copy the patient and study modules (what the source has of them) into a result object.

    Patient's Age is the one value repaired on the way: real files (the SIIM set among
    them) write "62" where DICOM's AS needs "062Y"; a bare number is taken as years, and
    anything else that is not a valid age is left out rather than copied invalid.
    """
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            value = source[keyword].value
            if keyword == "PatientAge":
                value = dicom_age(value)
                if value is None:
                    continue
            if value not in (None, "") or keyword in TYPE2:
                setattr(target, keyword, value)
    if "SpecificCharacterSet" in source:
        target.SpecificCharacterSet = source.SpecificCharacterSet


def dicom_age(value: Any) -> str | None:
    """A valid Age String (nnnD/W/M/Y) for ``value``, or None."""
    text = str(value or "").strip().upper()
    if re.fullmatch(r"\d{3}[DWMY]", text):
        return text
    if re.fullmatch(r"\d{1,3}", text):
        return f"{int(text):03d}Y"
    if re.fullmatch(r"\d{1,3}[DWMY]", text):
        return f"{int(text[:-1]):03d}{text[-1]}"
    return None


def is_calibrated(prediction: Any, algorithm: Mapping) -> bool:
    """Probability (calibrated) or score (uncalibrated)? The prediction's own word first, then the algorithm's."""
    method = prediction.calibration
    if method:
        return method != "none"
    if "calibrated" in algorithm:
        return bool(algorithm["calibrated"])
    return algorithm.get("calibration") not in (None, "", "none")


def calibration_states(record: Mapping | None, names: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Per finding, the calibration its number went through: "prior+temperature", "prior" or "none".

    ``record``: the resolved calibration record (``Predictor.calibration``); read by THE rule,
    ``cxrdx.metrics.calibration.finding_methods`` (``per_finding``, or derived for older records).
    """
    from cxrdx.metrics.calibration import finding_methods

    return finding_methods(dict(record or {}), list(names))


def withheld(prediction: Any, algorithm: Mapping) -> bool:
    """True when an out-of-distribution image's findings are not reported (unless ``--send-ood-findings``)."""
    return getattr(prediction, "in_distribution", None) is False and algorithm.get("ood_findings") != "send"


STAMPS = ("DEMO MODEL", "NOT EVALUATED", "OUT OF DISTRIBUTION")  # how the notes that stamp a result begin


def result_notes(prediction: Any, algorithm: Mapping) -> list[str]:
    """What every result object says in words: the demo stamp, the OOD verdict, the model card's caveats and
    training-data line (cxrdx.model.card), most serious first."""
    from cxrdx.model.card import ood_not_evaluated

    notes = [str(algorithm["demo"])] if algorithm.get("demo") else []
    if getattr(prediction, "in_distribution", None) is False:
        sent = algorithm.get("ood_findings") == "send"
        notes.append(ood_not_evaluated(prediction.ood_score, algorithm.get("ood_threshold"), sent=sent))
    notes += [str(c) for c in algorithm.get("caveats") or []]
    if algorithm.get("training_data"):
        notes.append(f"Model card: {algorithm['training_data']}")
    return notes


CALIBRATION_WORDS = {
    "prior+temperature": "probability (calibrated: training prior and temperature)",
    "prior": "probability (calibrated for the training prior only)",
    "none": "score (uncalibrated)",
}


def finding_calibration(prediction: Any, algorithm: Mapping, name: str) -> str:
    """The calibration state of one finding's number ("none" whenever the prediction itself says none)."""
    if not is_calibrated(prediction, algorithm):
        return "none"
    states = algorithm.get("calibration_by_finding") or {}
    return str(
        states.get(name) or getattr(prediction, "calibration", None) or algorithm.get("calibration", "none")
    )


@contextlib.contextmanager
def quiet_person_names() -> Iterator[None]:
    """highdicom warns about one-component patient names; anonymised files all have them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*unlikely to represent the intended person name")
        yield
