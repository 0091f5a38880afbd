"""Tables that are not label CSVs are named for what they are: JSON, an image, a PDF, a box table."""

from __future__ import annotations

import pytest
from testkit import run_cli

from cxrdx.data.tables import read_labels
from cxrdx.errors import DataError


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("labels.json", b'{"images": [{"file": "a.png", "labels": ["Mass"]}]}\n', "is JSON, not a CSV table"),
        ("labels.csv", b'[{"image": "a.png"}]', "is JSON, not a CSV table"),
        ("scan.csv", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "is a PNG image, not a CSV table"),
        ("paper.csv", b"%PDF-1.7\n%binary", "looks like a PDF document"),
        ("labels.csv", b"PK\x03\x04" + b"\0" * 40, "ZIP archive"),
    ],
)
def test_non_csv_labels_say_what_the_file_is(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_labels(path)
    rc, _, err = run_cli(capsys, ["stats", "--labels", path])
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert "ParserError" not in err and "pandas" not in err


def test_a_malformed_csv_gets_a_line_number_not_a_pandas_error(tmp_path, capsys):
    path = tmp_path / "broken.csv"
    path.write_text('image,patient,Finding Labels\na.png,1,Mass\n"b.png,2,"Mass\nc.png,3,x,y,z\n')
    rc, _, err = run_cli(capsys, ["stats", "--labels", path])
    assert rc == 2 and "ParserError" not in err and "Error tokenizing" not in err


@pytest.mark.parametrize(
    "header",
    ["Image Index,Finding Label,Bbox [x,y,w,h]", "image,finding,x,y,w,h"],  # NIH's and cxrdx's box tables
)
def test_a_box_table_as_labels_is_recognised(tmp_path, capsys, header):
    path = tmp_path / "BBox_List_2017.csv"
    path.write_text(f"{header}\n00000001_000.png,Mass,10,20,30,40\n")
    rc, _, err = run_cli(capsys, ["prepare", "--labels", path, "--out", tmp_path / "c"])
    assert rc == 2 and "this looks like BBox_List_2017.csv" in err and "pass it as --boxes" in err
    assert not (tmp_path / "c").exists()


def test_the_real_nih_box_table_as_labels_is_recognised(shared_data):
    with pytest.raises(DataError, match="pass it as --boxes"):
        read_labels(shared_data / "nih" / "BBox_List_2017.csv.gz")
