"""What a dataset is (phantom / real / unknown): the synth marker, known file names, carried into the cache."""

from __future__ import annotations

import json

import pandas as pd

from cxrdx.data.origin import MARKER_FILE, dataset_origin, read_marker
from cxrdx.data.prepare import prepare_cache
from cxrdx.phantom.dataset import write_dataset


def test_synth_marks_its_folder_and_prepare_records_phantom_in_the_cache(tmp_path):
    ds = write_dataset(tmp_path / "phantoms", n=12, size=32, seed=0)
    assert read_marker(ds) == {"dataset": "cxrdx synthetic phantoms", "kind": "phantom"}
    split = tmp_path / "split"  # split CSVs elsewhere, as `cxrdx split` writes them: found via --images
    split.mkdir()
    table = pd.read_csv(ds / "Data_Entry.csv")
    train = table["Patient ID"].isin(sorted(set(table["Patient ID"]))[::2])  # patient-disjoint halves
    table[train].to_csv(split / "train.csv", index=False)
    table[~train].to_csv(split / "val.csv", index=False)
    out = tmp_path / "cache"
    prepare_cache([split / "train.csv", split / "val.csv"], out, size=32, images=ds / "images", workers=0,
                  progress=False)  # fmt: skip
    info = json.loads((out / "cache.json").read_text())
    assert info["origin"] == {"dataset": "cxrdx synthetic phantoms", "kind": "phantom"}


def test_known_files_are_real_and_anything_else_is_unknown(tmp_path):
    nih = tmp_path / "Data_Entry_2017_v2020.csv.gz"
    assert dataset_origin([nih]) == {"dataset": "NIH ChestX-ray14", "kind": "real"}
    assert dataset_origin([tmp_path / "x.csv"], named=["CheXpert"]) == {"dataset": "CheXpert", "kind": "real"}
    assert dataset_origin([tmp_path / "mine.csv"]) == {"dataset": "mine.csv", "kind": "unknown"}
    (tmp_path / MARKER_FILE).write_text("{not json")  # a damaged marker is ignored, not fatal
    assert dataset_origin([tmp_path / "mine.csv"])["kind"] == "unknown"
