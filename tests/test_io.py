"""cxrdx.io: every image a user may have is read the same way, every bad one is refused clearly."""

from __future__ import annotations

import io
import os
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from corpus.bad_inputs import chest, dicom_dataset, make_corpus, png_bomb
from PIL import Image, ImageFile

from cxrdx.errors import ImageReadError
from cxrdx.io import (
    IMAGE_SUFFIXES,
    ImageMeta,
    find_images,
    image_to_uint8,
    no_images_message,
    read_image,
)

G = chest()  # 64x64 uint8 chest-like pattern
G16 = G.astype(np.uint16) * 16  # 12-bit values


def save(im: Image.Image, path: Path, fmt: str | None = None, **kw) -> Path:
    im.save(path, fmt, **kw)
    return path


def save_dcm(ds, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def minmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return (a - a.min()) / (a.max() - a.min())


# --------------------------------------------------------------------------- the corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def test_corpus_every_case_has_its_outcome(corpus):
    """Each good file reads as float32 [0,1] of the right shape; each bad one raises a clear error."""
    assert len(corpus) >= 50 and len({c.name for c in corpus}) == len(corpus)
    problems = []
    for case in corpus:
        try:
            img, meta = read_image(case.path)
        except ImageReadError as exc:
            msg = str(exc)
            if case.expect != "error":
                problems.append(f"{case.name}: expected ok, got error {msg}")
            elif case.message.lower() not in msg.lower():
                problems.append(f"{case.name}: error lacks {case.message!r}: {msg}")
            elif str(case.path) not in msg:
                problems.append(f"{case.name}: error does not name the file: {msg}")
            continue
        except Exception as exc:  # a raw exception is a bug in itself
            problems.append(f"{case.name}: raw {type(exc).__name__}: {exc}")
            continue
        if case.expect != "ok":
            problems.append(f"{case.name}: expected error {case.message!r}, but it was read ({meta})")
            continue
        if img.dtype != np.float32 or img.ndim != 2 or not (0.0 <= img.min() <= img.max() <= 1.0):
            problems.append(f"{case.name}: bad output {img.dtype} {img.shape} {img.min()}..{img.max()}")
        if case.shape is not None and img.shape != case.shape:
            problems.append(f"{case.name}: shape {img.shape} != {case.shape}")
        if meta.source_size != img.shape or meta.path != str(case.path):
            problems.append(f"{case.name}: meta does not match: {meta}")
        if case.message and not any(case.message.lower() in w.lower() for w in meta.warnings):
            problems.append(f"{case.name}: no warning containing {case.message!r}: {meta.warnings}")
        if not case.message and meta.warnings:
            problems.append(f"{case.name}: unexpected warnings {meta.warnings}")
    assert not problems, "\n".join(problems)


def test_corpus_is_small(corpus):
    sizes = {c.name: c.path.stat().st_size for c in corpus if c.path.is_file()}
    assert max(sizes.values()) < 20_000, sizes
    assert sum(sizes.values()) < 500_000


def test_corpus_readable_files_agree(corpus):
    """Every lossless encoding of the same pattern gives the same pixels."""
    by_name = {c.name: c.path for c in corpus}
    ref = read_image(by_name["gray8.png"])[0]
    np.testing.assert_array_equal(ref, G.astype(np.float32) / 255)
    for name in ("rgb.png", "rgba.png", "gray_alpha.png", "palette.png", "gray.tif", "gray.bmp", "UPPER.PNG"):
        np.testing.assert_allclose(read_image(by_name[name])[0], ref, atol=1e-6, err_msg=name)
    dcm = read_image(by_name["mono2.dcm"])[0]
    np.testing.assert_allclose(dcm, minmax(G16), atol=1e-6)
    for name in (
        "mono1.dcm",
        "rle.dcm",
        "jpeg2000.dcm",
        "acr_nema_no_preamble.dcm",
        "IM000001",
        "signed16.dcm",
    ):
        np.testing.assert_allclose(read_image(by_name[name])[0], dcm, atol=1e-6, err_msg=name)
    jpeg_like = [read_image(by_name[n])[0] for n in ("gray.jpg", "cmyk.jpg", "jpeg_baseline.dcm")]
    for name, img in zip(("gray.jpg", "cmyk.jpg"), jpeg_like[:2], strict=True):
        assert np.abs(img - ref).mean() < 0.01, name
    assert np.abs(jpeg_like[2] - minmax(G)).mean() < 0.01


# --------------------------------------------------------------------------- stills


def test_gray8_png_exact(tmp_path):
    img, meta = read_image(save(Image.fromarray(G), tmp_path / "a.png"))
    assert img.dtype == np.float32 and img.shape == (64, 64)
    np.testing.assert_array_equal(img, G / np.float32(255))
    assert meta == ImageMeta(str(tmp_path / "a.png"), "PNG", (64, 64), 8, "MONOCHROME2", None, None, [])
    np.testing.assert_array_equal(image_to_uint8(img), G)


def test_16bit_png_keeps_values(tmp_path):
    img, meta = read_image(save(Image.fromarray(G16), tmp_path / "a.png"))
    assert meta.bit_depth == 16
    np.testing.assert_array_equal(np.round(img.astype(np.float64) * 65535).astype(np.uint16), G16)


def test_rgba_equals_gray_and_colour_warns(tmp_path):
    rgba = np.dstack([G, G, G, np.arange(64 * 64).reshape(64, 64) % 256]).astype(np.uint8)  # alpha varies
    img, meta = read_image(save(Image.fromarray(rgba), tmp_path / "a.png"))
    np.testing.assert_allclose(img, G / 255, atol=1e-6)
    assert meta.photometric == "RGBA" and meta.warnings == []
    colour = np.dstack([G, np.zeros_like(G), 255 - G])
    img, meta = read_image(save(Image.fromarray(colour), tmp_path / "c.png"))
    expected = (0.299 * G + 0.114 * (255 - G.astype(np.float64))) / 255
    np.testing.assert_allclose(img, expected, atol=1e-5)
    assert any("colour" in w for w in meta.warnings)


def test_cmyk_jpeg_converted(tmp_path):
    img, meta = read_image(save(Image.fromarray(G).convert("CMYK"), tmp_path / "a.jpg", quality=95))
    assert meta.photometric == "CMYK" and meta.format == "JPEG"
    assert np.abs(img - G / 255).mean() < 0.01


def test_exif_orientation_applied(tmp_path):
    tall = chest(64, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = save(Image.fromarray(tall), tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    img, meta = read_image(path)
    assert img.shape == (40, 64) and meta.source_size == (40, 64)
    clockwise, anticlockwise = np.rot90(tall, k=-1) / 255, np.rot90(tall, k=1) / 255
    assert np.abs(img - clockwise).mean() < 0.01 < np.abs(img - anticlockwise).mean()
    assert any("EXIF" in w for w in meta.warnings)


def test_tiff_16bit(tmp_path):
    img, meta = read_image(save(Image.fromarray(G16), tmp_path / "a.tif"))
    assert meta.format == "TIFF"
    np.testing.assert_allclose(img, G16 / 65535, atol=1e-7)
    img, meta = read_image(save(Image.fromarray(G16.astype(np.int32)), tmp_path / "i32.tif"))  # mode "I"
    np.testing.assert_allclose(img, G16 / 65535, atol=1e-7)
    assert meta.bit_depth == 16 and meta.warnings == []
    img, meta = read_image(save(Image.fromarray(G16.astype(np.int32) * 100), tmp_path / "big.tif"))
    np.testing.assert_allclose(img, minmax(G16), atol=1e-6)
    assert any("min-max" in w for w in meta.warnings)
    img, meta = read_image(save(Image.fromarray(G / np.float32(255)), tmp_path / "f.tif"))  # mode "F"
    np.testing.assert_allclose(img, G / 255, atol=1e-6)


def test_constant_images_give_no_nan(tmp_path):
    img, _ = read_image(save(Image.new("L", (40, 40), 77), tmp_path / "c.png"))
    assert np.isfinite(img).all() and np.allclose(img, 77 / 255)
    img, meta = read_image(
        save_dcm(dicom_dataset(np.full((40, 40), 500, np.uint16), bits_stored=12), tmp_path / "c.dcm")
    )
    assert np.isfinite(img).all() and any("constant" in w for w in meta.warnings)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.png", b"", "empty file"),
        ("notes.png", b"hello, this is a text file\n" * 5, "text file"),
        ("page.jpg", b"<html><head></head><body>404</body></html>", "HTML"),
    ],
)
def test_non_images_refused(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ImageReadError, match=message) as info:
        read_image(path)
    assert info.value.path == str(path)


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
@pytest.mark.parametrize("kind", ["png", "jpg"])
def test_truncated_files_refused_not_half_loaded(tmp_path, kind, cut):
    data = _png(G) if kind == "png" else _jpeg(G)
    path = tmp_path / f"cut.{kind}"
    path.write_bytes(data[: int(len(data) * cut)])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(path)


def test_png_crc_checked(tmp_path):
    data = bytearray(_png(G))
    data[-20] ^= 0x01  # last byte region of the IDAT payload; Pillow itself would not notice
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="CRC"):
        read_image(path)


