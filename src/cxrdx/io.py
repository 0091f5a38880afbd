"""Reading any chest X-ray file a user has into one gray float image.

``read_image`` returns a float32 2-D array in [0, 1] with the radiological
convention *bright = dense* (bone white, lungs dark) plus an ``ImageMeta``. Every
failure is an ``ImageReadError`` that names the file and the problem; no raw
Pillow/pydicom/OS exception escapes for a bad file.

Decisions (why):

- **Formats.** PNG, JPEG, BMP, TIFF and any other *still* image Pillow opens, the
  DICOM files pydicom decodes (uncompressed, RLE, JPEG baseline/extended, JPEG
  lossless and JPEG-LS through pylibjpeg-libjpeg, JPEG 2000 through
  pylibjpeg-openjpeg/Pillow) and numpy arrays / PIL images (Python API). The
  content decides, not the suffix: DICOM is the ``DICM`` marker at byte 128 (or a
  preamble-less ACR-NEMA style file whose first tag is group 0002/0008).
- **Gray conversion.** Colour (RGB, RGBA, palette, CMYK, YCbCr) becomes gray with
  the ITU-R 601 luma weights computed in float; alpha is ignored (2 of the NIH
  PNGs are RGBA with R = G = B, so they read exactly like the gray ones). A
  warning is added only when the channels really differ (a colour photo?).
- **Scaling.** 8-bit / 255, 16-bit / 65535, 1-bit as 0/1: a fixed scale keeps the
  stored contrast (a 12-bit image in a 16-bit PNG simply looks darker; it is not
  stretched). Floats already in [0, 1] are kept; anything else (32-bit int
  beyond 16 bits, floats out of range) is min-max normalised with a warning. A
  constant image gives a constant (or 0) image, never NaN.
- **DICOM.** Modality LUT (rescale slope/intercept) first, then the VOI LUT or the
  first Window Center/Width when present, scaled by the window's output range
  (what a viewer shows); without any VOI the image is min-max normalised
  (per-image windowing over the full stored range). MONOCHROME1 is inverted
  last. Multi-frame DICOM: the first frame is read, with a warning. Modality other
  than CR/DX/DR, a non-chest body part or a view other than PA/AP (lateral LL/RL,
  oblique, decubitus) is *accepted with a warning*: the model was trained on
  frontal chest radiographs and the result may not mean anything.
- **Refused before decoding** (declared size from the header, so nothing big is
  allocated): more than ``max_pixels`` pixels (default 50 M, about 7000 x 7000;
  Pillow's own decompression-bomb error becomes the same error), a shorter side
  under 16 px ("too small to be a radiograph"), an aspect ratio beyond 10:1.
- **Refused after opening:** multi-frame stills (animated GIF, multi-page TIFF,
  APNG; JPEG MPO files from phones read their first, primary picture), truncated
  files (Pillow's ``LOAD_TRUNCATED_IMAGES`` must stay at its default False), PNG
  chunks whose CRC does not match (Pillow does not check IDAT CRCs, so this
  module walks the chunks itself), empty files, non-images (says what the file
  looks like: text, HTML, PDF, ZIP ...), DICOMs without pixel data (structured
  reports) and transfer syntaxes no installed plugin decodes.
- **EXIF orientation** is applied (phone photos of films), with a warning.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxrdx.errors import ImageReadError

DEFAULT_MAX_PIXELS = 50_000_000
MIN_SIDE = 16
MAX_ASPECT = 10.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
CHEST_MODALITIES = ("CR", "DX", "DR")
FRONTAL_VIEWS = ("PA", "AP")
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L")
ARRAY_NAME = "<array>"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class ImageMeta:
    """Where an image came from and what was done to it (warnings are for the user)."""

    path: str | None
    format: str  # "PNG", "JPEG", "DICOM", "TIFF", "array", ...
    source_size: tuple[int, int]  # (height, width) of the returned image
    bit_depth: int
    photometric: str  # as stored: "MONOCHROME1/2", "RGB", "RGBA", "PALETTE COLOR", "CMYK", ...
    modality: str | None = None
    view: str | None = None
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- public API


def read_image(
    source: Any, max_pixels: int = DEFAULT_MAX_PIXELS, *, uint8_ok: bool = False
) -> tuple[np.ndarray, ImageMeta]:
    """Read a file (path), numpy array or PIL image as float32 HxW in [0, 1], bright = dense.

    ``uint8_ok``: an image whose every pixel is exactly v / 255 (an 8-bit gray file,
    a uint8 array, or the float image read_image made of either) comes back as its
    uint8 pixels v instead. ``Predictor`` uses it because the 1024 px float conversion
    and float resize cost about a quarter of the decode time, and the letterbox of a
    uint8 image is what the training cache stores anyway. The same pixels give the
    same array whichever form they arrive in, so a file and its array predict alike.
    """
    if isinstance(source, np.ndarray):
        image, meta = _read_array(source, max_pixels, uint8_ok)
        return (_exact_uint8(image) if uint8_ok else image), meta
    if isinstance(source, Image.Image):
        return _guard(ARRAY_NAME, lambda: _from_pil(source, ARRAY_NAME, None, max_pixels, "PIL"))
    if not isinstance(source, str | os.PathLike):
        raise ImageReadError(
            repr(source)[:80],
            f"cannot read an image from a {type(source).__name__}: pass a file path, a numpy array or a PIL image",
        )
    path = Path(source)
    image, meta = _guard(path, lambda: _read_path(path, max_pixels, uint8_ok))
    return (_exact_uint8(image) if uint8_ok else image), meta


def _exact_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 v when every pixel is exactly float32(v) / 255 (an 8-bit image as float), else unchanged."""
    if image.dtype == np.uint8 or image.dtype != np.float32:
        return image
    v = np.rint(image * np.float32(255.0))
    if not np.array_equal(v.astype(np.float32) / np.float32(255.0), image):
        return image
    return v.astype(np.uint8)


