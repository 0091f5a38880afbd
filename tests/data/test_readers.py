"""THE dataset-reader registry: every reader registers itself, detects its own layout, and nothing else claims it first.

Each minimal table below is written from the publisher's documented header (the columns each
module's docstring names) with one image whose Effusion (Pneumothorax for the Google re-labels,
which do not label Effusion) is positive.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrdx.data.columns import Parsed
from cxrdx.data.readers import READERS, Reader, by_detection_order, detect_layout
from cxrdx.data.tables import read_label_table
from cxrdx.errors import DataError
from cxrdx.settings import DATASETS

# name -> (files: the label table first, then what must sit beside it; the finding the row is positive for)
MINIMAL: dict[str, tuple[dict[str, str], str]] = {
    "nih": ({"Data_Entry.csv": "Image Index,Finding Labels,Patient ID\na.png,Effusion,1\n"}, "Effusion"),
    "google": (
        {
            "google.csv": "Image Index,Finding Labels,Patient ID,Fracture,Pneumothorax,Airspace opacity,"
            "Nodule or mass,Set Id\na.png,No Finding,1,NO,YES,NO,NO,test\n"
        },
        "Pneumothorax",
    ),
    "chexpert": (
        {
            "train.csv": "Path,Sex,Age,Frontal/Lateral,AP/PA,Pleural Effusion\n"
            "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0\n"
        },
        "Effusion",
    ),
    "mimic": (
        {
            "mimic-cxr-2.0.0-chexpert.csv": "subject_id,study_id,Pleural Effusion\n10000032,50414267,1.0\n",
            "mimic-cxr-2.0.0-metadata.csv": "dicom_id,subject_id,study_id,ViewPosition\nd1,10000032,50414267,PA\n",
        },
        "Effusion",
    ),
    "padchest": (
        {
            "padchest.csv": "ImageID,ImageDir,PatientID,Projection,Labels\na.png,0,p1,PA,\"['pleural effusion']\"\n"
        },
        "Effusion",
    ),
    "vindr": ({"train.csv": "image_id,class_name,rad_id\nimg1,Pleural effusion,R1\n"}, "Effusion"),
    "generic": ({"labels.csv": "image,patient,Effusion\na.png,1,1\n"}, "Effusion"),
}
# Tables another reader could read too, so their own reader must be asked first: the Google file keeps
# NIH's columns (Finding Labels included: NIH's own NLP labels); CheXpert's ``Path`` is an image column
# and its observations are finding names, so it also looks like a generic table, as does Google's.
ALSO_CLAIMED_BY = {"google": {"nih", "generic"}, "chexpert": {"generic"}}


def _write(tmp_path, name):
    files, _ = MINIMAL[name]
    for file, text in files.items():
        (tmp_path / file).write_text(text)
    path = tmp_path / next(iter(files))
    return path, [str(c) for c in pd.read_csv(path, dtype=str, nrows=0).columns]


def test_registered_readers_are_the_cli_datasets():
    """``settings.DATASETS`` (the CLI's --dataset choices, kept free of pandas) names exactly the registered readers."""
    assert sorted(READERS) == sorted(DATASETS) and len(DATASETS) == len(set(DATASETS))
    assert set(MINIMAL) == set(READERS), "give every registered reader a minimal table here"
    assert by_detection_order()[-1].name == "generic"  # the catch-all is asked last


@pytest.mark.parametrize("name", DATASETS)
def test_each_reader_detects_its_own_layout_and_reads_it(tmp_path, name):
    path, columns = _write(tmp_path, name)
    reader = READERS[name]
    assert reader.detect(path, columns)
    assert detect_layout(path, columns) == name
    earlier = [r.name for r in by_detection_order() if r.order < reader.order and r.detect(path, columns)]
    assert earlier == []  # no reader asked before it claims its table
    others = {r.name for r in READERS.values() if r.name != name and r.detect(path, columns)}
    assert others == ALSO_CLAIMED_BY.get(name, set())
    table = read_label_table(path)
    finding = MINIMAL[name][1]
    assert table.dataset == name and finding in table.findings
    assert table.frame.loc[0, finding] == 1
    forced = read_label_table(path, dataset=name)
    assert forced.dataset == name and forced.frame.loc[0, finding] == 1


def test_unknown_layout_names_every_registered_layout(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image,patient,site\na.png,1,x\n")
    with pytest.raises(DataError, match="unknown label table layout") as err:
        read_label_table(path)
    assert all(r.layout in str(err.value) for r in READERS.values())


def test_a_new_dataset_is_one_registration(tmp_path, monkeypatch):
    """A reader registered from its own module is detected and read, with no edit to tables.py."""

    def read(path, raw, options) -> Parsed:
        return Parsed(
            fmt="toy",
            image=raw["toy_id"].to_numpy(dtype=object),
            patient=raw["toy_id"].to_numpy(dtype=object),
            labels={"Effusion": (raw["effusion"] == "y").to_numpy(dtype=np.float32)},
        )

    toy = Reader("toy", lambda path, columns: "toy_id" in columns, read, order=5, layout="Toy (toy_id)")
    monkeypatch.setitem(READERS, "toy", toy)
    path = tmp_path / "toy.csv"
    path.write_text("toy_id,effusion\na,y\nb,n\n")
    table = read_label_table(path)
    assert table.dataset == "toy" and table.format == "toy" and table.frame["Effusion"].tolist() == [1.0, 0.0]


def test_forcing_another_layout_says_what_is_missing(tmp_path):
    """--dataset NAME on a table of another layout: the forced reader names the columns it lacks."""
    path, _ = _write(tmp_path, "generic")
    with pytest.raises(
        DataError, match=r"labels\.csv: missing labels: a 'Finding Labels' column.*--dataset generic"
    ):
        read_label_table(path, dataset="nih")
    with pytest.raises(
        DataError, match=r"not a VinDr-CXR table: missing column\(s\) image_id, class_name, rad_id"
    ):
        read_label_table(path, dataset="vindr")
