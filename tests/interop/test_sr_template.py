"""The SR written from pre-encoded pieces (``sr_template``) against highdicom's own build, byte for byte.

The reference is ``structured_report(..., checked=True)``: highdicom's ComprehensiveSR over the whole content
tree, encoded by pydicom. The clock's values (creation, content, contribution date/time) are set equal on both
sides before encoding; everything else must be the same bytes.
"""

from __future__ import annotations

import io
import struct

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.valuerep import DS
from results_kit import ALGORITHM, dciodvfy, dsr2xml, prediction
from testkit import phantom_dicom

from cxrdx.inference.prediction import Prediction
from cxrdx.interop import dicom_template as dt
from cxrdx.interop.processing import encode
from cxrdx.interop.segmentation import segment_findings
from cxrdx.interop.sr import structured_report
from cxrdx.labels import FINDINGS

THRESHOLDS = {name: 0.5 for name in FINDINGS[:10]}  # four findings without one: Undetermined
ALGO = {**ALGORITHM, "thresholds": THRESHOLDS, "ood_threshold": 3.0, "caveats": ["Trained on phantoms."]}


def _clock_fixed(ds: Dataset) -> Dataset:
    for keyword in ("InstanceCreationDate", "ContentDate"):
        setattr(ds, keyword, "20260101")
    for keyword in ("InstanceCreationTime", "ContentTime"):
        setattr(ds, keyword, "120000")
    for item in ds.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = "20260101120000"
    return ds


def _both(source, pred, algorithm=ALGO) -> tuple[bytes, bytes]:
    segments = segment_findings(pred)
    fast = structured_report(source, pred, algorithm=algorithm, segments=segments)
    ref = structured_report(source, pred, algorithm=algorithm, segments=segments, checked=True)
    assert fast.get_item(0x0040A730).is_raw  # the templated path ran
    return encode(_clock_fixed(fast)), encode(_clock_fixed(ref))


def _images():
    """Predictions over all 14 findings that differ from image to image: probabilities, calls (Effusion
    flips present/absent), segments, spread, OOD, withheld."""
    out = []
    for k in range(6):
        probs = {name: round(((i + 3) * (k + 7) % 17) / 17 + 0.01 * k, 6) for i, name in enumerate(FINDINGS)}
        calls = {name: probs[name] >= THRESHOLDS[name] for name in THRESHOLDS}
        calls["Effusion"] = k % 2 == 0  # flips from image to image
        kw = {"calibration": "prior+temperature" if k != 3 else "none"}
        if k == 4:
            kw.update(ood_score=1.25 + k, in_distribution=True)
        if k == 5:
            kw.update(ood_score=9.5, in_distribution=False)
        pred = Prediction(f"image{k}.dcm", probs, calls, None, [], **kw)
        if k in (1, 4):
            pred.uncertainty = {"Effusion": 0.05 * k, "Atelectasis": 1e-7}
        out.append((phantom_dicom(40 + k), pred))
    return out


def test_the_templated_sr_is_highdicoms_byte_for_byte_image_after_image():
    seen = set()
    for source, pred in _images():  # one cache: later images reuse the groups earlier ones compiled
        fast, ref = _both(source, pred)
        assert fast == ref
        seen.add(tuple(sorted((pred.positive or {}).items())))
    assert len(seen) > 3  # the calls did differ


def test_a_flipped_call_changes_the_templated_sr_as_it_changes_highdicoms():
    source = phantom_dicom(50)
    present = prediction()
    absent = prediction(calls={**present.positive, "Effusion": False})
    a, b = _both(source, present)[0], _both(source, absent)[0]
    assert a != b and _both(source, absent) == (b, _both(source, absent)[1])
    back = pydicom.dcmread(io.BytesIO(b))
    assert b"272519000" in b and back.SOPInstanceUID  # Absent (SCT 272519000) is written