def find_images(paths: Iterable[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Expand files and folders into a sorted, de-duplicated list of image files.

    A file named explicitly is kept whatever its suffix (``read_image`` judges it). A
    folder contributes its files with an ``IMAGE_SUFFIXES`` suffix (any case) and
    extensionless files that start like a DICOM; hidden files and folders (``.x``,
    macOS ``._x.png``) are skipped. ``recursive`` descends into subfolders, following
    symlinks but never visiting a real folder twice (so symlink loops end). A path that
    does not exist raises ``ImageReadError``; a folder without images gives [] (see
    ``no_images_message``).
    """
    found: dict[str, Path] = {}

    def add(p: Path) -> None:
        key = os.path.realpath(p)
        if key not in found or str(p) < str(found[key]):
            found[key] = p

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in _walk_images(p, recursive):
                add(f)
        elif p.is_file():
            add(p)
        elif p.is_symlink():
            raise ImageReadError(
                p, f"broken symbolic link (points to {os.readlink(p)}, which does not exist)"
            )
        else:
            raise ImageReadError(p, "not found: no such file or folder: check the path")
    return sorted(found.values(), key=str)


def no_images_message(paths: Iterable[str | os.PathLike], recursive: bool = False) -> str:
    """What to tell a user when ``find_images`` returned nothing."""
    paths = [Path(p) for p in paths]
    names = ", ".join(str(p) for p in paths) or "(no paths given)"
    hint = ""
    if not recursive and any(p.is_dir() and any(c.is_dir() for c in _safe_iterdir(p)) for p in paths):
        hint = "; it has subfolders: search them with --recursive"
    return (
        f"no image files found in {names} (looked for {', '.join(IMAGE_SUFFIXES)} and "
        f"extensionless DICOM files){hint}"
    )


def image_to_uint8(img: np.ndarray) -> np.ndarray:
    """A [0, 1] float image as uint8 (round(img * 255)), for saving and display."""
    return np.round(np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file carries the DICOM Part 10 'DICM' marker at byte 128."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


# --------------------------------------------------------------------------- dispatch


def _guard(name: Any, fn) -> tuple[np.ndarray, ImageMeta]:
    """Run a reader; anything but our own error becomes an ImageReadError naming the file."""
    try:
        return fn()
    except ImageReadError:
        raise
    except MemoryError as exc:
        raise ImageReadError(
            name, "not enough memory to decode this image (is it really a radiograph?)"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageReadError(name, f"too large: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a bad file must never surface as a raw exception
        raise ImageReadError(name, f"cannot be decoded ({type(exc).__name__}: {exc})") from exc


def _read_path(path: Path, max_pixels: int, uint8_ok: bool = False) -> tuple[np.ndarray, ImageMeta]:
    if not path.exists():
        if path.is_symlink():
            raise ImageReadError(path, f"broken symbolic link (points to {os.readlink(path)})")
        raise ImageReadError(path, "file not found: check the path")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file: pass the image files in it instead")
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ImageReadError(path, "is not a regular file (a device, pipe or socket?)")
        if st.st_size == 0:
            raise ImageReadError(path, "empty file (0 bytes): the copy or download did not finish")
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except PermissionError as exc:
        raise ImageReadError(
            path, "permission denied: this file cannot be read (check its permissions)"
        ) from exc
    except ImageReadError:
        raise
    except OSError as exc:
        raise ImageReadError(path, f"cannot be opened: {exc.strerror or exc}") from exc

    if head[128:132] == b"DICM":
        return _read_dicom(path, max_pixels, force=False)
    kind = _sniff_image(head)
    if kind == "PNG":
        _check_png_chunks(path)
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, _too_large_pillow(exc)) from exc
    except (UnidentifiedImageError, SyntaxError, OSError, ValueError) as exc:
        if kind is not None:
            raise ImageReadError(path, f"corrupt {kind} file: {exc}") from exc
        if head[:2] in (b"\x02\x00", b"\x08\x00"):  # a DICOM without the 128-byte preamble
            return _read_dicom(path, max_pixels, force=True)
        what = _describe_non_image(head)
        if path.suffix.lower() in DICOM_SUFFIXES:
            raise ImageReadError(path, f"not a DICOM file: no 'DICM' marker at byte 128 ({what})") from exc
        raise ImageReadError(
            path, f"not an image file ({what}); readable formats: PNG, JPEG, BMP, TIFF, DICOM"
        ) from exc
    with im:
        out, meta = _from_pil(im, path, str(path), max_pixels, im.format or kind or "image", uint8_ok)
    if path.suffix.lower() in DICOM_SUFFIXES:
        meta.warnings.append(f"named {path.suffix} but is a {meta.format} file; read as {meta.format}")
    return out, meta


def _sniff_image(head: bytes) -> str | None:
    """The image format a file's first bytes announce, if any (for clearer errors)."""
    if head.startswith(_PNG_SIGNATURE):
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


def _describe_non_image(head: bytes) -> str:
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


def _check_dims(name: Any, height: int, width: int, max_pixels: int) -> None:
    """Refuse sizes that cannot be a radiograph, from the declared header size."""
    n = int(height) * int(width)
    size = f"{width}x{height} pixels (width x height)"
    if n > max_pixels:
        raise ImageReadError(
            name,
            f"too large: {size} = {n:,} pixels exceeds the limit of {max_pixels:,} "
            "(a chest radiograph is at most about 4300x4300); downsample it, or raise max_pixels "
            "if it is genuine",
        )
    if min(height, width) < MIN_SIDE:
        raise ImageReadError(
            name, f"too small to be a radiograph: {size}; the shorter side must be at least {MIN_SIDE} pixels"
        )
    aspect = max(height, width) / min(height, width)
    if aspect > MAX_ASPECT:
        raise ImageReadError(
            name,
            f"extreme aspect ratio {aspect:.0f}:1 ({size}); at most {MAX_ASPECT:.0f}:1 is accepted, "
            "so this is not a radiograph (a strip, a banner?)",
        )


def _too_large_pillow(exc: Exception) -> str:
    return f"too large: declared size refused before decoding ({exc}); this looks like a decompression bomb"


# --------------------------------------------------------------------------- PNG chunk check


def _check_png_chunks(path: Path) -> None:
    """Verify every PNG chunk's CRC and that the file reaches IEND (Pillow skips IDAT CRCs)."""
    with open(path, "rb") as fh:
        fh.seek(8)
        while True:
            pos = fh.tell()
            header = fh.read(8)
            if len(header) < 8:
                raise ImageReadError(
                    path,
                    f"truncated PNG: the file ends at byte {pos} before the IEND chunk; re-export or re-copy it",
                )
            length, ctype = struct.unpack(">I4s", header)
            if length > 2**31 - 1:
                raise ImageReadError(path, f"corrupt PNG: chunk at byte {pos} declares an impossible length")
            crc = zlib.crc32(ctype)
            remaining = length
            while remaining:
                block = fh.read(min(remaining, 1 << 20))
                if not block:
                    raise ImageReadError(
                        path,
                        f"truncated PNG: the file ends inside the {ctype.decode('latin-1')} chunk at byte {pos}; "
                        "re-export or re-copy it",
                    )
                crc = zlib.crc32(block, crc)
                remaining -= len(block)
            stored = fh.read(4)
            if len(stored) < 4:
                raise ImageReadError(path, f"truncated PNG: the file ends inside the chunk at byte {pos}")
            if struct.unpack(">I", stored)[0] != crc & 0xFFFFFFFF:
                raise ImageReadError(
                    path,
                    f"corrupt PNG: CRC checksum mismatch in the {ctype.decode('latin-1')} chunk at byte {pos} "
                    "(the file is damaged; re-export or re-copy it)",
                )
            if ctype == b"IEND":
                return


# --------------------------------------------------------------------------- Pillow


def _from_pil(
    im: Image.Image, name: Any, path: str | None, max_pixels: int, fmt: str, uint8_ok: bool = False
):
    """Pillow image (opened lazily) -> gray float, checking size before decoding anything."""
    width, height = im.size
    _check_dims(name, height, width, max_pixels)
    warnings: list[str] = []
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        if fmt == "MPO":  # phone JPEGs: frame 0 is the picture, the rest are previews/depth maps
            warnings.append(f"MPO JPEG with {frames} pictures: the first (primary) one was read")
        else:
            raise ImageReadError(name, f"multi-frame image ({frames} frames); export a single frame")
    try:
        im.load()
    except OSError as exc:
        msg = str(exc)
        if "truncated" in msg:
            raise ImageReadError(
                name, f"truncated {fmt} file ({msg}): the file is incomplete; re-export or re-copy it"
            ) from exc
        raise ImageReadError(name, f"corrupt {fmt} data: {msg}") from exc
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - malformed EXIF only loses the orientation
        orientation = 1
        warnings.append("EXIF data unreadable: orientation not applied")
    if orientation not in (1, None):
        transposed = ImageOps.exif_transpose(im)
        if transposed is not None:
            im = transposed
            warnings.append(
                f"EXIF orientation {orientation} applied (image rotated/flipped as a viewer shows it)"
            )
    gray, bit_depth, photometric = _pil_to_gray(im, name, warnings, uint8_ok)
    meta = ImageMeta(
        path=path,
        format=fmt,
        source_size=(int(gray.shape[0]), int(gray.shape[1])),
        bit_depth=bit_depth,
        photometric=photometric,
        warnings=warnings,
    )
    return gray, meta


_PHOTOMETRIC = {"RGB": "RGB", "RGBA": "RGBA", "RGBX": "RGB", "RGBa": "RGBA", "CMYK": "CMYK", "YCbCr": "YBR"}


def _pil_to_gray(
    im: Image.Image, name: Any, warnings: list[str], uint8_ok: bool = False
) -> tuple[np.ndarray, int, str]:
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float32), 1, "MONOCHROME2"
    if mode in ("L", "LA", "La"):
        band = im if mode == "L" else im.getchannel("L")
        if uint8_ok:
            return np.array(band, dtype=np.uint8), 8, "MONOCHROME2"
        return np.asarray(band, dtype=np.float32) / 255.0, 8, "MONOCHROME2"
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.float32) / 65535.0, 16, "MONOCHROME2"
    if mode == "I":
        arr = np.asarray(im)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.float32) / 65535.0, 16, "MONOCHROME2"
        return _minmax(arr, name, warnings, "32-bit values beyond 16 bits"), 32, "MONOCHROME2"
    if mode == "F":
        return _float_gray(np.asarray(im), name, warnings), 32, "MONOCHROME2"
    if mode in ("P", "PA"):
        photometric = "PALETTE COLOR"
        rgb = im.convert("RGB")
    elif mode in _PHOTOMETRIC or mode in ("LAB", "HSV"):
        photometric = _PHOTOMETRIC.get(mode, mode)
        rgb = im if mode == "RGB" else im.convert("RGB")  # RGBA -> RGB drops alpha, no compositing
    else:
        try:
            rgb = im.convert("RGB")
        except Exception as exc:  # noqa: BLE001
            raise ImageReadError(
                name, f"unsupported pixel mode {mode!r}: save it as 8/16-bit gray PNG"
            ) from exc
        photometric = mode
    return _rgb_to_gray(np.asarray(rgb), 255.0, warnings), 8, photometric


