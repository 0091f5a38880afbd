"""Reading any chest X-ray file (or array) a user has into one gray float image.

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
- **DICOM** (``cxrdx.imaging.dicom``). Modality LUT (rescale slope/intercept) first, then the VOI LUT or the
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
  module walks the chunks itself, see ``cxrdx.imaging.png``), empty files, non-images (says what the file
  looks like: text, HTML, PDF, ZIP ...), DICOMs without pixel data (structured
  reports) and transfer syntaxes no installed plugin decodes.
- **EXIF orientation** is applied (phone photos of films), with a warning.
- **Reduced JPEG decode** (``target``, ``cxrdx.imaging.jpeg``): a caller that only needs the
  network's input says what the film is resized to next, and a large JPEG is decoded at 1/2,
  1/4 or 1/8 scale in the DCT domain (``ImageMeta.decode_scale``); without ``target`` (the
  default) every file is decoded in full.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxrdx.errors import ImageReadError
from cxrdx.imaging.dicom import read_dicom
from cxrdx.imaging.jpeg import DecodeTarget, draft_reduced
from cxrdx.imaging.pixels import (
    ARRAY_NAME,
    DEFAULT_MAX_PIXELS,
    ImageMeta,
    check_dims,
    float_gray,
    minmax,
    rgb_to_gray,
    too_large_pillow,
)
from cxrdx.imaging.png import check_png_chunks
from cxrdx.imaging.sniff import DICOM_SUFFIXES, describe_non_image, sniff_image


def read_image(
    source: Any,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    uint8_ok: bool = False,
    target: DecodeTarget | None = None,
) -> tuple[np.ndarray, ImageMeta]:
    """Read a file (path), numpy array or PIL image as float32 HxW in [0, 1], bright = dense.

    ``uint8_ok``: an image whose every pixel is exactly v / 255 (an 8-bit gray file,
    a uint8 array, or the float image read_image made of either) comes back as its
    uint8 pixels v instead. ``Predictor`` uses it because the 1024 px float conversion
    and float resize cost about a quarter of the decode time, and the letterbox of a
    uint8 image is what the training cache stores anyway. The same pixels give the
    same array whichever form they arrive in, so a file and its array predict alike.

    ``target``: the sides the image is resized to next (``Preprocessing.decode_target``); a
    large JPEG is then decoded at the reduced DCT scale that keeps enough pixels for that
    resize (``cxrdx.imaging.jpeg``). None: decoded in full.
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
    image, meta = _guard(path, lambda: _read_path(path, max_pixels, uint8_ok, target))
    return (_exact_uint8(image) if uint8_ok else image), meta


def _exact_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 v when every pixel is exactly float32(v) / 255 (an 8-bit image as float), else unchanged."""
    if image.dtype == np.uint8 or image.dtype != np.float32:
        return image
    v = np.rint(image * np.float32(255.0))
    if not np.array_equal(v.astype(np.float32) / np.float32(255.0), image):
        return image
    return v.astype(np.uint8)


def image_to_uint8(img: np.ndarray) -> np.ndarray:
    """A [0, 1] float image as uint8 (round(img * 255)), for saving and display."""
    return np.round(np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


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


def _read_path(
    path: Path, max_pixels: int, uint8_ok: bool = False, target: DecodeTarget | None = None
) -> tuple[np.ndarray, ImageMeta]:
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
        return read_dicom(path, max_pixels, force=False)
    kind = sniff_image(head)
    if kind == "PNG":
        check_png_chunks(path)
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, too_large_pillow(exc)) from exc
    except (UnidentifiedImageError, SyntaxError, OSError, ValueError) as exc:
        if kind is not None:
            raise ImageReadError(path, f"corrupt {kind} file: {exc}") from exc
        if head[:2] in (b"\x02\x00", b"\x08\x00"):  # a DICOM without the 128-byte preamble
            return read_dicom(path, max_pixels, force=True)
        what = describe_non_image(head)
        if path.suffix.lower() in DICOM_SUFFIXES:
            raise ImageReadError(path, f"not a DICOM file: no 'DICM' marker at byte 128 ({what})") from exc
        raise ImageReadError(
            path, f"not an image file ({what}); readable formats: PNG, JPEG, BMP, TIFF, DICOM"
        ) from exc
    with im:
        out, meta = _from_pil(im, path, str(path), max_pixels, im.format or kind or "image", uint8_ok, target)
    if path.suffix.lower() in DICOM_SUFFIXES:
        meta.warnings.append(f"named {path.suffix} but is a {meta.format} file; read as {meta.format}")
    return out, meta


def _from_pil(
    im: Image.Image,
    name: Any,
    path: str | None,
    max_pixels: int,
    fmt: str,
    uint8_ok: bool = False,
    target: DecodeTarget | None = None,
):
    """Pillow image (opened lazily) -> gray float, checking size before decoding anything."""
    width, height = im.size
    check_dims(name, height, width, max_pixels)
    warnings: list[str] = []
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        if fmt == "MPO":  # phone JPEGs: frame 0 is the picture, the rest are previews/depth maps
            warnings.append(f"MPO JPEG with {frames} pictures: the first (primary) one was read")
        else:
            raise ImageReadError(name, f"multi-frame image ({frames} frames); export a single frame")
    decode_scale = draft_reduced(im, target, fmt)
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
        decode_scale=decode_scale,
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
        return minmax(arr, name, warnings, "32-bit values beyond 16 bits"), 32, "MONOCHROME2"
    if mode == "F":
        return float_gray(np.asarray(im), name, warnings), 32, "MONOCHROME2"
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
    return rgb_to_gray(np.asarray(rgb), 255.0, warnings), 8, photometric


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
    check_dims(name, a.shape[0], a.shape[1], max_pixels)
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
                minmax(a, name, warnings, f"{a.dtype} values beyond 16 bits"),
                a.dtype.itemsize * 8,
            )
    elif kind == "f":
        scaled, bits = float_gray(a, name, warnings), a.dtype.itemsize * 8
    else:
        raise ImageReadError(name, f"array of dtype {a.dtype} is not an image: use uint8, uint16 or float")
    photometric = "MONOCHROME2"
    if scaled.ndim == 3:
        photometric = "RGB" if scaled.shape[-1] == 3 else "RGBA"
        scaled = rgb_to_gray(scaled, 1.0, warnings)
    out = np.ascontiguousarray(np.clip(scaled, 0.0, 1.0), dtype=np.float32)
    if uint8_ok and a.dtype == np.uint8 and a.ndim == 2:
        out = np.array(a, dtype=np.uint8)  # as an 8-bit file reads with uint8_ok
    meta = ImageMeta(
        None, "array", (int(out.shape[0]), int(out.shape[1])), int(bits), photometric, warnings=warnings
    )
    return out, meta
