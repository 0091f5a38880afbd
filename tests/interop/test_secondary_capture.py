"""Grad-CAM secondary captures: in the source's study, words burned into the pixels, valid by dciodvfy."""

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
from cxrdx.interop.sr import results_for


def _heatmap(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-(((yy - h / 3) ** 2 + (xx - w / 3) ** 2) / (0.05 * h * w))).astype(np.float32)


def _source_and_image(tmp_path, seed=0, size=64, **attrs):
    """A phantom DICOM and the image THE reader makes of it (what the prediction saw)."""
    source = phantom_dicom(seed, size, **attrs)
    path = tmp_path / f"source{seed}.dcm"
    source.save_as(path, enforce_file_format=True)
    return source, read_image(path)[0]


def test_one_sc_per_overlay_in_the_source_study(tmp_path):
    source, image = _source_and_image(tmp_path, 1)
    overlays = {"Cardiomegaly": _heatmap(64, 64), "Effusion": _heatmap(64, 64)[::-1]}
    sr, *scs = results_for(source, prediction(), overlays=overlays, algorithm=ALGORITHM, image=image)
    assert len(scs) == 2
    uids = set()
    for k, sc in enumerate(scs):
        path = tmp_path / f"sc{k}.dcm"
        sc.save_as(path, enforce_file_format=True)
        back = pydicom.dcmread(path)
        assert back.SOPClassUID == SecondaryCaptureImageStorage
        assert back.BurnedInAnnotation == "YES"
        assert back.StudyInstanceUID == source.StudyInstanceUID
        assert (back.PatientID, back.PatientName) == (source.PatientID, source.PatientName)
        assert back.SeriesInstanceUID not in (source.SeriesInstanceUID, sr.SeriesInstanceUID)
        assert back.PhotometricInterpretation == "RGB" and back.SamplesPerPixel == 3
        ref = back.SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert back.pixel_array.shape[1] == MIN_SIDE  # enlarged: the words must stay legible
        assert back.pixel_array.shape[0] > MIN_SIDE  # the two text bands
        assert back.ContentQualification == "RESEARCH"
        uids.add(back.SOPInstanceUID)
    assert len({s.SeriesInstanceUID for s in scs}) == 1 and len(uids) == 2
    again = results_for(source, prediction(), overlays=overlays, algorithm=ALGORITHM, image=image)
    assert [s.SOPInstanceUID for s in again[1:]] == [s.SOPInstanceUID for s in scs]  # a resend replaces


def test_pixels_are_the_overlay_between_two_bands_of_burned_in_text(tmp_path):
    source, image = _source_and_image(tmp_path, 2, size=512)
    heat = _heatmap(512, 512)
    pred = prediction()
    (sc,) = results_for(source, pred, overlays={"Cardiomegaly": heat}, algorithm=ALGORITHM, image=image)[1:]
    pixels = sc.pixel_array
    band = (pixels.shape[0] - 512) // 2
    assert np.array_equal(pixels[band : band + 512], overlay_rgb(image, heat))  # the Grad-CAM overlay itself
    top, bottom = pixels[:band], pixels[band + 512 :]
    # the banner: yellow text on black, drawn the same way as on an empty picture
    expected = burn_in(np.zeros((512, 512, 3), np.uint8), BANNER, caption("Cardiomegaly", pred, ALGORITHM))
    assert np.array_equal(top, expected[:band]) and np.array_equal(bottom, expected[band + 512 :])
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
    with_image = results_for(source, prediction(), overlays=heat, algorithm=ALGORITHM, image=image)[1]
    decoded = results_for(source, prediction(), overlays=heat, algorithm=ALGORITHM)[1]
    assert np.array_equal(with_image.pixel_array, decoded.pixel_array)


def test_large_images_are_scaled_down_with_their_pixel_spacing(tmp_path):
    source, image = _source_and_image(tmp_path, 4, size=1100, PixelSpacing=[0.2, 0.2])
    (sc,) = results_for(
        source,
        prediction(),
        overlays={"Cardiomegaly": _heatmap(1100, 1100)},
        algorithm=ALGORITHM,
        image=image,
    )[1:]
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
    (sc,) = results_for(
        source, prediction(), overlays={"Cardiomegaly": _heatmap(64, 64)}, algorithm=ALGORITHM, image=image
    )[1:]
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert dciodvfy(path) == []


@pytest.mark.realdata
def test_sc_of_the_real_siim_dicom(shared_data, tmp_path):
    source = pydicom.dcmread(shared_data / "dicom" / "siim_pneumothorax_sample.dcm")
    heat = {"Pneumothorax": _heatmap(int(source.Rows), int(source.Columns))}
    (sc,) = results_for(source, prediction(), overlays=heat, algorithm=ALGORITHM)[1:]
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.StudyInstanceUID == source.StudyInstanceUID and back.BurnedInAnnotation == "YES"
    assert back.LossyImageCompression == "01"  # drawn from a JPEG-compressed film
    assert dciodvfy(path) == []