def _rgb_to_gray(rgb: np.ndarray, scale: float, warnings: list[str]) -> np.ndarray:
    """Luma of the first three channels, in float (R = G = B gives back the gray exactly)."""
    ch = rgb[..., :3].astype(np.float32)
    spread = float(np.abs(ch[..., 0] - ch[..., 1]).mean() + np.abs(ch[..., 1] - ch[..., 2]).mean()) / scale
    if spread > 4.0 / 255.0:
        warnings.append(
            "colour image (channels differ): converted to gray luma; is this really a radiograph?"
        )
    gray = ch[..., 0] * LUMA[0] + ch[..., 1] * LUMA[1] + ch[..., 2] * LUMA[2]
    return np.clip(gray / scale, 0.0, 1.0).astype(np.float32)


def _float_gray(arr: np.ndarray, name: Any, warnings: list[str]) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ImageReadError(name, "contains NaN or infinite pixel values")
    if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
        return arr.astype(np.float32, copy=True)
    return _minmax(arr, name, warnings, "float values outside [0, 1]")


def _minmax(arr: np.ndarray, name: Any, warnings: list[str], why: str | None) -> np.ndarray:
    """Stretch to [0, 1]; a constant image becomes 0 (with a warning), never NaN."""
    arr = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ImageReadError(name, "contains NaN or infinite pixel values")
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        warnings.append(f"constant image (every pixel is {lo:g}): nothing to see")
        return np.zeros(arr.shape, dtype=np.float32)
    if why:
        warnings.append(f"{why} (range {lo:g}..{hi:g}): min-max normalised to [0, 1]")
    return ((arr - lo) / (hi - lo)).astype(np.float32)


