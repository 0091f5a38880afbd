"""cxrdx.imaging.find: files and folders -> image files, hidden files skipped, symlink loops ended."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from corpus.bad_inputs import chest, dicom_dataset
from testkit import png_bytes

from cxrdx.errors import ImageReadError
from cxrdx.imaging.find import find_images, no_images_message
from cxrdx.imaging.read import read_image
from cxrdx.imaging.sniff import IMAGE_SUFFIXES

G = chest()  # 64x64 uint8 chest-like pattern
G16 = G.astype(np.uint16) * 16  # 12-bit values


def save_dcm(ds, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------- find_images


def _tree(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "empty" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    png = png_bytes(G)
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
