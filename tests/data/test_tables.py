"""Label tables (NIH, phantom, generic formats), lesion boxes and `cxrdx stats`."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from testkit import run_cli

from cxrdx.data.boxes import read_bboxes
from cxrdx.data.stats import label_stats
from cxrdx.data.tables import LABEL_COLUMNS, read_label_table, read_labels, write_labels
from cxrdx.errors import DataError, LabelError
from cxrdx.labels import FINDINGS, parse_finding_labels

# --------------------------------------------------------------------------- real NIH data


@pytest.fixture(scope="module")
def nih_table(shared_data):
    return read_label_table(
        shared_data / "nih" / "Data_Entry_2017_v2020.csv.gz", shared_data / "nih" / "images"
    )


@pytest.mark.realdata
def test_read_real_nih_table(nih_table):
    nih = nih_table.frame
    assert list(nih.columns) == list(LABEL_COLUMNS)
    assert nih_table.format == "nih" and nih_table.dataset == "nih"
    stats = label_stats(nih_table)
    assert stats["images"] == 112_120
    assert stats["patients"] == 30_805
    assert stats["positives"]["Hernia"] == 227
    assert stats["positives"]["Infiltration"] == 19_894
    assert stats["resolved"] == 200  # the 200 sample PNGs are found, the rest stay ""
    assert all(nih[f].dtype == np.float32 for f in FINDINGS)  # 1 / 0 / NaN; NIH labels all 14
    assert nih_table.findings == FINDINGS and not nih[list(FINDINGS)].isna().any().any()
    first = nih.iloc[0]
    assert first["image"] == "00000001_000.png" and first["patient"] == "1" and first["Cardiomegaly"] == 1
    assert set(nih["view"]) == {"PA", "AP"} and set(nih["sex"]) == {"M", "F"}


@pytest.mark.realdata
def test_cli_stats_real(shared_data, tmp_path, capsys):
    plot = tmp_path / "prev.png"
    rc, out, _ = run_cli(
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
    table = read_label_table(p)
    df = table.frame
    assert table.format == "finding-labels"
    assert df["image"].tolist() == ["a.png", "b.png", "c.png"]
    assert df["patient"].tolist() == ["7", "7", "p3"]  # numeric ids lose leading zeros
    assert df.loc[0, "Infiltration"] == 1 and df.loc[0, "Pleural_Thickening"] == 1
    assert df.loc[1, list(FINDINGS)].sum() == 0
    assert df["path"].tolist() == ["", "", ""]


MIXED = (
    "Image Index,Finding Labels,Patient ID\n"
    "a.png,Mass,1\n"
    "b.png,No Finding|Effusion,2\n"
    "c.png,Nodule| no finding ,3\n"
    "d.png,No Finding,4\n"
)


def test_mixed_no_finding_is_an_error_naming_line_image_and_cell(tmp_path, recwarn):
    p = tmp_path / "mixed.csv"
    p.write_text(MIXED)
    with pytest.raises(LabelError) as info:
        read_labels(p)
    msg = str(info.value)
    assert "mixed.csv" in msg and "2 'Finding Labels' cell(s)" in msg
    assert "CSV line 3 (image b.png): 'No Finding|Effusion'" in msg
    assert "line 4 (image c.png): 'Nodule| no finding '" in msg
    assert "--keep-mixed-no-finding" in msg and 'mixed_no_finding="keep"' in msg
    assert not [w for w in recwarn if "No Finding" in str(w.message)]
    with pytest.raises(ValueError, match="mixed_no_finding"):
        read_labels(p, mixed_no_finding="drop")


def test_mixed_no_finding_keep_warns_with_count(tmp_path):
    p = tmp_path / "mixed.csv"
    p.write_text(MIXED)
    with pytest.warns(
        UserWarning, match=r"mixed\.csv: 2 row\(s\) mix 'No Finding' with findings.*dropped"
    ) as rec:
        df = read_labels(p, mixed_no_finding="keep")
    assert len([w for w in rec if "No Finding" in str(w.message)]) == 1
    assert df.loc[0, "Mass"] == 1
    assert df.loc[1, "Effusion"] == 1 and df.loc[1, list(FINDINGS)].sum() == 1
    assert df.loc[2, "Nodule"] == 1 and df.loc[2, list(FINDINGS)].sum() == 1
    assert df.loc[3, list(FINDINGS)].sum() == 0


def test_cli_keep_mixed_no_finding(tmp_path, capsys):
    p = tmp_path / "mixed.csv"
    p.write_text(MIXED)
    rc, _, err = run_cli(capsys, ["stats", "--labels", p])
    assert rc == 2 and "cxrdx stats: error:" in err and "line 3" in err and "--keep-mixed-no-finding" in err
    with pytest.warns(UserWarning, match=r"2 row\(s\) mix 'No Finding'"):
        rc, out, _ = run_cli(capsys, ["stats", "--labels", p, "--keep-mixed-no-finding"])
    assert rc == 0 and "mixed.csv" in out
    rc, _, err = run_cli(capsys, ["split", "--labels", p, "--out", tmp_path / "s"])
    assert rc == 2 and "line 3" in err
    with pytest.warns(UserWarning, match="mix 'No Finding'"):
        rc, _, _ = run_cli(
            capsys,
            [
                "split",
                "--labels",
                p,
                "--out",
                tmp_path / "s",
                "--val",
                "0.25",
                "--test",
                "0.25",
                "--keep-mixed-no-finding",
            ],
        )
    assert rc == 0 and (tmp_path / "s" / "train.csv").is_file()
    rc, _, err = run_cli(capsys, ["prepare", "--labels", p, "--out", tmp_path / "cache", "--no-progress"])
    assert rc == 2 and "line 3" in err


def test_generic_binary_columns_gz_and_round_trip(tmp_path):
    header = ["Path", "Patient", "Age", "No Finding", "site"] + [f.upper() for f in FINDINGS]
    header[header.index("INFILTRATION")] = "Infiltrate"
    header[header.index("PLEURAL_THICKENING")] = "pleural thickening"
    rows = [["x/1.png", "A", "61", "0", "s"] + ["1" if i % 3 == 0 else "0" for i in range(14)]]
    rows.append(["x/2.png", "B", "", "1", "s"] + ["0.0"] * 14)
    p = tmp_path / "bin.csv.gz"
    with gzip.open(p, "wt") as fh:
        fh.write("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    table = read_label_table(p)
    df = table.frame
    assert table.format == "binary"
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
    "no_labels": ("image,patient,site\na.png,1,x\n", DataError, r"unknown label table layout.*--dataset"),
    "no_labels_forced": ("image,patient,site\na.png,1,x\n", DataError, r"Finding Labels.*finding columns"),
    "duplicate": (
        "image,patient,Finding Labels\na.png,1,Mass\na.png,1,Mass\nb.png,2,Mass\n",
        DataError,
        r"a\.png",
    ),
    "not_a_code": (
        "image,patient," + ",".join(FINDINGS) + "\na.png,1," + ",".join(["2"] + ["0"] * 13) + "\n",
        DataError,
        r"t\.csv.*column 'Atelectasis'.*'2'.*line\(s\) 2",
    ),
    "escaping_path": ("image,patient,Mass\n../../etc/x.png,1,1\n", DataError, r"t\.csv.*escape.*line 2"),
    "absolute_path": ("image,patient,Mass\n/etc/x.png,1,1\n", DataError, r"escape.*'/etc/x\.png'"),
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
    forced = ["--dataset", "generic"] if case.endswith("_forced") else []
    with pytest.raises(error, match=pattern):
        read_labels(p, dataset="generic" if forced else None)
    rc, _, err = run_cli(capsys, ["stats", "--labels", p, *forced])
    assert rc == 2 and "cxrdx stats: error:" in err and "t.csv" in err


def test_missing_file_and_bad_boxes(tmp_path, capsys):
    rc, _, err = run_cli(capsys, ["stats", "--labels", tmp_path / "absent.csv"])
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
