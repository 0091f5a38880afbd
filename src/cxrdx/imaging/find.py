"""Files and folders a user names -> the image files in them.

A file named explicitly is kept whatever its suffix (``read_image`` judges it); a
folder contributes image-suffixed files and extensionless DICOMs, skipping hidden
files; a recursive walk follows symlinks but visits each real folder once, so
symlink loops end.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cxrdx.errors import ImageReadError
from cxrdx.imaging.dicom import is_dicom_file
from cxrdx.imaging.sniff import IMAGE_SUFFIXES


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
