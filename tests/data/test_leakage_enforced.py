"""Patient leakage is refused by prepare, train and evaluate (the patients listed), unless explicitly allowed."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from testkit import run_cli

from cxrdx.data.leakage import check_patient_overlap
from cxrdx.errors import DataError
from cxrdx.model.checkpoint import read_checkpoint


def test_overlap_is_refused_with_the_patients_named_or_returned_when_allowed():
    a = pd.DataFrame({"patient": ["p1", "p2", "p3"]})
    b = pd.DataFrame({"patient": ["p3", "p4"]})
    assert check_patient_overlap({"train": a, "val": a.iloc[:0]}, allow=False, source="x") is None
    with pytest.raises(DataError, match=r"1 patient\(s\).*p3 \(in train and val\).*--allow-patient-overlap"):
        check_patient_overlap({"train": a, "val": b}, allow=False, source="x")
    text = check_patient_overlap({"train": a, "val": b}, allow=True, source="x")
    assert text.startswith("x: 1 patient(s)") and "p3" in text


@pytest.fixture
def leaky_splits(phantom_dataset, tmp_path, capsys):
    """`cxrdx split` output with one validation and one test patient planted into train."""
    out = tmp_path / "splits"
    rc, _, _ = run_cli(capsys, ["split", "--labels", phantom_dataset / "Data_Entry.csv", "--out", out])
    assert rc == 0
    files = {k: out / f"{k}.csv" for k in ("train", "val", "test")}
    train, val, test = (pd.read_csv(files[k], dtype=str) for k in ("train", "val", "test"))
    planted = pd.concat([val.iloc[[0]], test.iloc[[0]]])  # the same images, listed in train too
    pd.concat([train, planted]).to_csv(files["train"], index=False)
    leaked = [val["patient"].iloc[0], test["patient"].iloc[0]]
    return files, leaked, phantom_dataset / "images"


def test_prepare_train_evaluate_refuse_a_leak_and_record_an_allowed_one(leaky_splits, tmp_path, capsys):
    files, leaked, images = leaky_splits
    cache = tmp_path / "cache"
    prepare = ["prepare", "--labels", *files.values(), "--images", images, "--size", "32", "--out", cache,
               "--workers", "0", "--no-progress"]  # fmt: skip
    rc, _, err = run_cli(capsys, prepare)
    assert rc == 2 and "patient leakage" in err and leaked[0] in err and "--allow-patient-overlap" in err
    assert not (cache / "images.npy").exists()  # refused before any decoding
    rc, _, err = run_cli(capsys, [*prepare, "--allow-patient-overlap"])
    assert rc == 0 and "WARNING" in err
    assert leaked[0] in json.loads((cache / "cache.json").read_text())["patient_overlap"]

    train = ["train", "--data", cache, "--out", tmp_path / "run", "--arch", "densenet-tiny", "--epochs", "1",
             "--batch-size", "8", "--max-steps-per-epoch", "1", "--workers", "0", "--threads", "1", "--no-progress"]  # fmt: skip
    rc, _, err = run_cli(capsys, train)
    assert rc == 2 and "patient leakage" in err and leaked[0] in err  # train/val share the planted patient
    rc, _, err = run_cli(capsys, [*train, "--allow-patient-overlap"])
    assert rc == 0 and "WARNING" in err
    _, meta = read_checkpoint(tmp_path / "run" / "best.safetensors")
    assert leaked[0] in meta.provenance["patient_overlap"]

    # evaluate: validation data sharing a patient with the test data is refused before any inference
    val = pd.read_csv(files["val"], dtype=str)
    test = pd.read_csv(files["test"], dtype=str)
    pd.concat([val, test.iloc[[0]]]).to_csv(tmp_path / "leaky_val.csv", index=False)
    evaluate = ["evaluate", "--weights", tmp_path / "run" / "best.safetensors", "--data", files["test"],
                "--images", images, "--val", tmp_path / "leaky_val.csv", "--out", tmp_path / "report",
                "--n-boot", "0", "--no-progress", "--no-write-thresholds"]  # fmt: skip
    rc, _, err = run_cli(capsys, evaluate)
    assert rc == 2 and "patient leakage" in err and leaked[1] in err
    assert not (tmp_path / "report" / "predictions.csv").exists()
    rc, _, _ = run_cli(capsys, [*evaluate, "--allow-patient-overlap"])
    assert rc == 0
    notes = json.loads((tmp_path / "report" / "metrics.json").read_text())["notes"]
    assert any("patient leakage" in n and leaked[1] in n for n in notes)
