"""What a file is, from its first bytes: the content decides, not the suffix.

Used for clearer errors: a corrupt PNG is called a corrupt PNG, and a file that is not
an image says what it looks like (text, HTML, PDF, ZIP ...), so the user knows what went wrong.
"""

from __future__ import annotations

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sniff_image(head: bytes) -> str | None:
    """The image format a file's first bytes announce, if any (for clearer errors)."""
    if head.startswith(PNG_SIGNATURE):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or head[:4] == b"\xff\x4f\xff\x51":
        return "JPEG 2000"
    return None


def describe_non_image(head: bytes) -> str:
    """A short guess at what a non-image file is, so the user knows what went wrong."""
    low = head[:512].lstrip().lower()
    if head.startswith(b"%PDF"):
        return "it looks like a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "it looks like a ZIP archive: extract it first"
    if head.startswith(b"\x1f\x8b"):
        return "it looks like a gzip-compressed file: decompress it first"
    if head.startswith(b"\x93NUMPY"):
        return "it looks like a NumPy .npy file: load it with numpy and pass the array"
    if low.startswith((b"<!doctype html", b"<html")) or b"<html" in low[:200]:
        return "it looks like an HTML page (a failed download or a login page?)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text[:-4]):
        return "it looks like a text file"
    return "unrecognised binary content"
