"""Issue 26 §1: every result object says what it is: a demo model's stamp, "not evaluated" for an
out-of-distribution image, the threshold behind each call, each finding's calibration state and
the model card's training-data line (SR, secondary captures, FHIR, `predict --format dicom|fhir`)."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from results_kit import ALGORITHM, concept, dciodvfy, dsr2xml, groups, items, prediction
from testkit import phantom_dicom, run_cli, tiny_checkpoint

from cxrdx.interop import codes
from cxrdx.interop.fhir import fhir_bundle
from cxrdx.interop.secondary_capture import burn_in, caption_lines, pictured_findings, top_banner
from cxrdx.interop.sr import DEMO_SERIES_DESCRIPTION, algorithm_for, results_for, structured_report
from cxrdx.interop.study import calibration_states
from cxrdx.labels import FINDINGS
from cxrdx.model.checkpoint import read_checkpoint_meta, update_checkpoint_meta

PHANTOM_CARD = {"dataset": "cxrdx synthetic phantoms", "kind": "phantom", "images": 40}
POSITIVE = "Cardiomegaly"


def _demo_ckpt(path, ood_threshold: float | None = None):
    """A phantom-trained, never-evaluated tiny checkpoint; with an OOD reference when a threshold is given."""
    tiny_checkpoint(
        path,
        thresholds={n: (0.0 if n == POSITIVE else 1.01) for n in FINDINGS},
        model_card=dict(PHANTOM_CARD),
    )
    if ood_threshold is not None:
        from cxrdx.model.ood import fit_ood_into_checkpoint
        from cxrdx.phantom.render import make_phantom

        rng = np.random.default_rng(0)
        phantoms = [make_phantom(rng, 32, [])[0].astype(np.float32) / 255 for _ in range(12)]
        fit_ood_into_checkpoint(path, phantoms[:8], phantoms[8:])

        def change(meta):
            meta.ood = {**meta.ood, "threshold": ood_threshold}

        update_checkpoint_meta(path, change)
    return path


def _texts(ds) -> list[str]:
    return [str(i.TextValue) for i in items(ds) if "TextValue" in i]


def _finding_groups(sr) -> dict[str, list]:
    out = {}
    for group in groups(sr):
        kids = group.ContentSequence
        finding = next(k for k in kids if concept(k) == ("DCM", "121071"))
        code = finding.ConceptCodeSequence[0]
        out[str(code.get("CodeValue") or code.get("LongCodeValue"))] = list(kids)
    return out


def _nums(kids) -> dict[str, object]:
    return {concept(k)[1]: k for k in kids if k.ValueType == "NUM"}


@pytest.fixture(scope="module")
def demo_algorithm(tmp_path_factory):
    path = _demo_ckpt(tmp_path_factory.mktemp("demo") / "demo.safetensors")
    algo = algorithm_for(path, read_checkpoint_meta(path))
    return {**algo, "ood_threshold": 8.0}


def test_algorithm_record_carries_the_stamp_caveats_and_training_line(demo_algorithm):
    assert demo_algorithm["demo"].startswith("DEMO MODEL (trained on synthetic phantoms, never evaluated)")
    assert demo_algorithm["training_data"].startswith("trained on: cxrdx synthetic phantoms (phantom data)")
    assert any("synthetic phantoms" in c for c in demo_algorithm["caveats"])
    assert demo_algorithm["thresholds"][POSITIVE] == 0.0 and demo_algorithm["ood_findings"] == "withhold"


def test_sr_of_an_ood_image_reports_no_finding_and_says_why(demo_algorithm, tmp_path):
    pred = prediction(ood_score=17.1, in_distribution=False)
    sr = structured_report(phantom_dicom(3), pred, algorithm=demo_algorithm)
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    back = pydicom.dcmread(tmp_path / "sr.dcm")
    by = _finding_groups(back)
    ood = by.pop(codes.OOD_FINDING.code)
    for kids in by.values():  # not evaluated: Undetermined, and no number
        (evaluation,) = [k for k in kids if k.ValueType == "CODE" and concept(k)[0] != "DCM"]
        assert evaluation.ConceptCodeSequence[0].CodeValue == codes.UNDETERMINED.code
        assert not _nums(kids)
    nums = _nums(ood)
    assert float(nums[codes.OOD_SCORE.code].MeasuredValueSequence[0].NumericValue) == pytest.approx(17.1)
    assert float(nums[codes.OOD_THRESHOLD.code].MeasuredValueSequence[0].NumericValue) == 8.0
    texts = _texts(back)
    assert any(t.startswith("NOT EVALUATED") and "17.10 > threshold 8.00" in t for t in texts)
    assert any(t.startswith("DEMO MODEL") for t in texts)
    assert any("Model card: trained on: cxrdx synthetic phantoms" in t for t in texts)
    assert back.SeriesDescription == DEMO_SERIES_DESCRIPTION
    assert dciodvfy(tmp_path / "sr.dcm") == []
    assert dsr2xml(tmp_path / "sr.dcm").returncode == 0

    sent = structured_report(phantom_dicom(3), pred, algorithm={**demo_algorithm, "ood_findings": "send"})
    values = {
        k.ConceptCodeSequence[0].CodeValue
        for kids in _finding_groups(sent).values()
        for k in kids
        if k.ValueType == "CODE" and concept(k)[0] != "DCM"
    }
    assert {codes.PRESENT.code, codes.ABSENT.code} <= values  # reported, on request ...
    assert any(t.startswith("OUT OF DISTRIBUTION") and "--send-ood-findings" in t for t in _texts(sent))


def test_sr_carries_each_findings_threshold_and_calibration_state(tmp_path):
    algo = {
        **ALGORITHM,
        "thresholds": {"Cardiomegaly": 0.4, "Effusion": 0.5},
        "calibration_by_finding": {
            "Cardiomegaly": "prior+temperature",
            "Effusion": "none",
            "Atelectasis": "prior",
        },
    }
    sr = structured_report(phantom_dicom(4), prediction(), algorithm=algo)
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    assert dciodvfy(tmp_path / "sr.dcm") == [] and dsr2xml(tmp_path / "sr.dcm").returncode == 0
    by = _finding_groups(sr)
    cardio, effusion, atel = (
        _nums(by[codes.finding_concept(n).code]) for n in ("Cardiomegaly", "Effusion", "Atelectasis")
    )
    assert codes.PROBABILITY.code in cardio and codes.UNCALIBRATED_SCORE.code not in cardio
    assert float(cardio[codes.THRESHOLD.code].MeasuredValueSequence[0].NumericValue) == 0.4
    # an unfitted finding is a score, whatever the checkpoint's method says
    assert codes.UNCALIBRATED_SCORE.code in effusion and codes.PROBABILITY.code not in effusion
    assert float(effusion[codes.THRESHOLD.code].MeasuredValueSequence[0].NumericValue) == 0.5
    assert codes.THRESHOLD.code not in atel  # no threshold for it, none written

    def method(num) -> str:
        (m,) = [k for k in num.ContentSequence if concept(k) == ("SCT", "370129005")]  # Measurement Method
        return m.ConceptCodeSequence[0].CodeValue

    assert method(cardio[codes.PROBABILITY.code]) == codes.CALIBRATION["prior+temperature"].code
    assert method(effusion[codes.UNCALIBRATED_SCORE.code]) == codes.CALIBRATION["none"].code
    assert method(atel[codes.PROBABILITY.code]) == codes.CALIBRATION["prior"].code


def test_calibration_states_read_the_record_per_finding():
    names = ["A", "B", "C"]
    assert calibration_states({"method": "none"}, names) == dict.fromkeys(names, "none")
    known = {
        "method": "prior+temperature",
        "log_prior_shift": dict.fromkeys(names, 0.1),
        "fitted_on": {"prior": "loss weights", "temperature_kept_at_1": ["B"]},
    }
    assert calibration_states(known, names) == {
        "A": "prior+temperature",
        "B": "prior",
        "C": "prior+temperature",
    }
    platt = {
        "method": "prior+temperature",
        "log_prior_shift": dict.fromkeys(names, 0.1),
        "fitted_on": {"prior": "fitted with the temperature (Platt)", "temperature_kept_at_1": ["B"]},
    }
    assert calibration_states(platt, names)["B"] == "none"
    explicit = {**known, "per_finding": {"A": "none", "B": "prior+temperature"}}  # a per-finding record wins
    assert calibration_states(explicit, names) == {"A": "none", "B": "prior+temperature", "C": "none"}


def test_fhir_withholds_an_ood_images_findings_and_carries_the_rest(demo_algorithm):
    bundle = fhir_bundle(
        prediction(ood_score=17.1, in_distribution=False), algorithm=demo_algorithm, source=phantom_dicom(5)
    )
    res = [e["resource"] for e in bundle["entry"]]
    report = next(r for r in res if r["resourceType"] == "DiagnosticReport")
    device = next(r for r in res if r["resourceType"] == "Device")
    findings = [
        r
        for r in res
        if r["resourceType"] == "Observation" and r["code"].get("text") != "out-of-distribution score"
    ]
    assert findings and all("valueQuantity" not in o for o in findings)
    assert all(o["dataAbsentReason"]["coding"][0]["code"] == "not-performed" for o in findings)
    assert all(o["interpretation"][0]["coding"][0]["code"] == "IND" for o in findings)
    assert report["conclusion"].startswith("DEMO MODEL") and "NOT EVALUATED" in report["conclusion"]
    assert any(
        n["text"].startswith("Model card: trained on: cxrdx synthetic phantoms") for n in device["note"]
    )
    assert any(n["text"].startswith("DEMO MODEL") for n in device["note"])

    algo = {
        **demo_algorithm,
        "calibration_by_finding": {"Cardiomegaly": "prior+temperature", "Effusion": "none"},
    }
    ok = fhir_bundle(prediction(), algorithm=algo, source=phantom_dicom(5))
    obs = {
        r["code"]["text"]: r
        for r in (e["resource"] for e in ok["entry"])
        if r["resourceType"] == "Observation"
    }
    cardio, effusion = obs["Cardiomegaly"], obs["Effusion"]
    assert (
        cardio["valueQuantity"]["unit"] == "probability"
        and effusion["valueQuantity"]["unit"] == "score (uncalibrated)"
    )
    threshold = [c for c in cardio["component"] if c["code"]["coding"][0]["code"] == codes.THRESHOLD.code]
    assert threshold[0]["valueQuantity"]["value"] == 0.0
    assert "calibration: prior+temperature" in cardio["note"][0]["text"]
    assert cardio["component"][0]["valueString"] == "prior+temperature"


def test_secondary_capture_burns_in_the_stamps(demo_algorithm, tmp_path):
    pred = prediction(ood_score=17.1, in_distribution=False)
    assert pictured_findings(pred, algorithm=demo_algorithm) == []  # no heatmap for an OOD image ...
    sent = {**demo_algorithm, "ood_findings": "send"}
    assert pictured_findings(pred, algorithm=sent) == ["Cardiomegaly", "Effusion"]  # ... unless asked
    source = phantom_dicom(6, 512)
    image = source.pixel_array.astype(np.float32) / 255
    heat = np.zeros((512, 512), np.float32)
    objects = results_for(
        source, pred, overlays={"Cardiomegaly": heat}, algorithm=sent, image=image, secondary_capture=True
    )
    sc = objects[2 + list(pred.probabilities).index("Cardiomegaly")]  # after the SR and the SEG
    lines = caption_lines("Cardiomegaly", pred, sent)
    assert (
        len(lines) == 3 and lines[1].startswith("DEMO MODEL") and lines[2].startswith("OUT OF DISTRIBUTION")
    )
    assert "at threshold 0.000" in lines[0]
    assert top_banner(pred, sent) == "NOT FOR DIAGNOSTIC USE - DEMO MODEL - OUT OF DISTRIBUTION"
    from cxrdx.explain.overlay import overlay_rgb

    expected = burn_in(overlay_rgb(image, heat), top_banner(pred, sent), lines)
    assert sc.pixel_array.shape == expected.shape  # the words are in the pixels (up to JPEG's loss)
    assert np.abs(sc.pixel_array.astype(float) - expected).mean() < 4
    assert "DEMO MODEL" in sc.ImageComments and "OUT OF DISTRIBUTION" in sc.ImageComments
    assert "DEMO" in sc.SeriesDescription


def test_predict_dicom_and_fhir_refuse_a_demo_model_and_withhold_ood_images(tmp_path, capsys):
    ckpt = _demo_ckpt(tmp_path / "demo.safetensors", ood_threshold=0.0)  # every image out of distribution
    film = tmp_path / "in" / "film.dcm"
    film.parent.mkdir()
    phantom_dicom(30, 64).save_as(film, enforce_file_format=True)
    for fmt in ("dicom", "fhir"):
        rc, _, err = run_cli(
            capsys, ["predict", "--weights", ckpt, film, "--format", fmt, "--out", tmp_path / fmt]
        )
        assert rc == 2 and "--allow-demo-model" in err and "synthetic phantoms and never evaluated" in err

    out = tmp_path / "dicom"
    argv = ["predict", "--weights", ckpt, film, "--format", "dicom", "--allow-demo-model", "--out", out]
    rc, _, _ = run_cli(capsys, argv)
    assert rc == 0 and sorted(p.name for p in out.iterdir()) == ["film.seg.dcm", "film.sr.dcm"]
    assert "NOT EVALUATED" in pydicom.dcmread(out / "film.seg.dcm").ContentDescription  # its maps are empty
    texts = _texts(pydicom.dcmread(out / "film.sr.dcm"))
    assert any(t.startswith("NOT EVALUATED") for t in texts) and any(
        t.startswith("DEMO MODEL") for t in texts
    )

    sent = tmp_path / "sent"
    rc, _, _ = run_cli(capsys, [*argv[:-1], sent, "--send-ood-findings", "--secondary-capture"])
    assert rc == 0 and (sent / f"film.sc-{POSITIVE}.dcm").is_file()
    assert "OUT OF DISTRIBUTION" in pydicom.dcmread(sent / f"film.sc-{POSITIVE}.dcm").ImageComments

    rc, _, _ = run_cli(
        capsys,
        [
            "predict",
            "--weights",
            ckpt,
            film,
            "--format",
            "fhir",
            "--allow-demo-model",
            "--out",
            tmp_path / "f",
        ],
    )
    bundle = json.loads((tmp_path / "f" / "film.fhir.json").read_text())
    obs = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert rc == 0 and sum("dataAbsentReason" in o for o in obs) == len(FINDINGS)


def test_listen_refuses_a_demo_model(tmp_path, capsys):
    from conftest import free_port

    ckpt = _demo_ckpt(tmp_path / "demo.safetensors")
    argv = [
        "listen",
        "--weights",
        ckpt,
        "--send-to",
        "PACS@127.0.0.1:1",
        "--port",
        free_port(),
        "--spool",
        tmp_path / "s",
    ]
    rc, _, err = run_cli(capsys, argv)
    assert rc == 2 and "--allow-demo-model" in err and "sending its results to a PACS" in err
