"""Label tables, boxes, patient splits and leakage checks."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrdx.cli import main
from cxrdx.datasets import (
    LABEL_COLUMNS,
    find_image_overlap,
    find_leaks,
    label_stats,
    read_bboxes,
    read_labels,
    split_by_patient,
    write_labels,
)
from cxrdx.errors import ConfigError, DataError, LabelError
from cxrdx.labels import FINDINGS, parse_finding_labels


def _table(n_patients: int = 300, seed: int = 0) -> pd.DataFrame:
    """A label table with 1-8 images per patient."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(1, n_patients + 1):
        for fu in range(int(rng.integers(1, 9))):
            rows.append({"image": f"{p:08d}_{fu:03d}.png", "patient": str(p)})
    df = pd.DataFrame(rows)
    for col, val in (("path", ""), ("view", "PA"), ("age", 50), ("sex", "M")):
        df[col] = val
    for f in FINDINGS:
        df[f] = (rng.random(len(df)) < 0.1).astype(np.uint8)
    return df[list(LABEL_COLUMNS)]


def _run(capsys, argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


# --------------------------------------------------------------------------- real NIH data


@pytest.fixture(scope="module")
def nih(shared_data):
    return read_labels(shared_data / "nih" / "Data_Entry_2017_v2020.csv.gz", shared_data / "nih" / "images")


@pytest.mark.realdata
def test_read_real_nih_table(nih):
    assert list(nih.columns) == list(LABEL_COLUMNS)
    assert nih.attrs["format"] == "nih"
    stats = label_stats(nih)
    assert stats["images"] == 112_120
    assert stats["patients"] == 30_805
    assert stats["positives"]["Hernia"] == 227
    assert stats["positives"]["Infiltration"] == 19_894
    assert stats["resolved"] == 200  # the 200 sample PNGs are found, the rest stay ""
    assert all(nih[f].dtype == np.uint8 for f in FINDINGS)
    first = nih.iloc[0]
    assert first["image"] == "00000001_000.png" and first["patient"] == "1" and first["Cardiomegaly"] == 1
    assert set(nih["view"]) == {"PA", "AP"} and set(nih["sex"]) == {"M", "F"}


@pytest.mark.realdata
def test_cli_stats_real(shared_data, tmp_path, capsys):
    plot = tmp_path / "prev.png"
    rc, out, _ = _run(
        capsys, ["stats", "--labels", shared_data / "nih" / "Data_Entry_2017_v2020.csv.gz", "--plot", plot]
    )
    assert rc == 0
    assert "112,120" in out and "30,805" in out
    assert any(line.split()[:2] == ["Hernia", "227"] for line in out.splitlines())
    assert any(line.split()[:2] == ["Infiltration", "19,894"] for line in out.splitlines())
    assert any(line.startswith("No Finding") for line in out.splitlines())
    assert Image.open(plot).format == "PNG"


@pytest.mark.realdata
def test_read_real_bboxes(shared_data):
    boxes = read_bboxes(shared_data / "nih" / "BBox_List_2017.csv.gz")
    assert list(boxes.columns) == ["image", "finding", "x", "y", "w", "h"]
    assert len(boxes) == 984 and boxes["image"].nunique() == 880
    assert set(boxes["finding"]) <= set(FINDINGS)
    assert (boxes["finding"] == "Infiltration").sum() > 0  # NIH writes "Infiltrate"
    assert (boxes[["x", "y"]] >= 0).all().all() and (boxes["x"] + boxes["w"] <= 1025).all()


@pytest.mark.realdata
def test_real_split_and_leakage(nih, tmp_path, capsys):
    labels = tmp_path / "nih.csv"
    write_labels(nih, labels)
    rc, out, _ = _run(capsys, ["split", "--labels", labels, "--out", tmp_path / "s"])
    assert rc == 0 and "patients" in out
    files = [tmp_path / "s" / f"{k}.csv" for k in ("train", "val", "test")]
    rc, out, _ = _run(capsys, ["check-leakage", *files])
    assert rc == 0 and "no patient in more than one file" in out
    # plant one test patient's image into train
    train, test = pd.read_csv(files[0], dtype=str), pd.read_csv(files[2], dtype=str)
    planted = test.iloc[[0]]
    patient = planted["patient"].iloc[0]
    planted = planted.assign(image="planted_" + planted["image"])
    pd.concat([train, planted]).to_csv(files[0], index=False)
    rc, out, _ = _run(capsys, ["check-leakage", *files])
    assert rc == 1 and f"patient {patient}:" in out and "1 patient(s)" in out
    assert str(files[0]) in out and str(files[2]) in out


# --------------------------------------------------------------------------- phantom table


def test_read_phantom_table(phantom_dataset):
    df = read_labels(phantom_dataset / "Data_Entry.csv", phantom_dataset, require_images=True)
    assert list(df.columns) == list(LABEL_COLUMNS)
    assert len(df) == 120 and (df["path"] != "").all()
    entry = pd.read_csv(phantom_dataset / "Data_Entry.csv")
    for (_, row), (_, lab) in zip(entry.iterrows(), df.iterrows(), strict=True):
        assert set(parse_finding_labels(row["Finding Labels"])) == {f for f in FINDINGS if lab[f]}
        assert lab["patient"] == str(row["Patient ID"])
    boxes = read_bboxes(phantom_dataset / "BBox_List.csv")
    assert len(boxes) > 0 and set(boxes["image"]) <= set(df["image"])
    for _, b in boxes.iterrows():
        assert df.loc[df["image"] == b["image"], b["finding"]].item() == 1


# --------------------------------------------------------------------------- generic formats


def test_generic_finding_labels_with_aliases(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(
        "filename,patient_id,Finding Labels,site\n"
        "a.png,007,infiltrate|PLEURAL THICKENING,x\n"
        "b.png,7,No Finding,y\n"
        "c.png,p3,Effusion,z\n"
    )
    df = read_labels(p)
    assert df.attrs["format"] == "finding-labels"
    assert df["image"].tolist() == ["a.png", "b.png", "c.png"]
    assert df["patient"].tolist() == ["7", "7", "p3"]  # numeric ids lose leading zeros
    assert df.loc[0, "Infiltration"] == 1 and df.loc[0, "Pleural_Thickening"] == 1
    assert df.loc[1, list(FINDINGS)].sum() == 0
    assert df["path"].tolist() == ["", "", ""]


def test_generic_binary_columns_gz_and_round_trip(tmp_path):
    header = ["Path", "Patient", "Age", "No Finding", "site"] + [f.upper() for f in FINDINGS]
    header[header.index("INFILTRATION")] = "Infiltrate"
    header[header.index("PLEURAL_THICKENING")] = "pleural thickening"
    rows = [["x/1.png", "A", "61", "0", "s"] + ["1" if i % 3 == 0 else "0" for i in range(14)]]
    rows.append(["x/2.png", "B", "", "1", "s"] + ["0.0"] * 14)
    p = tmp_path / "bin.csv.gz"
    with gzip.open(p, "wt") as fh:
        fh.write("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    df = read_labels(p)
    assert df.attrs["format"] == "binary"
    assert df["image"].tolist() == ["x/1.png", "x/2.png"]
    assert [df.loc[0, f] for f in FINDINGS] == [1 if i % 3 == 0 else 0 for i in range(14)]
    assert df.loc[1, list(FINDINGS)].sum() == 0
    assert df.loc[0, "age"] == 61 and pd.isna(df.loc[1, "age"])
    out = write_labels(df, tmp_path / "again.csv")
    back = read_labels(out)
    assert "path" not in pd.read_csv(out).columns
    pd.testing.assert_frame_equal(back.drop(columns="path"), df.drop(columns="path"))


def test_images_dir_resolves_nested_and_reports_missing(tmp_path):
    nested = tmp_path / "imgs" / "images_001" / "images"
    nested.mkdir(parents=True)
    Image.new("L", (8, 8)).save(nested / "a.png")
    p = tmp_path / "t.csv"
    p.write_text("image,patient,Finding Labels\na.png,1,Mass\nb.png,2,No Finding\nc.png,3,No Finding\n")
    df = read_labels(p, tmp_path / "imgs")
    assert df["path"].tolist() == [str(nested / "a.png"), "", ""]
    with pytest.raises(DataError, match=r"2 of 3 image\(s\) not found.*b\.png, c\.png"):
        read_labels(p, tmp_path / "imgs", require_images=True)
    with pytest.raises(DataError, match="does not exist"):
        read_labels(p, tmp_path / "nope")


# --------------------------------------------------------------------------- errors

BAD_TABLES = {
    "missing": (
        "image,Finding Labels\na.png,Mass\n",
        DataError,
        r"missing a patient column.*Columns present: image, Finding Labels",
    ),
    "no_labels": ("image,patient,site\na.png,1,x\n", DataError, r"Finding Labels.*0/1 column per finding"),
    "some_binary": (
        "image,patient,Mass,Nodule\na.png,1,0,1\n",
        DataError,
        r"0/1 columns for Atelectasis, Cardiomegaly",
    ),
    "duplicate": (
        "image,patient,Finding Labels\na.png,1,Mass\na.png,1,Mass\nb.png,2,Mass\n",
        DataError,
        r"a\.png",
    ),
    "not_binary": (
        "image,patient," + ",".join(FINDINGS) + "\na.png,1," + ",".join(["-1"] + ["0"] * 13) + "\n",
        DataError,
        r"column 'Atelectasis'.*'-1'",
    ),
    "blank_binary": (
        "image,patient," + ",".join(FINDINGS) + "\na.png,1," + ",".join(["0"] * 13 + [""]) + "\n",
        DataError,
        r"column 'Pneumothorax'.*empty",
    ),
    "unknown_name": (
        "image,patient,Finding Labels\na.png,1,Mass|Pneumonitis\n",
        LabelError,
        r"t\.csv.*Pneumonitis",
    ),
    "header_only": ("image,patient,Finding Labels\n", DataError, r"no rows"),
    "empty_file": ("", DataError, r"empty"),
    "empty_labels": ("image,patient,Finding Labels\na.png,1,\n", DataError, r"No Finding"),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_tables(tmp_path, capsys, case):
    text, error, pattern = BAD_TABLES[case]
    p = tmp_path / "t.csv"
    p.write_text(text)
    with pytest.raises(error, match=pattern):
        read_labels(p)
    rc, _, err = _run(capsys, ["stats", "--labels", p])
    assert rc == 2 and "cxrdx stats: error:" in err and "t.csv" in err


def test_missing_file_and_bad_boxes(tmp_path, capsys):
    rc, _, err = _run(capsys, ["stats", "--labels", tmp_path / "absent.csv"])
    assert rc == 2 and "does not exist" in err
    p = tmp_path / "b.csv"
    p.write_text("Image Index,Finding Label,Bbox [x,y,w,h]\na.png,Tumour,1,2,3,4\n")
    with pytest.raises(LabelError, match=r"b\.csv.*Tumour"):
        read_bboxes(p)
    p.write_text("Image Index,Finding Label,Bbox [x,y,w\na.png,Mass,1,2,3\n")
    with pytest.raises(DataError, match=r"missing box column\(s\) for h"):
        read_bboxes(p)
    p.write_text("image,finding,x,y,w,h\na.png,Mass,1,2,wide,4\n")
    with pytest.raises(DataError, match="non-numeric"):
        read_bboxes(p)


# --------------------------------------------------------------------------- splits


def test_split_deterministic_disjoint_and_sized():
    df = _table()
    a = split_by_patient(df, val=0.1, test=0.2, seed=0)
    b = split_by_patient(df, val=0.1, test=0.2, seed=0)
    c = split_by_patient(df, val=0.1, test=0.2, seed=1)
    for k in ("train", "val", "test"):
        pd.testing.assert_frame_equal(a[k], b[k])
    assert set(a["test"]["image"]) != set(c["test"]["image"])
    assert not find_leaks(a) and not find_image_overlap(a)
    assert sum(len(v) for v in a.values()) == len(df)
    assert set().union(*(set(v["image"]) for v in a.values())) == set(df["image"])
    n = len(df)
    assert abs(len(a["test"]) / n - 0.2) < 0.01 and abs(len(a["val"]) / n - 0.1) < 0.01
    zero = split_by_patient(df, val=0.0, test=0.3, seed=0)
    assert len(zero["val"]) == 0 and abs(len(zero["test"]) / n - 0.3) < 0.01
    with pytest.raises(ConfigError):
        split_by_patient(df, val=0.6, test=0.5)


def test_split_with_official_lists(tmp_path):
    df = _table(200)
    patients = sorted(df["patient"].unique(), key=int)
    test_patients = set(patients[::4])
    test_list, tv_list = tmp_path / "test_list.txt", tmp_path / "train_val_list.txt"
    test_list.write_text("\n".join(df.loc[df["patient"].isin(test_patients), "image"]) + "\n")
    tv_list.write_text("\n".join(df.loc[~df["patient"].isin(test_patients), "image"]) + "\n")
    out = split_by_patient(df, val=0.1, seed=0, official_test=test_list, official_train_val=tv_list)
    assert set(out["test"]["image"]) == set(test_list.read_text().split())
    assert set(out["val"]["image"]) | set(out["train"]["image"]) == set(tv_list.read_text().split())
    assert abs(len(out["val"]) / len(df) - 0.1) < 0.015
    assert not find_leaks(out)
    # a list pair that puts one patient on both sides is refused
    moved = df.loc[df["patient"] == patients[1], "image"].iloc[0]
    bad_tv = tmp_path / "bad_tv.txt"
    bad_tv.write_text("\n".join(x for x in tv_list.read_text().split() if x != moved))
    bad_test = tmp_path / "bad_test.txt"
    bad_test.write_text(test_list.read_text() + moved + "\n")
    with pytest.raises(DataError, match=rf"not patient-disjoint.*\b{patients[1]}\b"):
        split_by_patient(df, official_test=bad_test, official_train_val=bad_tv)
    with pytest.raises(DataError, match="in neither official list"):
        split_by_patient(df, official_test=test_list, official_train_val=bad_tv)
    with pytest.raises(DataError, match="does not exist"):
        split_by_patient(df, official_test=tmp_path / "missing.txt")


def test_cli_split_and_leakage(phantom_dataset, tmp_path, capsys):
    out = tmp_path / "splits"
    rc, text, _ = _run(
        capsys, ["split", "--labels", phantom_dataset / "Data_Entry.csv", "--out", out, "--seed", "3"]
    )
    assert rc == 0 and "images" in text and "patients" in text
    parts = {k: read_labels(out / f"{k}.csv") for k in ("train", "val", "test")}
    assert sum(len(v) for v in parts.values()) == 120
    assert not find_leaks(parts)
    files = [out / f"{k}.csv" for k in ("train", "val", "test")]
    rc, text, _ = _run(capsys, ["check-leakage", *files])
    assert rc == 0 and "no patient in more than one file" in text
    # plant: copy a validation patient's row into train under a new image id
    train = pd.read_csv(files[0], dtype=str)
    val = pd.read_csv(files[1], dtype=str)
    row = val.iloc[[0]].assign(image="copy.png")
    pd.concat([train, row]).to_csv(files[0], index=False)
    rc, text, _ = _run(capsys, ["check-leakage", *files])
    assert rc == 1 and f"patient {row['patient'].iloc[0]}:" in text
    # and the same image in two files is reported too
    pd.concat([train, val.iloc[[0]]]).to_csv(files[0], index=False)
    rc, text, _ = _run(capsys, ["check-leakage", *files])
    assert rc == 1 and f"image {val['image'].iloc[0]}:" in text
    rc, _, err = _run(capsys, ["check-leakage", files[0]])
    assert rc == 2 and "at least two" in err


def test_cli_split_official_lists(phantom_dataset, tmp_path, capsys):
    df = read_labels(phantom_dataset / "Data_Entry.csv")
    test_patients = set(sorted(df["patient"].unique())[::3])
    (tmp_path / "test.txt").write_text("\n".join(df.loc[df["patient"].isin(test_patients), "image"]))
    (tmp_path / "tv.txt").write_text("\n".join(df.loc[~df["patient"].isin(test_patients), "image"]))
    rc, _, _ = _run(
        capsys,
        [
            "split",
            "--labels",
            phantom_dataset / "Data_Entry.csv",
            "--out",
            tmp_path / "o",
            "--official-test",
            tmp_path / "test.txt",
            "--official-train-val",
            tmp_path / "tv.txt",
        ],
    )
    assert rc == 0
    test = read_labels(tmp_path / "o" / "test.csv")
    assert set(test["patient"]) == test_patients
    rc, _, err = _run(
        capsys,
        [
            "split",
            "--labels",
            phantom_dataset / "Data_Entry.csv",
            "--out",
            tmp_path / "o2",
            "--official-test",
            tmp_path / "x.txt",
        ],
    )
    assert rc == 2 and "x.txt" in err


def test_cli_split_absolute_paths(phantom_dataset, tmp_path, capsys):
    labels = phantom_dataset / "Data_Entry.csv"
    rc, _, _ = _run(
        capsys,
        [
            "split",
            "--labels",
            labels,
            "--out",
            tmp_path / "o",
            "--images",
            phantom_dataset,
            "--absolute-paths",
        ],
    )
    assert rc == 0
    written = pd.read_csv(tmp_path / "o" / "train.csv")
    assert list(written.columns[:2]) == ["image", "path"]
    back = read_labels(tmp_path / "o" / "train.csv")
    assert all(p.startswith("/") and p.endswith(i) for p, i in zip(back["path"], back["image"], strict=True))
    rc, _, err = _run(capsys, ["split", "--labels", labels, "--out", tmp_path / "o2", "--absolute-paths"])
    assert rc == 2 and "--images" in err
