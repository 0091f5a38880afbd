"""Compressed DICOMs whose codestream's own header lies about the size (issue 28, item 2).

Each is a small valid DICOM (Rows/Columns 64x64, well under every limit) whose first frame's
header declares something else: a JPEG SOF, a JPEG-LS SOF55 or a JPEG 2000 SIZ of 20000 x
20000 (or 60000 x 60000), a SIZ with millions of 1-pixel tiles, an RLE segment that expands to
megabytes, an RLE header with the wrong segment count. A decoder trusting them allocates
gigabytes; the reader must refuse them from the header. Only Pillow, numpy and pydicom.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 64


def jpeg_with_size(jpeg: bytes, width: int, height: int, marker: bytes = b"\xff\xc0") -> bytes:
    """Patch the first frame header (SOF0 by default, b"\\xff\\xf7" for JPEG-LS) to declare another size."""
    i = jpeg.index(marker)
    return jpeg[: i + 5] + struct.pack(">HH", height, width) + jpeg[i + 9 :]


def j2k_with_size(j2k: bytes, width: int, height: int, tile: int | None = None) -> bytes:
    """Patch a JPEG 2000 codestream's SIZ: image size (and tile size) as given, offsets 0."""
    i = j2k.index(b"\xff\x4f\xff\x51")
    xt = yt = tile if tile is not None else max(width, height)
    siz = struct.pack(">8I", width, height, 0, 0, xt, yt, 0, 0)
    return j2k[: i + 8] + siz + j2k[i + 40 :]


def rle_bomb(plane: int, segment_bytes: int) -> bytes:
    """One RLE segment of ``segment_bytes`` made of 128-byte runs: about 64x that when decoded."""
    runs = b"\x81\x00" * (segment_bytes // 2)
    return struct.pack("<16I", 1, 64, *[0] * 14) + runs


def gray_jpeg(size: int = SIZE) -> bytes:
    from corpus.bad_inputs import chest

    buf = io.BytesIO()
    Image.fromarray(chest(size, size)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def compressed_frame(tsuid, size: int = SIZE) -> bytes:
    """A real frame of ``tsuid`` (pydicom's encoders) for a 64x64 12-bit image."""
    from pydicom.encaps import generate_frames

    from corpus.bad_inputs import chest, dicom_dataset

    ds = dicom_dataset(chest(size, size).astype(np.uint16) * 16, bits_stored=12)
    ds.compress(tsuid)
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def dicom_with_frame(
    path: Path, frame: bytes, tsuid, bits: int = 8, rows: int = SIZE, cols: int = SIZE
) -> None:
    from corpus.bad_inputs import _dicom_encapsulated

    _dicom_encapsulated(frame, tsuid, rows, cols, bits).save_as(path, enforce_file_format=True)


def codestream_cases(directory: Path) -> list:
    """The corpus cases: every file is 64x64 by its DICOM header and refused from its codestream."""
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

    from corpus.bad_inputs import Case

    cases = []

    def add(name: str, write: Callable[[Path], None], message: str) -> None:
        path = directory / name
        write(path)
        cases.append(Case(name, path, "error", message, shape=None, note="codestream header lies (issue 28)"))

    jpg = gray_jpeg()
    for n in (20_000, 60_000):
        add(
            f"jpeg_sof_{n}x{n}.dcm",
            lambda p, n=n: dicom_with_frame(p, jpeg_with_size(jpg, n, n), JPEGBaseline8Bit),
            "too large",
        )
    add(
        "jpeg_sof_128x128.dcm",
        lambda p: dicom_with_frame(p, jpeg_with_size(jpg, 128, 128), JPEGBaseline8Bit),
        "frame header declares 128x128",
    )
    jls = compressed_frame(JPEGLSLossless)
    add(
        "jpegls_sof55_20000x20000.dcm",
        lambda p: dicom_with_frame(p, jpeg_with_size(jls, 20_000, 20_000, b"\xff\xf7"), JPEGLSLossless, 12),
        "too large",
    )
    j2k = compressed_frame(JPEG2000Lossless)
    add(
        "j2k_siz_20000x20000.dcm",
        lambda p: dicom_with_frame(p, j2k_with_size(j2k, 20_000, 20_000), JPEG2000Lossless, 12),
        "too large",
    )
    add(
        "j2k_siz_1px_tiles.dcm",
        lambda p: dicom_with_frame(p, j2k_with_size(j2k, 4000, 4000, tile=1), JPEG2000Lossless, 12),
        "tiles",
    )
    add(
        "rle_segment_bomb.dcm",
        lambda p: dicom_with_frame(p, rle_bomb(SIZE * SIZE, 12_000), RLELossless),
        "RLE segment decodes to more",
    )
    add(
        "rle_wrong_segments.dcm",
        lambda p: dicom_with_frame(
            p, struct.pack("<16I", 15, *range(64, 64 * 16, 64)) + b"\x00" * 2048, RLELossless
        ),
        "segments",
    )
    return cases


def deflate_bomb(path: Path, inflated_bytes: int) -> None:
    """A Deflated Explicit VR LE DICOM (64x64 by its header) whose pixel data inflates to ``inflated_bytes``.

    Written in 1 MiB steps, so making it costs no memory; the file is about 1/1000 of that.
    """
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from corpus.bad_inputs import dicom_dataset

    ds = dicom_dataset(None)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", SIZE, SIZE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as fh:
        fh.write(b"\0" * 128 + b"DICM" + meta.getvalue())
        fh.write(
            packer.compress(
                body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, inflated_bytes)
            )
        )
        zeros = bytes(1 << 20)
        for start in range(0, inflated_bytes, 1 << 20):
            fh.write(packer.compress(zeros[: min(1 << 20, inflated_bytes - start)]))
        fh.write(packer.flush())
