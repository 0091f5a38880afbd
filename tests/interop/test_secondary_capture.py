"""Grad-CAM secondary captures (on request): one per finding, in the source's study, words burned into the
pixels, JPEG baseline, valid by dciodvfy."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage
from results_kit import ALGORITHM, dciodvfy, prediction
from testkit import phantom_dicom

from cxrdx.explain.overlay import overlay_rgb
from cxrdx.imaging.read import read_image
from cxrdx.interop.secondary_capture import BANNER, MAX_SIDE, MIN_SIDE, burn_in, caption, pictured_findings
from cxrdx.interop.sr import results_for as _results_for

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def results_for(*args, **kw):
    """The result set with the secondary captures asked for: SR, SEG, then one SC per finding."""
    return _results_for(*args, secondary_capture=True, **kw)


def pictures(objects: list, finding: str | None = None) -> list:
    """The SCs of a result set (or the one of ``finding``, by its Derivation Description)."""
    scs = [o for o in objects if o.Modality == "OT"]
    return (
        scs if finding is None else [s for s in scs if f"overlay for {finding} " in s.DerivationDescription]
    )


def _close(a: np.ndarray, b: np.ndarray, level: float = 4.0) -> bool:
    """Equal up to JPEG baseline's loss (mean absolute difference in 8-bit levels)."""
    return a.shape == b.shape and float(np.abs(a.astype(float) - b.astype(float)).mean()) < level


def _heatmap(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-(((yy - h / 3) ** 2 + (xx - w / 3) ** 2) / (0.05 * h * w))).astype(np.float32)


def _source_and_image(tmp_path, seed=0, size=64, **attrs):
    """A phantom DICOM and the image THE reader makes of it (what the prediction saw)."""
    source = phantom_dicom(seed, size, **attrs)
    path = tmp_path / f"source{seed}.dcm"
    source.save_as(path, enforce_file_format=True)
    return source, read_image(path)[0]


def test_one_sc_per_finding_in_the_source_study_pictured_or_a_card(tmp_path):
    source, image = _source_and_image(tmp_path, 1)
    overlays = {"Cardiomegaly": _heatmap(64, 64), "Effusion": _heatmap(64, 64)[::-1]}
    objects = results_for(source, prediction(), overlays=overlays, algorithm=ALGORITHM, image=image)
    sr, seg, *scs = objects
    assert (sr.Modality, seg.Modality) == ("SR", "SEG")
    assert len(scs) == len(prediction().probabilities) == 5  # every finding of the model: a fixed set
    uids = set()
    for k, sc in enumerate(scs):
        path = tmp_path / f"sc{k}.dcm"
        sc.save_as(path, enforce_file_format=True)
        back = pydicom.dcmread(path)
        assert back.SOPClassUID == SecondaryCaptureImageStorage
        assert back.file_meta.TransferSyntaxUID == JPEG_BASELINE and back.LossyImageCompression == "01"
        assert back.BurnedInAnnotation == "YES"
        assert back.StudyInstanceUID == source.StudyInstanceUID
        assert (back.PatientID, back.PatientName) == (source.PatientID, source.PatientName)
        assert back.SeriesInstanceUID not in (source.SeriesInstanceUID, sr.SeriesInstanceUID)
        assert back.PhotometricInterpretation == "YBR_FULL_422" and back.SamplesPerPixel == 3
        ref = back.SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert back.ContentQualification == "RESEARCH"
        uids.add(back.SOPInstanceUID)
    assert [s.InstanceNumber for s in scs] == [1, 2, 3, 4, 5]  # the model's order of findings
    pictured = [s for s in scs if s.DerivationDescription.startswith("Grad-CAM overlay")]
    assert sorted(s.DerivationDescription.split()[3] for s in pictured) == ["Cardiomegaly", "Effusion"]
    for sc in pictured:
        assert sc.Columns == MIN_SIDE and sc.Rows > MIN_SIDE  # enlarged: the words must stay legible
    cards = [s for s in scs if s not in pictured]
    assert all("No heatmap" in s.ImageComments and s.Rows < MIN_SIDE for s in cards)
    assert len({s.SeriesInstanceUID for s in scs}) == 1 and len(uids) == 5
    again = results_for(source, prediction(), overlays=overlays, algorithm=ALGORITHM, image=image)
    assert [s.SOPInstanceUID for s in again[2:]] == [s.SOPInstanceUID for s in scs]  # a resend replaces


def test_a_finding_turned_negative_keeps_its_sc_uid_and_the_card_says_negative(tmp_path):
    source, image = _source_and_image(tmp_path, 6)
    heat = {"Cardiomegaly": _heatmap(64, 64), "Effusion": _heatmap(64, 64)}
    before = pictures(results_for(source, prediction(), overlays=heat, algorithm=ALGORITHM, image=image))
    turned = prediction(calls={"Cardiomegaly": False, "Effusion": True})
    after = pictures(results_for(source, turned, overlays=heat, algorithm=ALGORITHM, image=image))
    assert [s.SOPInstanceUID for s in after] == [
        s.SOPInstanceUID for s in before
    ]  # the old picture is replaced
    cardio = next(s for s in after if "Cardiomegaly" in s.DerivationDescription)
    assert cardio.DerivationDescription.startswith("Text card")
    assert "Cardiomegaly, probability 0.81 (negative" in cardio.ImageComments  # the card says why


