"""What a dataset is (phantom / real / unknown): the synth marker, known file names, carried into the cache as
JSON and read back as THE typed ``Origin`` (the one ``metrics.json``'s ``dataset.origin`` uses too)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cxrdx.data.cache import open_cache
from cxrdx.data.origin import MARKER_FILE, Origin, dataset_origin, read_marker
from cxrdx.data.prepare import prepare_cache
from cxrdx.errors import DataError
from cxrdx.evaluation import metrics_record
from cxrdx.phantom.dataset import write_dataset


def test_synth_marks_its_folder_and_prepare_records_phantom_in_the_cache(tmp_path):
    ds = write_dataset(tmp_path / "phantoms", n=12, size=32, seed=0)
    marker = json.loads((ds / MARKER_FILE).read_text())  # what synth wrote, read with the json module
    assert (
        read_marker(ds)
        == Origin(marker["dataset"], marker["kind"])
        == Origin("cxrdx synthetic phantoms", "phantom")
    )
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
    assert info["origin"] == {
        "dataset": "cxrdx synthetic phantoms",
        "kind": "phantom",
    }  # the same JSON as before
    assert list(info["origin"]) == ["dataset", "kind"]
    assert open_cache(out).origin == Origin("cxrdx synthetic phantoms", "phantom")
    del info["origin"]  # a cache made before origins were recorded: its sources are looked at again
    (out / "cache.json").write_text(json.dumps(info))
    assert open_cache(out).origin == Origin("cxrdx synthetic phantoms", "phantom")


def test_known_files_are_real_and_anything_else_is_unknown(tmp_path):
    nih = tmp_path / "Data_Entry_2017_v2020.csv.gz"
    assert dataset_origin([nih]) == Origin("NIH ChestX-ray14", "real")
    assert dataset_origin([tmp_path / "x.csv"], named=["CheXpert"]) == Origin("CheXpert", "real")
    assert dataset_origin([tmp_path / "mine.csv"]) == Origin("mine.csv", "unknown")
    (tmp_path / MARKER_FILE).write_text("{not json")  # a damaged marker is ignored, not fatal
    assert dataset_origin([tmp_path / "mine.csv"]).kind == "unknown"


def test_origin_json_round_trips_keeps_later_keys_and_refuses_wrong_shapes():
    text = '{"dataset": "NIH ChestX-ray14", "kind": "real"}'
    origin = Origin.from_json(json.loads(text))
    assert origin == Origin("NIH ChestX-ray14", "real") and json.dumps(origin.to_json()) == text
    assert Origin.from_json({}) == Origin(None, "unknown") and Origin().to_json() == {
        "dataset": None,
        "kind": "unknown",
    }
    later = {"dataset": "x", "kind": "real", "site": "A"}  # a key a later cxrdx may add: kept, written back
    assert Origin.from_json(later).extra == {"site": "A"} and Origin.from_json(later).to_json() == later
    with pytest.raises(DataError, match=r"cache.json: origin: expected an object, got list"):
        Origin.from_json(["x"], "cache.json: origin")
    with pytest.raises(DataError, match=r"o: kind: unexpected dict"):
        Origin.from_json({"kind": {}}, "o")


def test_metrics_record_uses_the_same_origin_type():
    """One type for the concept: metrics.json's dataset.origin is read as cxrdx.data.origin.Origin."""
    assert metrics_record.Origin is Origin
    info = metrics_record.DatasetInfo.from_json(
        {"description": "d", "origin": {"dataset": "x", "kind": "phantom"}}
    )
    assert type(info.origin) is Origin and info.origin == Origin("x", "phantom")
    assert info.to_json()["origin"] == {"dataset": "x", "kind": "phantom"}
    with pytest.raises(DataError, match=r"m.json: origin: unexpected list"):
        metrics_record.DatasetInfo.from_json({"origin": ["x"]}, "m.json")
