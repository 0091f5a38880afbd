"""Patient-level splits, official lists, leakage checks and the split/check-leakage commands."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from testkit import run_cli

from cxrdx.data.leakage import find_image_overlap, find_leaks
from cxrdx.data.splits import split_by_patient
from cxrdx.data.tables import LABEL_COLUMNS, read_labels, write_labels
from cxrdx.errors import ConfigError, DataError
from cxrdx.labels import FINDINGS


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


# --------------------------------------------------------------------------- real NIH data


@pytest.fixture(scope="module")
def nih(shared_data):
    return read_labels(shared_data / "nih" / "Data_Entry_2017_v2020.csv.gz", shared_data / "nih" / "images")


@pytest.mark.realdata
def test_real_split_and_leakage(nih, tmp_path, capsys):
    labels = tmp_path / "nih.csv"
    write_labels(nih, labels)
    rc, out, _ = run_cli(capsys, ["split", "--labels", labels, "--out", tmp_path / "s"])
    assert rc == 0 and "patients" in out
    files = [tmp_path / "s" / f"{k}.csv" for k in ("train", "val", "test")]
    rc, out, _ = run_cli(capsys, ["check-leakage", *files])
    assert rc == 0 and "no patient in more than one file" in out
    # plant one test patient's image into train
    train, test = pd.read_csv(files[0], dtype=str), pd.read_csv(files[2], dtype=str)
    planted = test.iloc[[0]]
    patient = planted["patient"].iloc[0]
    planted = planted.assign(image="planted_" + planted["image"])
    pd.concat([train, planted]).to_csv(files[0], index=False)
    rc, out, _ = run_cli(capsys, ["check-leakage", *files])
    assert rc == 1 and f"patient {patient}:" in out and "1 patient(s)" in out
    assert str(files[0]) in out and str(files[2]) in out


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
    rc, text, _ = run_cli(
        capsys, ["split", "--labels", phantom_dataset / "Data_Entry.csv", "--out", out, "--seed", "3"]
    )
    assert rc == 0 and "images" in text and "patients" in text
    parts = {k: read_labels(out / f"{k}.csv") for k in ("train", "val", "test")}
    assert sum(len(v) for v in parts.values()) == 120
    assert not find_leaks(parts)
    files = [out / f"{k}.csv" for k in ("train", "val", "test")]
    rc, text, _ = run_cli(capsys, ["check-leakage", *files])
    assert rc == 0 and "no patient in more than one file" in text
    # plant: copy a validation patient's row into train under a new image id
    train = pd.read_csv(files[0], dtype=str)
    val = pd.read_csv(files[1], dtype=str)
    row = val.iloc[[0]].assign(image="copy.png")
    pd.concat([train, row]).to_csv(files[0], index=False)
    rc, text, _ = run_cli(capsys, ["check-leakage", *files])
    assert rc == 1 and f"patient {row['patient'].iloc[0]}:" in text
    # and the same image in two files is reported too
    pd.concat([train, val.iloc[[0]]]).to_csv(files[0], index=False)
    rc, text, _ = run_cli(capsys, ["check-leakage", *files])
    assert rc == 1 and f"image {val['image'].iloc[0]}:" in text
    rc, _, err = run_cli(capsys, ["check-leakage", files[0]])
    assert rc == 2 and "at least two" in err


def test_cli_split_official_lists(phantom_dataset, tmp_path, capsys):
    df = read_labels(phantom_dataset / "Data_Entry.csv")
    test_patients = set(sorted(df["patient"].unique())[::3])
    (tmp_path / "test.txt").write_text("\n".join(df.loc[df["patient"].isin(test_patients), "image"]))
    (tmp_path / "tv.txt").write_text("\n".join(df.loc[~df["patient"].isin(test_patients), "image"]))
    rc, _, _ = run_cli(
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
    rc, _, err = run_cli(
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
    rc, _, _ = run_cli(
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
    rc, _, err = run_cli(capsys, ["split", "--labels", labels, "--out", tmp_path / "o2", "--absolute-paths"])
    assert rc == 2 and "--images" in err
