"""The compressed frame's own header, read from its bytes and checked before any decoder runs.

Rows/Columns of a DICOM are checked against the pixel limit from its header, but a decoder
allocates what the *codestream* declares: a 126 KB file whose JPEG frame header says
20000 x 20000 makes the decoder allocate gigabytes. So the first frame's header is parsed
here, without decoding: JPEG (SOF0..SOF15), JPEG-LS (SOF55), JPEG 2000 and HTJ2K (SIZ, raw
or inside a JP2 wrapper), RLE (the segment table, and each segment's decoded length walked
run by run, stopping as soon as it exceeds one plane). The declared size must equal Rows x
Columns and pass the pixel limit; otherwise the file is refused with an ImageReadError that
says so. Only the first frame is checked: it is the only one the reader decodes.

A Deflated Explicit VR Little Endian file is inflated whole by pydicom as soon as it is
opened (even for its header), so ``check_deflated`` first counts what it inflates to, in
1 MiB steps without keeping the output, and refuses more than a radiograph's data can be.
"""

from __future__ import annotations

import struct
import zlib
from io import BytesIO
from pathlib import Path

from cxrdx.errors import ImageReadError

HEADER_BYTES = 1 << 20  # the frame header lies in the first MiB (APPn segments are at most 64 KiB each)
MAX_COMPONENTS = 4
MAX_TILES = 65535  # JPEG 2000's Isot is 16 bits: no codestream has more tiles
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}  # F7: JPEG-LS
JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: no length field


def check_frame_header(path: Path, ds, tsuid, max_pixels: int) -> None:
    """Refuse a compressed first frame whose own header disagrees with Rows/Columns or the limit."""
    from pydicom.uid import (
        JPEG2000TransferSyntaxes,
        JPEGLSTransferSyntaxes,
        JPEGTransferSyntaxes,
        RLELossless,
    )

    if tsuid in JPEGTransferSyntaxes or tsuid in JPEGLSTransferSyntaxes:
        kind, reader = ("JPEG-LS" if tsuid in JPEGLSTransferSyntaxes else "JPEG"), _jpeg_size
    elif tsuid in JPEG2000TransferSyntaxes:
        kind, reader = "JPEG 2000", _j2k_size
    elif tsuid == RLELossless:
        kind, reader = "RLE", None
    else:
        return
    data = ds.get("PixelData")
    if not isinstance(data, bytes | bytearray) or not data:
        return  # no encapsulated pixel data: the reader says so
    rows, cols = int(ds.Rows), int(ds.Columns)
    head = _first_fragments(path, bytes(data), kind, whole=reader is None)
    if reader is None:  # RLE: a frame is exactly one fragment (PS3.5 A.4.2), read whole
        _check_rle(path, head, rows * cols, _segments_expected(ds))
        return
    try:
        height, width, components = reader(head)
    except (ValueError, struct.error, IndexError) as exc:
        raise ImageReadError(
            path, f"corrupt {kind} pixel data: {exc}; the frame header cannot be read, so it is not decoded"
        ) from exc
    size = f"{width}x{height}"
    if height * width > max_pixels:
        raise ImageReadError(
            path,
            f"too large: the {kind} frame header declares {size} = {height * width:,} pixels (width x height), "
            f"over the limit of {max_pixels:,}, while the DICOM header says {cols}x{rows}: refused before "
            "decoding (this looks like a decompression bomb)",
        )
    if (height, width) != (rows, cols):
        raise ImageReadError(
            path,
            f"the {kind} frame header declares {size} pixels (width x height) but the DICOM header says "
            f"{cols}x{rows} (Columns x Rows): refused before decoding (a decompression bomb or a broken "
            "file); re-export the image from its source",
        )
    if components > MAX_COMPONENTS:
        raise ImageReadError(
            path, f"the {kind} frame header declares {components} components (at most {MAX_COMPONENTS})"
        )


def _first_fragments(path: Path, data: bytes, kind: str, whole: bool) -> bytes:
    """The start of the first frame: fragments joined up to HEADER_BYTES, or (``whole``) the first fragment."""
    from pydicom.encaps import generate_fragments, parse_basic_offsets

    buf = BytesIO(data)
    parts: list[bytes] = []
    try:
        parse_basic_offsets(buf)
        for fragment in generate_fragments(buf):
            parts.append(fragment)
            if whole or sum(map(len, parts)) >= HEADER_BYTES:
                break
    except (ValueError, struct.error) as exc:
        raise ImageReadError(path, f"corrupt encapsulated {kind} pixel data: {exc}") from exc
    if not parts:
        raise ImageReadError(path, f"the encapsulated {kind} pixel data holds no fragment: nothing to decode")
    return b"".join(parts)


