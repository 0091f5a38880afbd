"""cxrdx.imaging.dicom: DICOM read through read_image: LUTs, windowing, MONOCHROME1, transfer syntaxes, warnings."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from corpus.bad_inputs import chest, dicom_dataset
from testkit import looks_like_chest

from cxrdx.errors import ImageReadError
from cxrdx.imaging.read import read_image

G = chest()  # 64x64 uint8 chest-like pattern
G16 = G.astype(np.uint16) * 16  # 12-bit values


def save_dcm(ds, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def minmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return (a - a.min()) / (a.max() - a.min())


# --------------------------------------------------------------------------- DICOM


def test_dicom_monochrome1_is_inverted(tmp_path):
    m2, meta2 = read_image(save_dcm(dicom_dataset(G16, bits_stored=12), tmp_path / "m2.dcm"))
    stored_inverted = (4095 - G16).astype(np.uint16)
    m1, meta1 = read_image(save_dcm(dicom_dataset(stored_inverted, "MONOCHROME1", 12), tmp_path / "m1.dcm"))
    np.testing.assert_allclose(m2, minmax(G16), atol=1e-6)
    np.testing.assert_allclose(m1, m2, atol=1e-6)
    assert (meta2.photometric, meta1.photometric) == ("MONOCHROME2", "MONOCHROME1")
    assert meta1.format == "DICOM" and meta1.modality == "DX" and meta1.view == "PA" and meta1.bit_depth == 12


def test_dicom_rescale_then_window(tmp_path):
    c, w = 0.0, 4000.0
    ds = dicom_dataset(
        G16, bits_stored=12, RescaleSlope=2, RescaleIntercept=-2000, WindowCenter=c, WindowWidth=w
    )
    img, _ = read_image(save_dcm(ds, tmp_path / "rw.dcm"))
    hu = 2.0 * G16 - 2000.0
    expected = np.clip((hu - (c - 0.5)) / (w - 1) + 0.5, 0, 1)  # DICOM LINEAR window, scaled to [0, 1]
    np.testing.assert_allclose(img, expected, atol=1e-5)
    assert img.max() == 1.0 and 0.3 < img.min() < 0.5  # the window clips the top, not the bottom


def test_dicom_window_clips_and_monochrome1_inverts_after(tmp_path):
    ds = dicom_dataset(G16, bits_stored=12, WindowCenter=2400, WindowWidth=800)
    img, _ = read_image(save_dcm(ds, tmp_path / "w.dcm"))
    assert (img[G16 <= 2000] == 0).all() and (img[G16 >= 2800] == 1).all()
    middle = (G16 > 2100) & (G16 < 2700)
    assert middle.any() and (img[middle] > 0).all() and (img[middle] < 1).all()
    ds1 = dicom_dataset(G16, "MONOCHROME1", 12, WindowCenter=2400, WindowWidth=800)
    inv, _ = read_image(save_dcm(ds1, tmp_path / "w1.dcm"))
    np.testing.assert_allclose(inv, 1 - img, atol=1e-6)


def test_dicom_without_pixel_data(tmp_path):
    import pydicom

    ds = dicom_dataset(None, modality="SR", view=None)
    ds.SOPClassUID = pydicom.uid.ComprehensiveSRStorage
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    path = save_dcm(ds, tmp_path / "report.dcm")
    with pytest.raises(
        ImageReadError, match=r"DICOM has no pixel data \(SOP class Comprehensive SR Storage\)"
    ):
        read_image(path)


@pytest.mark.parametrize(
    ("uid", "expected"),
    [
        ("1.2.840.10008.1.2.4.100", "MPEG2 Main Profile"),
        ("1.2.826.0.1.3680043.9.9999.7", "unknown or private"),
    ],
)
def test_dicom_unsupported_transfer_syntax(tmp_path, uid, expected):
    from pydicom.encaps import encapsulate

    ds = dicom_dataset(G16, bits_stored=12)
    ds.file_meta.TransferSyntaxUID = uid
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x11" * 40])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    path = tmp_path / "video.dcm"
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
    with pytest.raises(ImageReadError, match="transfer syntax") as info:
        read_image(path)
    assert uid in str(info.value) and expected in str(info.value)


@pytest.mark.parametrize(
    ("attrs", "warning"),
    [
        ({"modality": "CT"}, "modality is CT"),
        ({"modality": "MG"}, "modality is MG"),
        ({"view": "LL"}, "lateral view (LL)"),
        ({"view": "RL"}, "lateral view (RL)"),
        ({"BodyPartExamined": "KNEE"}, "body part examined is KNEE"),
    ],
)
def test_dicom_non_chest_is_accepted_with_warning(tmp_path, attrs, warning):
    img, meta = read_image(save_dcm(dicom_dataset(G16, bits_stored=12, **attrs), tmp_path / "x.dcm"))
    assert img.shape == (64, 64)
    assert any(warning in w for w in meta.warnings), meta.warnings


def test_dicom_chest_pa_has_no_warning(tmp_path):
    for modality in ("CR", "DX"):
        for view in ("PA", "AP", None):
            ds = dicom_dataset(G16, bits_stored=12, modality=modality, view=view)
            meta = read_image(save_dcm(ds, tmp_path / "ok.dcm"))[1]
            assert meta.warnings == [] and meta.modality == modality and meta.view == view


def test_dicom_compressed_syntaxes_match_uncompressed(tmp_path):
    from pydicom.uid import JPEG2000Lossless, RLELossless

    ref = read_image(save_dcm(dicom_dataset(G16, bits_stored=12), tmp_path / "raw.dcm"))[0]
    for uid in (RLELossless, JPEG2000Lossless):
        ds = dicom_dataset(G16, bits_stored=12)
        ds.compress(uid)
        np.testing.assert_array_equal(read_image(save_dcm(ds, tmp_path / f"{uid.keyword}.dcm"))[0], ref)


def test_dicom_truncated_pixel_data(tmp_path):
    buf = io.BytesIO()
    dicom_dataset(G16, bits_stored=12).save_as(buf, enforce_file_format=True)
    path = tmp_path / "cut.dcm"
    path.write_bytes(buf.getvalue()[:-1000])
    with pytest.raises(ImageReadError, match="pixel data"):
        read_image(path)


# --------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_dicoms(shared_data, tmp_path):
    import pydicom

    siim_path = shared_data / "dicom" / "siim_pneumothorax_sample.dcm"
    mono1_path = shared_data / "dicom" / "monochrome1_sample.dcm"
    siim, meta = read_image(siim_path)
    assert siim.shape == (1024, 1024) and siim.dtype == np.float32
    assert (meta.format, meta.photometric, meta.modality, meta.view, meta.bit_depth) == (
        "DICOM",
        "MONOCHROME2",
        "CR",
        "PA",
        8,
    )
    assert meta.warnings == []
    assert looks_like_chest(siim)

    # The shared MONOCHROME1 sample holds the SIIM bytes unchanged with only the tag switched,
    # so a reader that honours MONOCHROME1 must return exactly the inverse of the SIIM image.
    raw_siim = pydicom.dcmread(siim_path).pixel_array
    raw_mono1 = pydicom.dcmread(mono1_path).pixel_array
    mono1, meta1 = read_image(mono1_path)
    assert meta1.photometric == "MONOCHROME1"
    if np.array_equal(raw_siim, raw_mono1):
        np.testing.assert_allclose(mono1, 1.0 - siim, atol=1e-6)
        assert not looks_like_chest(mono1)
    else:  # a properly inverted copy reads like the original
        np.testing.assert_allclose(mono1, siim, atol=1 / 255)

    # A real MONOCHROME1 film (stored values inverted) reads exactly like the SIIM original.
    ds = pydicom.dcmread(siim_path)
    ds.decompress()
    ds.set_pixel_data((255 - raw_siim).astype(np.uint8), "MONOCHROME1", 8)
    inverted_store = save_dcm(ds, tmp_path / "real_monochrome1.dcm")
    again, meta2 = read_image(inverted_store)
    np.testing.assert_allclose(again, siim, atol=1e-6)
    assert meta2.photometric == "MONOCHROME1" and looks_like_chest(again)


def test_dicom_missing_plugin_is_named(tmp_path, monkeypatch):
    """A codec pydicom knows but no installed plugin decodes: the message says what to install."""
    import pydicom.pixels
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    ds = dicom_dataset(G16, bits_stored=12)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 40])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    path = save_dcm(ds, tmp_path / "jls.dcm")

    class NoPlugin:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"]

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: NoPlugin())
    with pytest.raises(ImageReadError, match="pylibjpeg-libjpeg") as info:
        read_image(path)
    assert "JPEG-LS Lossless" in str(info.value) and JPEGLSLossless in str(info.value)


# --------------------------------------------------------------------------- VOI LUT, presentation LUT, padding


def _pydicom_voi(ds):
    try:
        from pydicom.pixels import apply_voi_lut
    except ImportError:  # pydicom < 3
        from pydicom.pixel_data_handlers.util import apply_voi_lut
    return apply_voi_lut(ds.pixel_array, ds, prefer_lut=True).astype(np.float64)


def _voi_lut_dataset(vr: str, bits: int = 16, **attrs):
    """G16 with a VOI LUT (a gamma curve clipping both ends of G16's range) as US or OW."""
    from pydicom.dataset import Dataset

    first = int(G16.min()) + 40
    entries = int(G16.max()) - 40 - first

    top = 2**bits - 1
    lut = np.round(top * np.linspace(0, 1, entries) ** 0.6).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [entries, first, bits]
    item.LUTExplanation = "gamma"
    if vr == "OW":
        item.add_new(0x00283006, "OW", lut.astype("<u2").tobytes())
    else:
        item.add_new(0x00283006, "US", [int(v) for v in lut])
    ds = dicom_dataset(G16, bits_stored=12, **attrs)
    ds.VOILUTSequence = [item]
    return ds, top


@pytest.mark.parametrize("vr", ["US", "OW"])
@pytest.mark.parametrize("bits", [16, 12, 8])
def test_dicom_voi_lut_matches_pydicom(tmp_path, vr, bits):
    import pydicom

    ds, top = _voi_lut_dataset(vr, bits, WindowCenter=2000, WindowWidth=10)  # the LUT wins over the window
    path = save_dcm(ds, tmp_path / f"lut_{vr}.dcm")
    img, meta = read_image(path)
    ref = pydicom.dcmread(path)
    item = ref.VOILUTSequence[0]
    entries, first, _ = item.LUTDescriptor
    lut = np.frombuffer(item.LUTData, "<u2") if vr == "OW" else np.asarray(item.LUTData)
    direct = lut[np.clip(G16.astype(np.int64) - first, 0, entries - 1)] / top  # the standard's lookup
    np.testing.assert_allclose(img, direct, atol=1e-6)
    if bits > 8:  # pydicom indexes 8-bit LUTs through uint8 (wraps past 255 inputs): compare above that
        np.testing.assert_allclose(img, _pydicom_voi(ref) / top, atol=1e-6)
    assert meta.warnings == [] and img.min() == 0.0 and img.max() == 1.0
    stored_vr = item["LUTData"].VR
    assert stored_vr == vr


def test_dicom_voi_lut_ow_and_us_agree_and_monochrome1_inverts(tmp_path):
    us = read_image(save_dcm(_voi_lut_dataset("US")[0], tmp_path / "us.dcm"))[0]
    ow = read_image(save_dcm(_voi_lut_dataset("OW")[0], tmp_path / "ow.dcm"))[0]
    np.testing.assert_array_equal(us, ow)
    ds, _ = _voi_lut_dataset("OW")
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_allclose(read_image(save_dcm(ds, tmp_path / "m1.dcm"))[0], 1 - ow, atol=1e-6)


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("short_ow", "holds 6 bytes"),
        ("short_us", "holds 2 entries"),
        ("bad_bits", "9 bits per entry"),
        ("bad_descriptor", "LUT Descriptor has 2 values"),
    ],
)
def test_dicom_malformed_voi_lut_warns_without_bytes(tmp_path, problem, message):
    ds, _ = _voi_lut_dataset("OW", WindowCenter=2048, WindowWidth=4096)
    item = ds.VOILUTSequence[0]
    if problem == "short_ow":
        item.LUTData = b"\xde\xad\xbe\xef\x01\x02"
    elif problem == "short_us":
        item.add_new(0x00283006, "US", [1, 2])
    elif problem == "bad_bits":
        item.LUTDescriptor = [item.LUTDescriptor[0], item.LUTDescriptor[1], 9]
    else:
        item.LUTDescriptor = list(item.LUTDescriptor)[:2]
    img, meta = read_image(save_dcm(ds, tmp_path / "bad.dcm"))
    lut_warnings = [w for w in meta.warnings if "VOI LUT" in w]
    assert len(lut_warnings) == 1 and message in lut_warnings[0], meta.warnings
    for w in meta.warnings:
        assert "\\x" not in w and "b'" not in w and 'b"' not in w and "dead" not in w.lower()
    expected = np.clip((G16 - 2047.5) / 4095 + 0.5, 0, 1)  # fell back to the window
    np.testing.assert_allclose(img, expected, atol=1e-5)