@pytest.mark.parametrize(("w", "h"), [(100_000, 100_000), (8000, 8000), (60_000, 16)])
def test_decompression_bomb_refused_without_decoding(tmp_path, monkeypatch, w, h):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(w, h))
    assert path.stat().st_size < 200

    def no_decoding(*args, **kwargs):
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 5_000_000
    assert str(path) in str(info.value)
    expected = "aspect" if h == 16 else "too large"
    assert expected in str(info.value)


def test_max_pixels_is_a_parameter(tmp_path):
    path = save(Image.fromarray(G), tmp_path / "a.png")
    with pytest.raises(ImageReadError, match=r"64x64 pixels.*4,096 pixels exceeds the limit of 4,000"):
        read_image(path, max_pixels=4000)
    dcm = save_dcm(dicom_dataset(G16, bits_stored=12), tmp_path / "a.dcm")
    with pytest.raises(ImageReadError, match="too large"):
        read_image(dcm, max_pixels=4000)
    assert read_image(path, max_pixels=4096)[0].shape == (64, 64)


@pytest.mark.parametrize(
    ("size", "message"), [((1, 1), "too small"), ((15, 200), "too small"), ((4000, 20), "aspect")]
)
def test_odd_sizes_refused(tmp_path, size, message):
    path = save(Image.new("L", size, 100), tmp_path / "odd.png")
    with pytest.raises(ImageReadError, match=message):
        read_image(path)