# --------------------------------------------------------------------------- numpy arrays


def _read_array(arr: np.ndarray, max_pixels: int, uint8_ok: bool = False) -> tuple[np.ndarray, ImageMeta]:
    name = ARRAY_NAME
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # channels-first (C, H, W)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageReadError(
            name, f"array of shape {arr.shape} is not an image: expected HxW gray or HxWx3/HxWx4 colour"
        )
    _check_dims(name, a.shape[0], a.shape[1], max_pixels)
    warnings: list[str] = []
    kind = a.dtype.kind
    if kind == "b":
        scaled, bits = a.astype(np.float32), 1
    elif a.dtype == np.uint8:
        scaled, bits = a.astype(np.float32) / 255.0, 8
    elif a.dtype == np.uint16:
        scaled, bits = a.astype(np.float32) / 65535.0, 16
    elif kind in "iu":
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo >= 0 and hi <= 255:
            scaled, bits = a.astype(np.float32) / 255.0, 8
        elif lo >= 0 and hi <= 65535:
            scaled, bits = a.astype(np.float32) / 65535.0, 16
        else:
            scaled, bits = (
                _minmax(a, name, warnings, f"{a.dtype} values beyond 16 bits"),
                a.dtype.itemsize * 8,
            )
    elif kind == "f":
        scaled, bits = _float_gray(a, name, warnings), a.dtype.itemsize * 8
    else:
        raise ImageReadError(name, f"array of dtype {a.dtype} is not an image: use uint8, uint16 or float")
    photometric = "MONOCHROME2"
    if scaled.ndim == 3:
        photometric = "RGB" if scaled.shape[-1] == 3 else "RGBA"
        scaled = _rgb_to_gray(scaled, 1.0, warnings)
    out = np.ascontiguousarray(np.clip(scaled, 0.0, 1.0), dtype=np.float32)
    if uint8_ok and a.dtype == np.uint8 and a.ndim == 2:
        out = np.array(a, dtype=np.uint8)  # as an 8-bit file reads with uint8_ok
    meta = ImageMeta(
        None, "array", (int(out.shape[0]), int(out.shape[1])), int(bits), photometric, warnings=warnings
    )
    return out, meta