def _jpeg_size(data: bytes) -> tuple[int, int, int]:
    """(height, width, components) from the first SOFn (or JPEG-LS SOF55) segment."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("no JPEG start-of-image marker")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"no JPEG marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):
            raise ValueError("the image data starts before any frame header (SOF)")
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in JPEG_SOF:
            _, height, width, components = struct.unpack(">BHHB", data[pos + 4 : pos + 10])
            if height == 0:
                raise ValueError("frame height 0 (defined later by a DNL marker) is not supported")
            return height, width, components
        if length < 2:
            raise ValueError(f"segment length {length} at byte {pos}")
        pos += 2 + length
    raise ValueError("no frame header (SOF) in the first MiB")


def _j2k_size(data: bytes) -> tuple[int, int, int]:
    """(height, width, components) from the SIZ segment of a JPEG 2000 / HTJ2K codestream."""
    at = 0 if data[:4] == b"\xff\x4f\xff\x51" else data.find(b"\xff\x4f\xff\x51")  # raw, or in a JP2 box
    if at < 0:
        raise ValueError("no JPEG 2000 codestream header (SOC + SIZ)")
    xsiz, ysiz, xo, yo, xt, yt, xto, yto, csiz = struct.unpack(">8IH", data[at + 8 : at + 42])
    if xsiz <= xo or ysiz <= yo or xt == 0 or yt == 0 or xto > xo or yto > yo:
        raise ValueError("the image or tile geometry in SIZ is impossible")
    tiles = -(-(xsiz - xto) // xt) * -(-(ysiz - yto) // yt)
    if tiles > MAX_TILES:
        raise ValueError(f"{tiles:,} tiles declared (a codestream holds at most {MAX_TILES:,})")
    return ysiz - yo, xsiz - xo, csiz


def _segments_expected(ds) -> int:
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    return samples * max(1, -(-int(ds.get("BitsAllocated", 8) or 8) // 8))


def _check_rle(path: Path, head: bytes, plane: int, expected: int) -> None:
    """The RLE header's segment count and offsets, and no segment decoding to much more than one plane.

    Padding past the plane is tolerated (the decoder warns and drops it) up to a second plane:
    a decoder holds one segment at a time, so memory stays bounded.
    """
    if len(head) < 64:
        raise ImageReadError(path, f"corrupt RLE pixel data: the header is {len(head)} bytes, not 64")
    count, *offsets = struct.unpack("<16I", head[:64])
    offsets = offsets[:count] if 0 < count <= 15 else []
    if count != expected or not offsets or offsets[0] != 64 or sorted(set(offsets)) != offsets:
        raise ImageReadError(
            path,
            f"corrupt RLE pixel data: {count} segments declared at offsets {offsets[:4]}..., "
            f"{expected} expected (Samples per Pixel x bytes per sample) from offset 64, increasing",
        )
    if offsets[-1] >= len(head):
        raise ImageReadError(
            path, f"corrupt RLE pixel data: segment offset {offsets[-1]} is past the frame's end"
        )
    limit = 2 * plane + 128
    for start, end in zip(offsets, [*offsets[1:], len(head)], strict=True):
        if _rle_length(head, start, end, limit) > limit:
            raise ImageReadError(
                path,
                f"an RLE segment decodes to more than twice one plane of Rows x Columns ({plane:,} bytes): "
                "refused before decoding (a decompression bomb or a broken file)",
            )


def _rle_length(data: bytes, pos: int, end: int, limit: int) -> int:
    """Bytes the PackBits segment data[pos:end] decodes to, counted up to just past ``limit``."""
    n = 0
    while pos < end and n <= limit:
        header = data[pos]
        if header < 128:  # copy the next header + 1 bytes
            n += header + 1
            pos += header + 2
        elif header > 128:  # repeat the next byte 257 - header times
            n += 257 - header
            pos += 2
        else:
            pos += 1
    return n


DEFLATED = "1.2.840.10008.1.2.1.99"
DEFLATE_HEADROOM = 16 << 20  # the header elements beside the pixels


def check_deflated(path: Path, max_pixels: int) -> None:
    """Refuse a deflated data set that inflates to more than ``max_pixels`` 32-bit samples (+ 16 MiB)."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError:
        return  # the reader says why
    with fh:
        head = fh.read(132 + 12)
        if head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
            return  # no Part 10 meta with its group length: pydicom reads it as it can
        (meta_len,) = struct.unpack("<I", head[140:144])
        meta = fh.read(meta_len)
        if DEFLATED.encode() not in meta:
            return
        limit = 4 * max_pixels + DEFLATE_HEADROOM
        inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while chunk := fh.read(1 << 20):
            while chunk:
                try:
                    total += len(inflater.decompress(chunk, 1 << 20))
                except zlib.error as exc:
                    raise ImageReadError(path, f"corrupt deflated DICOM data set: {exc}") from exc
                chunk = inflater.unconsumed_tail
                if total > limit:
                    raise ImageReadError(
                        path,
                        f"too large: the deflated data set inflates to more than {limit >> 20:,} MiB, more "
                        f"than {max_pixels:,} pixels can fill: refused before reading (a decompression bomb?)",
                    )