def test_smallest_accepted_sizes(tmp_path):
    assert read_image(save(Image.new("L", (16, 16), 1), tmp_path / "s.png"))[0].shape == (16, 16)
    assert read_image(save(Image.new("L", (160, 16), 1), tmp_path / "w.png"))[0].shape == (16, 160)


def test_animated_gif_refused(tmp_path):
    frames = [Image.fromarray(G), Image.fromarray(255 - G)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageReadError, match=r"multi-frame image \(2 frames\); export a single frame"):
        read_image(path)


def test_paths_that_are_not_files(tmp_path):
    with pytest.raises(ImageReadError, match="not found") as info:
        read_image(tmp_path / "nope.png")
    assert "nope.png" in str(info.value)
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)
    with pytest.raises(ImageReadError, match="file path, a numpy array or a PIL image"):
        read_image(123)
    link = tmp_path / "dangling.png"
    link.symlink_to(tmp_path / "gone.png")
    with pytest.raises(ImageReadError, match="broken symbolic link"):
        read_image(link)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path):
    path = save(Image.fromarray(G), tmp_path / "locked.png")
    path.chmod(0)
    try:
        with pytest.raises(ImageReadError, match="permission denied"):
            read_image(path)
    finally:
        path.chmod(0o644)


def test_unicode_and_spaces_in_names(tmp_path):
    folder = tmp_path / "Röntgen bilder 胸部"
    folder.mkdir()
    good = save(Image.fromarray(G), folder / "Patient ü (1).png")
    assert read_image(good)[1].path == str(good)
    bad = folder / "kaputt é.png"
    bad.write_bytes(b"")
    with pytest.raises(ImageReadError) as info:
        read_image(bad)
    assert str(bad) in str(info.value)


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


