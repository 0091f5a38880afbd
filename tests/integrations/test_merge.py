"""The parts of a ``--engine ray`` run merged into one file: each image once, a torn row left out (no Ray needed)."""

from __future__ import annotations

import csv
import json

import pytest

from cxrdx.inference.formats import format_csv
from cxrdx.inference.prediction import Prediction
from cxrdx.inference.stream import ResultStream
from cxrdx.integrations.merge import merge_parts, parts_done, read_out_done

LABELS = ["Atelectasis", "Effusion"]
THRESHOLDS = {"Effusion": 0.5}


def pred(name: str, p: float) -> Prediction:
    probs = {"Atelectasis": p, "Effusion": 1 - p}
    return Prediction(name, probs, {"Effusion": probs["Effusion"] >= 0.5}, calibration="prior")


def write_part(path, preds, torn: bool = False) -> None:
    with ResultStream(path, "jsonl", LABELS, THRESHOLDS, False) as stream:
        for p in preds:
            stream.add(p)
    if torn:
        with open(path, "a") as fh:
            fh.write('{"image": "torn.png", "probab')  # a crash mid-row


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_merge_keeps_each_image_once(tmp_path, fmt):
    parts = tmp_path / f"out.{fmt}.parts"
    parts.mkdir()
    write_part(parts / "run-0000.jsonl", [pred("a.png", 0.1), pred("b.png", 0.2)], torn=True)
    write_part(parts / "run-0001.jsonl", [pred("b.png", 0.2), pred("c.png", 0.3)])  # b delivered twice
    assert parts_done(parts) == {"a.png", "b.png", "c.png"}
    out = tmp_path / f"out.{fmt}"
    assert merge_parts(parts, out, fmt, LABELS, THRESHOLDS, False, keep_out=False) == 3
    assert not parts.exists()
    assert read_out_done(out, fmt, LABELS, THRESHOLDS, False) == {"a.png", "b.png", "c.png"}
    if fmt == "csv":  # the text a single-process run writes for the same predictions
        assert out.read_text() == format_csv(
            [pred("a.png", 0.1), pred("b.png", 0.2), pred("c.png", 0.3)], LABELS, THRESHOLDS
        )

    # --resume: the earlier OUT's rows first, then the new parts' rows it does not hold
    parts.mkdir()
    write_part(parts / "run-0000.jsonl", [pred("c.png", 0.3), pred("d.png", 0.4)])
    assert merge_parts(parts, out, fmt, LABELS, THRESHOLDS, False, keep_out=True) == 1
    if fmt == "parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(out).to_pylist()
        assert rows[3]["Effusion"] == pytest.approx(0.6) and rows[3]["Effusion_positive"] is True
    elif fmt == "csv":
        with open(out, newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in rows] == ["a.png", "b.png", "c.png", "d.png"]
