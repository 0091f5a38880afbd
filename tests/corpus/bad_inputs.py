"""A small corpus of good, odd and broken image files, with the outcome each must have.

``make_corpus(dir)`` writes every file (a few KB each; the decompression bombs are
crafted headers) and returns ``Case`` records. ``test_io`` runs them through
``cxrdx.imaging.read.read_image``; the CLI and web-app reliability tests reuse the same list:
an "ok" case must be read (and carry the warning in ``message`` when one is given),
an "error" case must be refused with a message containing ``message``
(case-insensitive) and never with a traceback.

Only Pillow, numpy and pydicom are used, so this module does not depend on cxrdx.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

SIZE = 64  # every readable image is 64x64 unless a case says otherwise


@dataclass(frozen=True)
class Case:
    """One input file and what reading it must do."""

    name: str
    path: Path
    expect: Literal["ok", "error"]
    message: str = ""  # error: substring of the error; ok: substring of a warning ("" = none needed)
    shape: tuple[int, int] | None = (SIZE, SIZE)  # ok: expected (h, w) of the result
    note: str = ""


def chest(h: int = SIZE, w: int = SIZE) -> np.ndarray:
    """A smooth uint8 chest-like pattern: dark lungs either side of a bright spine, bright edges."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.full((h, w), 150.0)
    for cx in (0.3 * w, 0.7 * w):
        d = ((x - cx) / (0.16 * w)) ** 2 + ((y - 0.5 * h) / (0.33 * h)) ** 2
        img -= 110.0 * np.exp(-(d**2))
    img += 90.0 * np.exp(-(((x - 0.5 * w) / (0.06 * w)) ** 2))
    img += 20.0 * y / h
    return np.clip(img, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- PNG crafting


def png_chunk(ctype: bytes, data: bytes, crc: int | None = None) -> bytes:
    if crc is None:
        crc = zlib.crc32(ctype + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", crc)


def png_bomb(width: int, height: int) -> bytes:
    """A valid-looking 8-bit gray PNG header declaring width x height, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + png_chunk(b"IEND", b"")
    )


def _png_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def _jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def _chunk_offset(png: bytes, ctype: bytes) -> int:
    """Byte offset of a chunk's length field."""
    return png.index(ctype) - 4


def _jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """Patch the SOF0 marker of a baseline JPEG to declare another size."""
    i = jpeg.index(b"\xff\xc0")
    return jpeg[: i + 5] + struct.pack(">HH", height, width) + jpeg[i + 9 :]


# --------------------------------------------------------------------------- DICOM crafting


def dicom_dataset(
    arr: np.ndarray | None,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    modality: str = "DX",
    view: str | None = "PA",
    **attrs,
):
    """A DX For Presentation dataset (Explicit VR LE) holding ``arr``; attrs set extra elements."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = "corpus"
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    if view is not None:
        ds.ViewPosition = view
    if arr is not None:
        ds.set_pixel_data(arr, photometric, bits_stored or arr.dtype.itemsize * 8)
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def _save_dicom(ds, path: Path) -> None:
    ds.save_as(path, enforce_file_format=True)


def _dicom_encapsulated(frame: bytes, tsuid, rows: int, cols: int, bits: int = 8):
    from pydicom.encaps import encapsulate

    ds = dicom_dataset(None)
    ds.file_meta.TransferSyntaxUID = tsuid
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


# --------------------------------------------------------------------------- the corpus


def make_corpus(directory: str | Path) -> list[Case]:
    """Write every corpus file into ``directory`` and return the cases (about 60 files, < 1 MB)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    g = chest()
    g16 = g.astype(np.uint16) * 16  # 12-bit content
    rgb = np.repeat(g[..., None], 3, axis=2)

    def add(name: str, data: bytes | Callable[[Path], None] | None, expect, message="", **kw) -> None:
        path = d / name
        if isinstance(data, bytes):
            path.write_bytes(data)
        elif data is not None:
            data(path)
        cases.append(Case(name, path, expect, message, **kw))

    # ---- readable stills
    png = _png_bytes(Image.fromarray(g))
    add("gray8.png", png, "ok")
    add("gray16.png", _png_bytes(Image.fromarray(g16)), "ok", note="12-bit values in a 16-bit PNG")
    add("rgb.png", _png_bytes(Image.fromarray(rgb)), "ok")
    rgba = np.dstack([rgb, np.full_like(g, 255)])
    add("rgba.png", _png_bytes(Image.fromarray(rgba)), "ok", note="like the 2 RGBA NIH PNGs")
    add("gray_alpha.png", _png_bytes(Image.fromarray(np.dstack([g, g // 2])).convert("LA")), "ok")
    add("palette.png", _png_bytes(Image.fromarray(g).convert("P")), "ok")
    add("bilevel.png", _png_bytes(Image.fromarray(g > 128)), "ok")
    colour = np.dstack([g, np.roll(g, 20, axis=1), 255 - g])
    add("colour_photo.png", _png_bytes(Image.fromarray(colour)), "ok", "colour image")
    add("gray.jpg", _jpeg_bytes(Image.fromarray(g)), "ok")
    add("cmyk.jpg", _jpeg_bytes(Image.fromarray(g).convert("CMYK")), "ok")
    tall = chest(SIZE, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    add(
        "exif_rotated.jpg",
        _jpeg_bytes(Image.fromarray(tall), exif=exif.tobytes()),
        "ok",
        "EXIF orientation",
        shape=(48, SIZE),
        note="stored 48 wide x 64 high, displayed 64 wide x 48 high",
    )
    add("gray.tif", lambda p: Image.fromarray(g).save(p, "TIFF", compression="tiff_deflate"), "ok")
    add("gray16.tiff", lambda p: Image.fromarray(g16).save(p, "TIFF"), "ok")
    add("gray.bmp", lambda p: Image.fromarray(g).save(p, "BMP"), "ok")
    add("single_frame.gif", lambda p: Image.fromarray(g).save(p, "GIF"), "ok")
    add("chest x-ray ü 胸部 (1).png", png, "ok", note="spaces, unicode and brackets in the name")
    add("UPPER.PNG", png, "ok")
    add("really_a_png.dcm", png, "ok", "named .dcm")

    # ---- refused stills
    add("missing.png", None, "error", "not found", shape=None)
    (d / "a_folder.png").mkdir(exist_ok=True)
    cases.append(Case("a_folder.png", d / "a_folder.png", "error", "folder", None))
    add("empty.png", b"", "error", "empty", shape=None)
    add("text.png", b"Patient ID,Finding Labels\n1,Effusion\n" * 20, "error", "text file", shape=None)
    add(
        "login_page.jpg",
        b"<!DOCTYPE html>\n<html><body>Please log in</body></html>\n",
        "error",
        "HTML",
        shape=None,
    )
    add("archive.png", b"PK\x03\x04" + b"\x00" * 200, "error", "ZIP", shape=None)
    add("report.png", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + b"\x00" * 100, "error", "PDF", shape=None)
    add("random_bytes.jpg", np.random.default_rng(0).bytes(300), "error", "not an image", shape=None)
    add("truncated.png", png[: len(png) // 2], "error", "truncated", shape=None)
    jpg = _jpeg_bytes(Image.fromarray(g))
    add("truncated.jpg", jpg[: len(jpg) // 2], "error", "truncated", shape=None)
    add(
        "no_eoi.jpg",
        jpg[:-2],
        "error",
        "truncated",
        shape=None,
        note="only the end-of-image marker is missing",
    )
    i = _chunk_offset(png, b"IDAT")
    length = struct.unpack(">I", png[i : i + 4])[0]
    crc_at = i + 8 + length
    bad_crc = png[:crc_at] + bytes([png[crc_at] ^ 0xFF]) + png[crc_at + 1 :]
    add("bad_idat_crc.png", bad_crc, "error", "CRC", shape=None, note="Pillow alone would load it")
    j = _chunk_offset(png, b"IHDR")
    bad_ihdr = bytearray(png)
    bad_ihdr[j + 8 + 13] ^= 0xFF
    add("bad_ihdr_crc.png", bytes(bad_ihdr), "error", "CRC", shape=None)
    raw = zlib.decompress(png[i + 8 : i + 8 + length])
    stream = bytearray(zlib.compress(raw))
    stream[len(stream) // 2 : len(stream) // 2 + 8] = b"\xff" * 8  # garbage inside the deflate data
    broken = bytes(stream)  # ... wrapped in a chunk with a valid CRC
    bad_zlib = png[:i] + png_chunk(b"IDAT", broken) + png[crc_at + 4 :]
    add("broken_zlib.png", bad_zlib, "error", "corrupt", shape=None)
    add("bomb_100000x100000.png", png_bomb(100_000, 100_000), "error", "too large", shape=None)
    add(
        "bomb_8000x8000.png",
        png_bomb(8000, 8000),
        "error",
        "too large",
        shape=None,
        note="64 Mpx: under Pillow's limit",
    )
    add("bomb_60000x60000.jpg", _jpeg_with_size(jpg, 60_000, 60_000), "error", "too large", shape=None)
    add("tiny_1x1.png", _png_bytes(Image.new("L", (1, 1), 128)), "error", "too small", shape=None)
    add("strip_4000x20.png", _png_bytes(Image.new("L", (4000, 20), 128)), "error", "aspect", shape=None)
    frames = [Image.fromarray(g), Image.fromarray(255 - g), Image.fromarray(g // 2)]
    add(
        "animated.gif",
        lambda p: frames[0].save(p, "GIF", save_all=True, append_images=frames[1:]),
        "error",
        "multi-frame",
        shape=None,
    )
    add(
        "multipage.tif",
        lambda p: frames[0].save(p, "TIFF", save_all=True, append_images=frames[1:]),
        "error",
        "multi-frame",
        shape=None,
    )
    add(
        "animated.png",
        lambda p: frames[0].save(p, "PNG", save_all=True, append_images=frames[1:]),
        "error",
        "multi-frame",
        shape=None,
    )

    # ---- DICOM, readable
    from pydicom.uid import MPEG2MPML, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

    add("mono2.dcm", lambda p: _save_dicom(dicom_dataset(g16, bits_stored=12), p), "ok")
    add(
        "mono1.dcm",
        lambda p: _save_dicom(dicom_dataset((4095 - g16).astype(np.uint16), "MONOCHROME1", 12), p),
        "ok",
        note="inverted storage; must read like mono2.dcm",
    )
    add(
        "rescale_window.dcm",
        lambda p: _save_dicom(
            dicom_dataset(
                g16, bits_stored=12, RescaleSlope=2, RescaleIntercept=-2000, WindowCenter=0, WindowWidth=4000
            ),
            p,
        ),
        "ok",
    )
    signed = (g16.astype(np.int16) - 2048).astype(np.int16)
    add("signed16.dcm", lambda p: _save_dicom(dicom_dataset(signed, bits_stored=16), p), "ok")

    def compressed(tsuid) -> Callable[[Path], None]:
        def write(p: Path) -> None:
            ds = dicom_dataset(g16, bits_stored=12)
            ds.compress(tsuid)
            _save_dicom(ds, p)

        return write

    add("rle.dcm", compressed(RLELossless), "ok")
    add("jpeg2000.dcm", compressed(JPEG2000Lossless), "ok")
    add(
        "jpeg_baseline.dcm",
        lambda p: _save_dicom(_dicom_encapsulated(jpg, JPEGBaseline8Bit, SIZE, SIZE), p),
        "ok",
    )

    def no_preamble(p: Path) -> None:
        from pydicom.uid import ImplicitVRLittleEndian

        ds = dicom_dataset(g16, bits_stored=12)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        del ds.file_meta
        ds.save_as(p, implicit_vr=True, little_endian=True)

    add("acr_nema_no_preamble.dcm", no_preamble, "ok", note="no 128-byte preamble, no file meta")
    add(
        "IM000001",
        lambda p: _save_dicom(dicom_dataset(g16, bits_stored=12), p),
        "ok",
        note="extensionless DICOM",
    )
    add(
        "multiframe.dcm",
        lambda p: _save_dicom(dicom_dataset(np.stack([g16, g16 // 2]), bits_stored=12), p),
        "ok",
        "first frame",
    )
    add(
        "ct_modality.dcm",
        lambda p: _save_dicom(dicom_dataset(g16, bits_stored=12, modality="CT"), p),
        "ok",
        "modality",
    )
    add(
        "lateral.dcm",
        lambda p: _save_dicom(dicom_dataset(g16, bits_stored=12, view="LL"), p),
        "ok",
        "lateral",
    )
    add("rgb.dcm", lambda p: _save_dicom(dicom_dataset(rgb, "RGB", 8), p), "ok")

    # ---- DICOM, refused
    def structured_report(p: Path) -> None:
        import pydicom

        ds = dicom_dataset(None, modality="SR", view=None)
        ds.SOPClassUID = pydicom.uid.BasicTextSRStorage
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.ContentDate = "20240101"
        _save_dicom(ds, p)

    add("structured_report.dcm", structured_report, "error", "no pixel data", shape=None)
    add(
        "dx_without_pixels.dcm",
        lambda p: _save_dicom(dicom_dataset(None), p),
        "error",
        "no pixel data",
        shape=None,
        note="an image SOP class (DX) whose pixel data element is absent",
    )

    def declared_ts(uid: str) -> Callable[[Path], None]:
        def write(p: Path) -> None:
            ds = _dicom_encapsulated(b"\x00\x00\x01\xb3" + b"\x00" * 60, uid, SIZE, SIZE)
            ds.save_as(p, enforce_file_format=True, implicit_vr=False, little_endian=True)

        return write

    add("mpeg2.dcm", declared_ts(MPEG2MPML), "error", "transfer syntax", shape=None)
    add(
        "private_syntax.dcm",
        declared_ts("1.2.826.0.1.3680043.9.9999.1"),
        "error",
        "transfer syntax",
        shape=None,
    )
    full = io.BytesIO()
    dicom_dataset(g16, bits_stored=12).save_as(full, enforce_file_format=True)
    add("truncated.dcm", full.getvalue()[:-3000], "error", "pixel data", shape=None)

    def dicom_bomb(p: Path) -> None:
        ds = dicom_dataset(None)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = 65535, 65535
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = b"\x00" * 64
        _save_dicom(ds, p)

    add("bomb_65535x65535.dcm", dicom_bomb, "error", "too large", shape=None)
    add(
        "tiny.dcm",
        lambda p: _save_dicom(dicom_dataset(np.zeros((8, 8), np.uint16), bits_stored=12), p),
        "error",
        "too small",
        shape=None,
    )
    add(
        "not_dicom.dcm",
        b"this is not a DICOM file, just some notes\n" * 10,
        "error",
        "not a DICOM",
        shape=None,
    )
    from corpus.codestream_bombs import codestream_cases  # compressed frames whose own header lies

    cases += codestream_cases(d)
    return cases


# --------------------------------------------------------------------------- folders and label tables


@dataclass(frozen=True)
class FolderCase:
    """A folder to scan: how many images a (recursive) scan must find in it."""

    name: str
    path: Path
    images: int
    note: str = ""


def make_folders(directory: str | Path) -> list[FolderCase]:
    """An empty folder, a folder of non-images, and a folder whose subfolder links back to itself."""
    d = Path(directory)
    empty = d / "empty folder"
    empty.mkdir(parents=True, exist_ok=True)
    junk = d / "no_images"
    junk.mkdir(exist_ok=True)
    (junk / "notes.txt").write_text("not an image\n")
    (junk / ".hidden.png").write_bytes(_png_bytes(Image.fromarray(chest())))
    loop = d / "loop"
    (loop / "sub").mkdir(parents=True, exist_ok=True)
    (loop / "sub" / "x.png").write_bytes(_png_bytes(Image.fromarray(chest())))
    for link, target in ((loop / "sub" / "back", ".."), (loop / "self", ".")):
        if not link.is_symlink():
            link.symlink_to(target)
    return [
        FolderCase("empty folder", empty, 0),
        FolderCase("no_images", junk, 0, "a text file and a hidden PNG only"),
        FolderCase("loop", loop, 1, "sub/back -> .. and self -> . : a symlink loop"),
    ]


@dataclass(frozen=True)
class TableCase:
    """A label CSV (generic 0/1 format) over ``images``; ``message`` must appear in the refusal."""

    name: str
    path: Path
    images: Path
    expect: Literal["ok", "error"]
    message: str = ""


def make_tables(directory: str | Path) -> list[TableCase]:
    """Good and broken label tables over a folder of 4 small chest images (one listed but absent)."""
    d = Path(directory)
    images = d / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        Image.fromarray(np.roll(chest(), 3 * i, axis=1)).save(images / f"img{i}.png")
    findings = [
        "Atelectasis",
        "Cardiomegaly",
        "Effusion",
        "Infiltration",
        "Mass",
        "Nodule",
        "Pneumonia",
        "Pneumothorax",
        "Consolidation",
        "Edema",
        "Emphysema",
        "Fibrosis",
        "Pleural_Thickening",
        "Hernia",
    ]
    header = ["image", "patient", "view", *findings]

    def row(i: int, name: str | None = None, value: str = "0") -> list[str]:
        return [name or f"img{i}.png", f"p{i}", "PA", value, *(["0"] * (len(findings) - 1))]

    def write(name: str, head: list[str], rows: list[list[str]]) -> Path:
        path = d / name
        path.write_text("\n".join(",".join(r) for r in [head, *rows]) + "\n", encoding="utf-8")
        return path

    good = [row(i, value=str(i % 2)) for i in range(4)]
    cases = [
        TableCase("good", write("good.csv", header, good), images, "ok"),
        TableCase(
            "missing_columns",
            write("missing_columns.csv", header[:1] + header[3:], [[r[0], *r[3:]] for r in good]),
            images,
            "error",
            "patient column",
        ),
        TableCase(  # partial labels: a table labels any subset of findings (Hernia: unlabelled, not negative)
            "missing_finding_column",
            write("missing_finding_column.csv", header[:-1], [r[:-1] for r in good]),
            images,
            "ok",
        ),
        TableCase(
            "duplicate_ids",
            write("duplicate_ids.csv", header, [*good, row(1)]),
            images,
            "error",
            "more than once",
        ),
        TableCase(
            "label_2",
            write("label_2.csv", header, [*good[:3], row(3, value="2")]),
            images,
            "error",
            "not 1, 0, -1 or blank",
        ),
        TableCase(  # -1 is an uncertain label (CheXpert's convention), handled by --uncertain
            "label_minus_1",
            write("label_minus_1.csv", header, [*good[:3], row(3, value="-1")]),
            images,
            "ok",
        ),
        TableCase(
            "unknown_finding",
            write(
                "unknown_finding.csv",
                ["Image Index", "Finding Labels", "Patient ID"],
                [["img0.png", "Effusion", "1"], ["img1.png", "Covid-19|Mass", "2"]],
            ),
            images,
            "error",
            "Covid-19",
        ),
        TableCase("header_only", write("header_only.csv", header, []), images, "error", "no rows"),
        TableCase(
            "image_missing_on_disk",
            write("image_missing_on_disk.csv", header, [*good, row(9, "absent.png")]),
            images,
            "ok",
            "absent.png",
        ),
    ]
    return cases