# --------------------------------------------------------------------------- arrays


@pytest.mark.parametrize(
    ("array", "bit_depth"),
    [
        (G, 8),
        (G.astype(np.uint16) * 257, 16),
        (G / np.float32(255), 32),
        (G.astype(np.float64) / 255, 64),
        (G.astype(np.int64), 8),
        (np.dstack([G, G, G]), 8),
        (np.dstack([G, G, G, np.zeros_like(G)]), 8),
        (np.stack([G, G, G]), 8),  # channels first
        (G[..., None], 8),
    ],
)
def test_arrays(array, bit_depth):
    img, meta = read_image(array)
    np.testing.assert_allclose(img, G / 255, atol=1e-6)
    assert (
        img.dtype == np.float32
        and meta.format == "array"
        and meta.path is None
        and meta.bit_depth == bit_depth
    )
    assert meta.warnings == []


def test_arrays_out_of_range_and_bad():
    img, meta = read_image(G.astype(np.float32) * 10 - 300)
    np.testing.assert_allclose(img, minmax(G), atol=1e-6)
    assert any("min-max" in w for w in meta.warnings)
    assert read_image(np.full((32, 32), 7.5))[0].max() == 0.0  # constant: zeros, no NaN
    bad = np.ones((32, 32), np.float32)
    bad[3, 3] = np.nan
    for array, message in [
        (np.zeros(100), "not an image"),
        (np.zeros((2, 32, 32, 3)), "not an image"),
        (np.zeros((32, 32, 2)), "not an image"),
        (np.zeros((4, 4), np.uint8), "too small"),
        (bad, "NaN"),
        (np.zeros((32, 32), complex), "dtype"),
    ]:
        with pytest.raises(ImageReadError, match=message):
            read_image(array)
    pil = read_image(Image.fromarray(G))
    np.testing.assert_array_equal(pil[0], G / np.float32(255))


# --------------------------------------------------------------------------- find_images


