"""Helpers for the DICOM/FHIR results tests: a prediction, the SR content tree, the independent validators."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cxrdx.inference.prediction import Prediction

SHA = "ab" * 32
ALGORITHM = {
    "name": "cxrdx",
    "version": "0.1.0",
    "checkpoint": "model.safetensors",
    "checkpoint_sha256": SHA,
    "architecture": "densenet-tiny",
}
PROBS = {"Atelectasis": 0.12, "Cardiomegaly": 0.81, "Effusion": 0.55, "Pneumothorax": 0.07, "Fracture": 0.3}
CALLS = {"Atelectasis": False, "Cardiomegaly": True, "Effusion": True, "Pneumothorax": False}  # no Fracture


def prediction(calls: dict | None = CALLS, **kw) -> Prediction:
    kw.setdefault("calibration", "prior+temperature")
    return Prediction("image.dcm", dict(PROBS), None if calls is None else dict(calls), None, [], **kw)


def items(ds) -> list:
    """Every content item of an SR, depth first."""
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out += items(item)
    return out


def concept(item) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return code.CodingSchemeDesignator, str(code.get("CodeValue") or code.get("LongCodeValue"))


def groups(sr) -> list:
    """The TID 1501 measurement groups (DCM 125007) of an SR."""
    return [i for i in items(sr) if i.ValueType == "CONTAINER" and concept(i) == ("DCM", "125007")]


def dciodvfy(path: Path) -> list[str]:
    """dicom3tools' dciodvfy verdict: its Error lines (empty = the IOD is valid); skips when absent."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy is not installed (Debian package dicom3tools; scripts/ensure_dicom_tools.sh)")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def dsr2xml(path: Path) -> subprocess.CompletedProcess:
    """DCMTK's SR parser (checks the content tree and relationship constraints); skips when absent."""
    tool = shutil.which("dsr2xml")
    if tool is None:
        pytest.skip("dsr2xml is not installed (Debian package dcmtk; scripts/ensure_dicom_tools.sh)")
    return subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