def test_pixels_are_the_overlay_between_two_bands_of_burned_in_text(tmp_path):
    source, image = _source_and_image(tmp_path, 2, size=512)
    heat = _heatmap(512, 512)
    pred = prediction()
    objects = results_for(source, pred, overlays={"Cardiomegaly": heat}, algorithm=ALGORITHM, image=image)
    (sc,) = pictures(objects, "Cardiomegaly")
    pixels = sc.pixel_array  # decoded from JPEG, YBR_FULL_422 -> RGB by pydicom
    band = (pixels.shape[0] - 512) // 2
    assert _close(pixels[band : band + 512], overlay_rgb(image, heat))  # the Grad-CAM overlay itself
    top, bottom = pixels[:band], pixels[band + 512 :]
    # the banner: yellow text on black, drawn the same way as on an empty picture
    expected = burn_in(np.zeros((512, 512, 3), np.uint8), BANNER, caption("Cardiomegaly", pred, ALGORITHM))
    assert _close(top, expected[:band], 8) and _close(bottom, expected[band + 512 :], 8)
    yellow = (top[..., 0] > 200) & (top[..., 1] > 200) & (top[..., 2] < 80)
    assert yellow.sum() > 50 and (top.reshape(-1, 3).max(1) == 0).mean() > 0.5
    assert (bottom.reshape(-1, 3).min(1) > 200).sum() > 20  # white caption text
    assert caption("Cardiomegaly", pred, ALGORITHM).startswith(
        "cxrdx Grad-CAM: Cardiomegaly, probability 0.81"
    )
    assert "score (uncalibrated)" in caption("Cardiomegaly", prediction(calibration="none"), ALGORITHM)


def test_source_pixels_are_decoded_when_no_image_is_given(tmp_path):
    source, image = _source_and_image(tmp_path, 3)
    heat = {"Cardiomegaly": _heatmap(64, 64)}
    with_image = pictures(results_for(source, prediction(), overlays=heat, algorithm=ALGORITHM, image=image))
    decoded = pictures(results_for(source, prediction(), overlays=heat, algorithm=ALGORITHM))
    assert np.array_equal(with_image[1].pixel_array, decoded[1].pixel_array)  # Cardiomegaly: the 2nd finding


def test_large_images_are_scaled_down_with_their_pixel_spacing(tmp_path):
    source, image = _source_and_image(tmp_path, 4, size=1100, PixelSpacing=[0.2, 0.2])
    objects = results_for(
        source,
        prediction(),
        overlays={"Cardiomegaly": _heatmap(1100, 1100)},
        algorithm=ALGORITHM,
        image=image,
    )
    (sc,) = pictures(objects, "Cardiomegaly")
    assert sc.Columns == MAX_SIDE
    assert float(sc.PixelSpacing[0]) == pytest.approx(0.2 * 1100 / MAX_SIDE, rel=1e-4)


def test_pictured_findings():
    assert pictured_findings(prediction()) == [
        "Cardiomegaly",
        "Effusion",
    ]  # the positive ones, most probable first
    assert pictured_findings(prediction(calls=None)) == ["Cardiomegaly", "Effusion", "Fracture"]  # top 3
    assert pictured_findings(prediction(calls={"Cardiomegaly": False})) == []


def test_sc_passes_dciodvfy(tmp_path):
    source, image = _source_and_image(tmp_path, 5)
    objects = results_for(
        source, prediction(), overlays={"Cardiomegaly": _heatmap(64, 64)}, algorithm=ALGORITHM, image=image
    )
    for k, sc in enumerate(pictures(objects)):  # pictures and cards alike
        path = tmp_path / f"sc{k}.dcm"
        sc.save_as(path, enforce_file_format=True)
        assert dciodvfy(path) == [], sc.DerivationDescription


@pytest.mark.realdata
def test_sc_of_the_real_siim_dicom(shared_data, tmp_path):
    source = pydicom.dcmread(shared_data / "dicom" / "siim_pneumothorax_sample.dcm")
    heat = {"Pneumothorax": _heatmap(int(source.Rows), int(source.Columns))}
    (sc,) = pictures(
        results_for(source, prediction(calls={"Pneumothorax": True}), overlays=heat, algorithm=ALGORITHM)
    )[3:4]
    assert "Pneumothorax" in sc.DerivationDescription and sc.DerivationDescription.startswith("Grad-CAM")
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.StudyInstanceUID == source.StudyInstanceUID and back.BurnedInAnnotation == "YES"
    assert back.LossyImageCompression == "01"  # drawn from a JPEG-compressed film
    assert dciodvfy(path) == []
