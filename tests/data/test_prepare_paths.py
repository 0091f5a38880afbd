"""prepare and the images folder: symlinked sub-folders, --allow-missing without a sparse cache, index.csv paths."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from cxrdx.cli import main as cli_main
from cxrdx.data.cache import open_cache
from cxrdx.data.prepare import prepare_cache
from cxrdx.data.tables import read_labels

N = 12


@pytest.fixture()
def archives(phantom_dataset, tmp_path):
    """NIH-style: images in two 'archive' folders elsewhere, gathered by a folder of symlinks to them."""
    table = pd.read_csv(phantom_dataset / "Data_Entry.csv", dtype=str).iloc[:N]
    csv = tmp_path / "val.csv"
    table.to_csv(csv, index=False)
    store = tmp_path / "downloads"
    for i, name in enumerate(table["Image Index"]):
        dest = store / f"images_{i % 2 + 1:03d}" / "images" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(phantom_dataset / "images" / name, dest)
    gathered = tmp_path / "nih"
    gathered.mkdir()
    for sub in ("images_001", "images_002"):
        os.symlink(store / sub, gathered / sub, target_is_directory=True)
    os.symlink(gathered, gathered / "images_001" / "loop", target_is_directory=True)  # a loop must end
    return csv, gathered, table


def test_images_folder_of_symlinked_subfolders_is_followed(archives, tmp_path):
    csv, gathered, table = archives
    df = read_labels(csv, gathered, require_images=True)
    assert (df["path"] != "").sum() == len(table) == N
    result = prepare_cache([csv], tmp_path / "cache", size=32, images=gathered, workers=0, progress=False)
    assert result.cached == N and not result.failures


def test_index_paths_are_relative_to_the_images_root(archives, tmp_path, monkeypatch):
    csv, gathered, _ = archives
    elsewhere = tmp_path / "work" / "deep"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)  # prepare started from an unrelated folder, --images given relative
    rel_images = os.path.relpath(gathered, elsewhere)
    prepare_cache([csv], tmp_path / "cache", size=32, images=rel_images, workers=0, progress=False)
    written = pd.read_csv(tmp_path / "cache" / "index.csv", dtype=str)
    assert all(p.startswith(("images_001/images/", "images_002/images/")) for p in written["path"])
    info = json.loads((tmp_path / "cache" / "cache.json").read_text())
    assert info["paths"] == "relative to images_dir"
    monkeypatch.chdir(tmp_path)
    opened = open_cache(tmp_path / "cache")
    assert all(os.path.isfile(p) for p in opened.index["path"])  # joined back to the recorded root


def test_allow_missing_caches_only_what_it_cached(archives, tmp_path, capsys):
    csv, gathered, table = archives
    shutil.rmtree(os.path.realpath(gathered / "images_002"))  # half the archives not downloaded
    (gathered / "images_002").unlink()
    present = N // 2
    out = tmp_path / "cache"
    argv = ["prepare", "--labels", str(csv), "--images", str(gathered), "--size", "32", "--out", str(out),
            "--workers", "0", "--no-progress", "--allow-missing"]  # fmt: skip
    assert cli_main(argv) == 0
    capsys.readouterr()
    assert np.load(out / "images.npy", mmap_mode="r").shape == (present, 32, 32)  # no sparse rows
    info = json.loads((out / "cache.json").read_text())
    assert info["cached"] == present and info["not_cached"] == N - present and "failures" not in info
    listed = pd.read_csv(out / "not_cached.csv", dtype=str)
    assert len(listed) == N - present and set(listed["problem"]) == {"file not found"}
    cache = open_cache(out)
    assert sorted(cache.rows.tolist()) == list(range(present))
    # rerun: the same plan resumes without decoding again
    assert cli_main(argv) == 0
    assert "already done" in capsys.readouterr().out