# --------------------------------------------------------------------------- DICOM


def _read_dicom(path: Path, max_pixels: int, force: bool) -> tuple[np.ndarray, ImageMeta]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import UID

    try:
        hdr = pydicom.dcmread(path, stop_before_pixels=True, force=force)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, struct.error) as exc:
        raise ImageReadError(path, f"not a valid DICOM file: {exc}") from exc
    sop = hdr.get("SOPClassUID")
    sop_name = f"SOP class {UID(str(sop)).name}" if sop else "no SOP class"
    if "Rows" not in hdr or "Columns" not in hdr:
        if force:
            raise ImageReadError(path, "not a DICOM image: no 'DICM' marker and no image attributes")
        raise ImageReadError(
            path,
            f"DICOM has no pixel data ({sop_name}): it is not an image (a report or presentation state?)",
        )
    rows, cols = int(hdr.Rows), int(hdr.Columns)
    _check_dims(path, rows, cols, max_pixels)

    tsuid = _transfer_syntax(hdr)
    _check_decodable(path, tsuid)

    try:
        ds = pydicom.dcmread(path, force=force)
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(path, f"corrupt DICOM file: {exc}") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(
            path,
            f"DICOM has no pixel data ({sop_name}): it is not an image (a report or presentation state?)",
        )
    ds.file_meta.TransferSyntaxUID = tsuid

    warnings: list[str] = []
    modality = str(ds.get("Modality", "") or "").strip().upper() or None
    view = str(ds.get("ViewPosition", "") or "").strip().upper() or None
    body = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if modality and modality not in CHEST_MODALITIES:
        warnings.append(
            f"modality is {modality}, not a radiograph (CR/DX): the model reads chest X-rays, "
            "so its output may be meaningless"
        )
    if body and not any(k in body for k in ("CHEST", "THORA", "TORAX", "LUNG")):
        warnings.append(f"body part examined is {body}, not chest: the output may be meaningless")
    if view and view not in FRONTAL_VIEWS:
        kind = "lateral" if view in ("LL", "RL", "LAT", "LATERAL") else "non-PA/AP"
        warnings.append(
            f"{kind} view ({view}): the model was trained on frontal PA/AP chest films; read the output with care"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        if frames > 1:
            warnings.append(f"multi-frame DICOM ({frames} frames): only the first frame was read")
            arr = pydicom.pixels.pixel_array(ds, index=0)
        else:
            arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(path, f"cannot decode the DICOM pixel data ({tsuid.name}): {exc}") from exc

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        gray = _dicom_gray(arr, ds, path, warnings)
        if photometric == "MONOCHROME1":
            gray = 1.0 - gray
    else:
        if photometric == "PALETTE COLOR":
            arr = pydicom.pixels.apply_color_lut(arr, ds)
            bits = 16 if arr.dtype == np.uint16 else 8
        elif arr.ndim != 3 or arr.shape[-1] != 3:
            raise ImageReadError(path, f"unsupported DICOM photometric interpretation {photometric}")
        # pydicom returns YBR_* as RGB already
        gray = _rgb_to_gray(arr, float(2**bits - 1), warnings)  # warns when the channels differ
    out = np.ascontiguousarray(np.clip(gray, 0.0, 1.0), dtype=np.float32)
    meta = ImageMeta(
        path=str(path),
        format="DICOM",
        source_size=(int(out.shape[0]), int(out.shape[1])),
        bit_depth=bits,
        photometric=photometric,
        modality=modality,
        view=view,
        warnings=warnings,
    )
    return out, meta


def _transfer_syntax(hdr) -> Any:
    """The dataset's transfer syntax; preamble-less files get the one they were parsed with."""
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ts = hdr.file_meta.get("TransferSyntaxUID") if hasattr(hdr, "file_meta") else None
    if ts:
        return UID(str(ts))
    implicit, little = getattr(hdr, "original_encoding", (True, True))
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _check_decodable(path: Path, tsuid) -> None:
    """Refuse transfer syntaxes that no installed pixel-data plugin decodes, naming the fix."""
    from pydicom.pixels import get_decoder

    if not tsuid.is_transfer_syntax:
        raise ImageReadError(
            path,
            f"unsupported transfer syntax {tsuid} (unknown or private): no decoder can read its pixel data; "
            "convert it to an uncompressed DICOM (e.g. `dcmdjpeg`, `gdcmconv --raw`) or export a PNG",
        )
    if not tsuid.is_compressed:
        return
    try:
        decoder = get_decoder(tsuid)
    except NotImplementedError as exc:
        raise ImageReadError(
            path,
            f"unsupported transfer syntax {tsuid.name} ({tsuid}): pydicom has no decoder for it "
            "(video/other codecs are not chest radiographs); export the image as an uncompressed DICOM or PNG",
        ) from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise ImageReadError(
            path,
            f"transfer syntax {tsuid.name} ({tsuid}) needs a pixel-data plugin that is not installed: "
            f"install one of: {missing}",
        )


def _dicom_gray(arr: np.ndarray, ds, path: Path, warnings: list[str]) -> np.ndarray:
    """Modality LUT, then VOI (LUT or window) scaled by its output range, else min-max."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

    values = apply_modality_lut(arr, ds)
    voi_seq = ds.get("VOILUTSequence")
    has_lut = bool(voi_seq) and "LUTData" in voi_seq[0] and "LUTDescriptor" in voi_seq[0]
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if has_lut:
        try:
            out = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64)
            lut = np.asarray(voi_seq[0].LUTData, dtype=np.float64).ravel()
            lo, hi = float(lut.min()), float(lut.max())
            if hi > lo:
                return ((out - lo) / (hi - lo)).astype(np.float32)
        except Exception as exc:  # noqa: BLE001 - a broken LUT falls back to the window or min-max
            warnings.append(f"VOI LUT unusable ({exc}): ignored")
    if has_window:
        try:
            out = apply_windowing(values.astype(np.float64), ds)
            with np.errstate(over="ignore", divide="ignore"):
                lo, hi = apply_windowing(np.array([-1e300, 1e300]), ds)
            if np.isfinite([lo, hi]).all() and hi > lo:
                return ((out - lo) / (hi - lo)).astype(np.float32)
            warnings.append("window center/width unusable: ignored")
        except Exception as exc:  # noqa: BLE001
            warnings.append(f"window center/width unusable ({exc}): ignored")
    return _minmax(values, path, warnings, None)


# --------------------------------------------------------------------------- folders


def _safe_iterdir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _is_image_name(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return True
    return suffix == "" and is_dicom_file(path)


def _walk_images(folder: Path, recursive: bool) -> list[Path]:
    """Image files in a folder (and its subfolders when recursive), each real folder once."""
    if not recursive:
        return [p for p in _safe_iterdir(folder) if p.is_file() and _is_image_name(p)]
    out: list[Path] = []
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a symlink loop or a second link to the same folder
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and os.path.realpath(os.path.join(root, d)) not in seen
        )
        for name in files:
            p = Path(root) / name
            if p.is_file() and _is_image_name(p):
                out.append(p)
    return out