@pytest.mark.parametrize(
    "charset,name",
    [
        ("ISO_IR 192", "Müller^Zoë"),
        ("ISO_IR 100", "Müller^Zoë"),
        (["ISO 2022 IR 6", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎"),
    ],
)
def test_the_templated_sr_in_other_character_sets(charset, name):
    source = phantom_dicom(51, SpecificCharacterSet=charset, PatientName=name)
    algorithm = {**ALGO, "training_data": "Données de démonstration"}  # a non-ASCII comment
    fast, ref = _both(source, prediction(ood_score=1.0, in_distribution=True), algorithm)
    assert fast == ref
    assert str(pydicom.dcmread(io.BytesIO(fast)).PatientName) == name


def test_a_source_highdicom_cannot_describe_has_no_image_library():
    source = phantom_dicom(52, PatientOrientation=None, ImagerPixelSpacing=None)
    fast, ref = _both(source, prediction())
    assert fast == ref and b"Image Library" not in fast


@pytest.mark.realdata
def test_the_templated_sr_of_the_real_siim_dicom(shared_data, tmp_path):
    source = pydicom.dcmread(shared_data / "dicom" / "siim_pneumothorax_sample.dcm")
    fast, ref = _both(source, prediction(ood_score=2.0, in_distribution=True))
    assert fast == ref
    path = tmp_path / "sr.dcm"
    path.write_bytes(fast)
    assert dciodvfy(path) == []
    assert dsr2xml(path).returncode == 0


def test_the_templated_sr_as_read_back_and_saved_again(tmp_path):
    source, pred = _images()[1]
    fast = structured_report(source, pred, algorithm=ALGO, segments=segment_findings(pred))
    first = encode(fast)
    assert len(fast.ContentSequence) > 5  # reading the raw content parses it
    assert encode(fast) == first  # and writes the same bytes


def test_the_highdicom_path_writes_the_same_sr():
    source, pred = _images()[4]
    segments = segment_findings(pred)
    plain = structured_report(source, pred, algorithm=ALGO, segments=segments, templated=False)
    ref = structured_report(source, pred, algorithm=ALGO, segments=segments, checked=True)
    assert not plain.get_item(0x0040A730).is_raw
    assert encode(_clock_fixed(plain)) == encode(_clock_fixed(ref))


def test_a_template_that_fails_falls_back_to_highdicom(monkeypatch, caplog):
    from cxrdx.interop import sr_template

    def refuse(*args, **kwargs):
        raise dt.TemplateError("refused for the test")

    monkeypatch.setattr(sr_template, "templated_report", refuse)
    source, pred = _images()[0]
    segments = segment_findings(pred)
    with caplog.at_level("WARNING", logger="cxrdx.interop"):
        made = structured_report(source, pred, algorithm=ALGO, segments=segments)
    ref = structured_report(source, pred, algorithm=ALGO, segments=segments, checked=True)
    assert "refused for the test" in caplog.text
    assert encode(_clock_fixed(made)) == encode(_clock_fixed(ref))


# ---------------------------------------------------------------- the template mechanism itself


def _item(uid: str, number: float, texts=("a",)) -> Dataset:
    item = Dataset()
    item.ValueType = "NUM"
    item.UID = uid
    inner = Dataset()
    inner.NumericValue = DS(number, auto_format=True)  # as highdicom writes a measurement
    inner.FloatingPointValue = number
    inner.CodeMeaning = "m"
    item.MeasuredValueSequence = [inner]
    item.ContentSequence = [Dataset() for _ in texts]
    for ds, text in zip(item.ContentSequence, texts, strict=True):
        ds.TextValue = text
    return item


def _pydicom(item: Dataset) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_sequence_item

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_sequence_item(fp, item, "iso8859")
    return fp.getvalue()


def test_a_template_renders_what_pydicom_writes_for_other_values():
    slots = {("UI", "1.2.3.4"): "uid", ("DS", 0.5): "x", ("FD", 0.5): "x"}
    template = dt.compile_item(_item("1.2.3.4", 0.5), slots, splices={0x0040A730: "kids"})
    assert template.counts == {"uid": 1, "x": 2}
    for uid, number, texts in [("1.2.840.99", 0.123456789, ("b", "cc")), ("2.25.1", 1e-9, ("",))]:
        kids = [_pydicom(ds) for ds in _item(uid, number, texts).ContentSequence]
        assert dt.render(template, {"uid": uid, "x": number}, {"kids": kids}) == _pydicom(
            _item(uid, number, texts)
        )


def test_a_template_that_would_not_reproduce_pydicom_is_refused(monkeypatch):
    monkeypatch.setattr(dt, "value_bytes", lambda vr, value: struct.pack("<d", 1.0))  # a wrong encoder
    with pytest.raises(dt.TemplateError):
        dt.compile_item(_item("1.2.3.4", 0.5), {("UI", "1.2.3.4"): "uid"})


def test_a_raw_sequence_is_written_as_it_is_and_read_back():
    items = [_item("1.2.3", 0.25), _item("1.2.4", 0.75, ("x", "y"))]
    ds = Dataset()
    ds.PatientID = "P"
    ds[0x0040A730] = dt.raw_sequence(0x0040A730, dt.encode_items(items))
    ds.set_original_encoding(False, True, ds._character_set)
    plain = Dataset()
    plain.PatientID = "P"
    plain.ContentSequence = items
    assert encode_body(ds) == encode_body(plain)
    assert [str(i.UID) for i in ds.ContentSequence] == ["1.2.3", "1.2.4"]


def encode_body(ds: Dataset) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()
