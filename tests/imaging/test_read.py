"""cxrdx.imaging.read: every still image a user may have is read the same way, every bad one is refused clearly."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from corpus.bad_inputs import chest, dicom_dataset, make_corpus, png_bomb
from PIL import Image, ImageFile
from testkit import jpeg_bytes, looks_like_chest, png_bytes

from cxrdx.errors import ImageReadError
from cxrdx.imaging.read import ImageMeta, image_to_uint8, read_image

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


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
@pytest.mark.parametrize("kind", ["png", "jpg"])
def test_truncated_files_refused_not_half_loaded(tmp_path, kind, cut):
    data = png_bytes(G) if kind == "png" else jpeg_bytes(G)
    path = tmp_path / f"cut.{kind}"
    path.write_bytes(data[: int(len(data) * cut)])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(path)


def test_png_crc_checked(tmp_path):
    data = bytearray(png_bytes(G))
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
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000  # the timing is benchmarks/read_guard_speed.py
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


# --------------------------------------------------------------------------- real data


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
        chest_like += looks_like_chest(img)
        total += img
        if meta.photometric == "RGBA":  # R = G = B: the gray is the red channel exactly
            red = np.asarray(Image.open(path))[..., 0]
            np.testing.assert_allclose(img, red / 255, atol=1e-6)
            assert meta.warnings == []
    assert photometric.count("RGBA") == 2 and photometric.count("MONOCHROME2") == 198
    assert chest_like >= 180  # a few films with effusions or odd positioning do not fit the rule
    assert looks_like_chest(total / len(paths))
    assert looks_like_chest(read_image(shared_data / "nih" / "images" / "00000100_000.png")[0])