def _tree(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "empty" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    png = _png(G)
    for rel in (
        "top.png",
        "UP.JPG",
        "a/one.png",
        "a/b/two.tif",
        "a/b/three.dcm",
        ".hidden/h.png",
        "a/._junk.png",
    ):
        (root / rel).write_bytes(png)
    (root / "notes.txt").write_text("x")
    (root / "a" / "README").write_text("not dicom")
    save_dcm(dicom_dataset(G16, bits_stored=12), root / "a" / "IM0001")


def test_find_images_flat_and_recursive(tmp_path):
    _tree(tmp_path)
    flat = find_images([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in flat] == ["UP.JPG", "top.png"]
    deep = find_images([tmp_path], recursive=True)
    rels = [p.relative_to(tmp_path).as_posix() for p in deep]
    assert rels == ["UP.JPG", "a/IM0001", "a/b/three.dcm", "a/b/two.tif", "a/one.png", "top.png"]
    assert all(isinstance(p, Path) for p in deep)
    for p in deep:
        assert read_image(p)[0].shape == (64, 64)


def test_find_images_dedupes_and_keeps_named_files(tmp_path):
    _tree(tmp_path)
    named = tmp_path / "notes.txt"
    got = find_images([tmp_path / "top.png", tmp_path, str(tmp_path / "top.png"), named])
    assert got == sorted({tmp_path / "top.png", tmp_path / "UP.JPG", named}, key=str)


def test_find_images_empty_and_missing(tmp_path):
    _tree(tmp_path)
    assert find_images([tmp_path / "empty"]) == []
    assert find_images([tmp_path / "empty"], recursive=True) == []
    assert "--recursive" in no_images_message([tmp_path / "empty"])
    assert "--recursive" not in no_images_message([tmp_path / "empty"], recursive=True)
    assert ".png" in no_images_message([tmp_path / "empty"])
    with pytest.raises(ImageReadError, match="no such file or folder") as info:
        find_images([tmp_path / "top.png", tmp_path / "missing dir"])
    assert "missing dir" in str(info.value)


@pytest.mark.timeout(20)
def test_find_images_symlink_loop_terminates(tmp_path):
    _tree(tmp_path)
    (tmp_path / "a" / "b" / "loop").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "self").symlink_to(tmp_path, target_is_directory=True)
    deep = find_images([tmp_path], recursive=True)
    assert len(deep) == 6
    assert len({os.path.realpath(p) for p in deep}) == 6


def test_image_suffixes():
    assert set(IMAGE_SUFFIXES) == {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"}


# --------------------------------------------------------------------------- real data


def _lungs_and_centre(img: np.ndarray) -> tuple[float, float, float]:
    """Mean of the left and right lung fields and the mediastinum, over the middle rows."""
    h, w = img.shape
    rows = img[int(h * 0.35) : int(h * 0.65)]
    return (
        float(rows[:, int(w * 0.10) : int(w * 0.33)].mean()),
        float(rows[:, int(w * 0.67) : int(w * 0.90)].mean()),
        float(rows[:, int(w * 0.45) : int(w * 0.55)].mean()),
    )


def _looks_like_chest_png(img: np.ndarray) -> bool:
    left, right, centre = _lungs_and_centre(img)
    return max(left, right) < centre


@pytest.mark.realdata
def test_real_nih_pngs(shared_data):
    paths = sorted((shared_data / "nih" / "images").glob("*.png"))
    assert len(paths) == 200
    total = np.zeros((1024, 1024), np.float64)
    photometric, chest_like = [], 0
    for path in paths:
        img, meta = read_image(path)
        assert img.dtype == np.float32 and img.shape == (1024, 1024) and meta.source_size == (1024, 1024)
        assert 0.0 <= img.min() < img.max() <= 1.0
        photometric.append(meta.photometric)
        chest_like += _looks_like_chest_png(img)
        total += img
        if meta.photometric == "RGBA":  # R = G = B: the gray is the red channel exactly
            red = np.asarray(Image.open(path))[..., 0]
            np.testing.assert_allclose(img, red / 255, atol=1e-6)
            assert meta.warnings == []
    assert photometric.count("RGBA") == 2 and photometric.count("MONOCHROME2") == 198
    assert chest_like >= 180  # a few films with effusions or odd positioning do not fit the rule
    assert _looks_like_chest_png(total / len(paths))
    assert _looks_like_chest_png(read_image(shared_data / "nih" / "images" / "00000100_000.png")[0])


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
    assert _looks_like_chest_png(siim)

    # The shared MONOCHROME1 sample holds the SIIM bytes unchanged with only the tag switched,
    # so a reader that honours MONOCHROME1 must return exactly the inverse of the SIIM image.
    raw_siim = pydicom.dcmread(siim_path).pixel_array
    raw_mono1 = pydicom.dcmread(mono1_path).pixel_array
    mono1, meta1 = read_image(mono1_path)
    assert meta1.photometric == "MONOCHROME1"
    if np.array_equal(raw_siim, raw_mono1):
        np.testing.assert_allclose(mono1, 1.0 - siim, atol=1e-6)
        assert not _looks_like_chest_png(mono1)
    else:  # a properly inverted copy reads like the original
        np.testing.assert_allclose(mono1, siim, atol=1 / 255)

    # A real MONOCHROME1 film (stored values inverted) reads exactly like the SIIM original.
    ds = pydicom.dcmread(siim_path)
    ds.decompress()
    ds.set_pixel_data((255 - raw_siim).astype(np.uint8), "MONOCHROME1", 8)
    inverted_store = save_dcm(ds, tmp_path / "real_monochrome1.dcm")
    again, meta2 = read_image(inverted_store)
    np.testing.assert_allclose(again, siim, atol=1e-6)
    assert meta2.photometric == "MONOCHROME1" and _looks_like_chest_png(again)


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