def test_dicom_presentation_lut_shape_inverse(tmp_path):
    ref = read_image(save_dcm(dicom_dataset(G16, bits_stored=12), tmp_path / "ref.dcm"))[0]
    ds = dicom_dataset(G16, bits_stored=12, PresentationLUTShape="INVERSE")
    np.testing.assert_allclose(read_image(save_dcm(ds, tmp_path / "inv.dcm"))[0], 1 - ref, atol=1e-6)
    ds = dicom_dataset(G16, bits_stored=12, PresentationLUTShape="IDENTITY")
    np.testing.assert_array_equal(read_image(save_dcm(ds, tmp_path / "id.dcm"))[0], ref)
    # DX (PS3.3 C.8.11.6.1): MONOCHROME1 *requires* INVERSE; both describe one inversion, not two
    stored_inverted = (4095 - G16).astype(np.uint16)
    ds = dicom_dataset(stored_inverted, "MONOCHROME1", 12, PresentationLUTShape="INVERSE")
    np.testing.assert_allclose(read_image(save_dcm(ds, tmp_path / "m1.dcm"))[0], ref, atol=1e-6)


@pytest.mark.parametrize("inverse", [False, True])
def test_dicom_pixel_padding_value(tmp_path, inverse):
    arr = G16.copy()
    arr[:8] = 4095  # padding at the top, brighter than anything in the image
    arr[-8:] = 4090  # and at the bottom, inside the padding range (G16 stops at 4080)
    body = np.ones(arr.shape, dtype=bool)
    body[:8] = body[-8:] = False
    shape = {"PresentationLUTShape": "INVERSE"} if inverse else {}
    ds = dicom_dataset(arr, bits_stored=12, PixelPaddingValue=4095, PixelPaddingRangeLimit=4085, **shape)
    img, meta = read_image(save_dcm(ds, tmp_path / "pad.dcm"))
    assert (img[~body] == 0).all() and meta.warnings == []
    inner = minmax(G16[body])
    np.testing.assert_allclose(img[body], 1 - inner if inverse else inner, atol=1e-6)
    # a window is explicit: padding only becomes black, the rest is windowed as before
    ds = dicom_dataset(arr, bits_stored=12, PixelPaddingValue=4095, WindowCenter=2048, WindowWidth=4096)
    img = read_image(save_dcm(ds, tmp_path / "padw.dcm"))[0]
    assert (img[:8] == 0).all()
    np.testing.assert_allclose(img[8:], np.clip((arr[8:] - 2047.5) / 4095 + 0.5, 0, 1), atol=1e-5)
