"""CSV formula injection (issue 28, item 7): no cell cxrdx writes from user text runs in a spreadsheet.

File names (and label-table ids, patients, warnings, errors) that start with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return are written with a leading ``'`` in `predict
--format csv` (printed and streamed), evaluate's predictions.csv and prepare's
not_cached.csv; `--resume` still recognises the images it wrote.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pandas as pd
import pytest
from corpus.hostile_headers import FORMULAS
from PIL import Image
from testkit import run_cli, tiny_checkpoint

from cxrdx.spreadsheet import original_cell, safe_cell

NAMES = [f"{f}.png" for f in FORMULAS]


def _formula(cell: str) -> bool:
    return cell[:1] in ("=", "+", "-", "@", "\t", "\r")


def test_safe_cell_prefixes_formulas_and_round_trips():
    for text in [*NAMES, "plain.png", "'quoted.png", "'=x", "'", "", "a=b.png"]:
        written = safe_cell(text)
        assert not _formula(written) and original_cell(written) == text
    assert [safe_cell(n) for n in NAMES] == [f"'{n}" for n in NAMES]
    assert safe_cell("plain.png") == "plain.png" and safe_cell(-1.5) == -1.5 and safe_cell(None) is None


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "onnx"))


@pytest.fixture()
def hostile_folder(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in NAMES:
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(folder / name)
    (folder / "=cmd_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")  # its error names it too
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(folder / "mid\r=SUM(1).png")
    return folder


def _cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def test_predict_csv_writes_no_formula_and_resume_knows_the_names(
    hostile_folder, tmp_path, capsys, monkeypatch
):
    ckpt = tiny_checkpoint(tmp_path / "m.safetensors", 32)
    monkeypatch.chdir(hostile_folder)  # the files by their bare names: the image cell starts with them
    files = sorted(p.name for p in hostile_folder.iterdir())
    base = ["predict", "--weights", ckpt, "--format", "csv", "--backend", "torch"]
    rc, out, _ = run_cli(capsys, [*base, "--", *files])  # "--": "-2+3.png" is a file, not an option
    assert rc == 1  # the broken file
    rows = _cells(out)[1:]
    assert len(rows) == len(NAMES) + 2, rows  # a \r inside a name stays in its cell
    for row in rows:
        assert not any(_formula(cell) for cell in row), row
    assert {original_cell(r[0]) for r in rows} == {*NAMES, "=cmd_broken.png", "mid\r=SUM(1).png"}
    streamed = tmp_path / "out.csv"
    rc, _, _ = run_cli(capsys, [*base, "--out", streamed, "--", *files])
    first = streamed.read_text()
    assert not any(_formula(cell) for row in _cells(first) for cell in row)
    rc, _, err = run_cli(capsys, [*base, "--out", streamed, "--resume", "--", *files])
    assert streamed.read_text() == first, "--resume did not recognise the names it wrote"


def test_evaluate_predictions_csv_writes_no_formula(tmp_path, capsys):
    from evaluation.test_evaluate_end_to_end import _tiny_cache, _tiny_checkpoint

    cache = _tiny_cache(tmp_path / "cache", n=30)
    index = pd.read_csv(cache / "index.csv")
    index["image"] = [f"{FORMULAS[i % len(FORMULAS)]}{i}.png" for i in range(len(index))]
    index["patient"] = [f'=HYPERLINK("evil.example?{i}")' for i in range(len(index))]
    index.to_csv(cache / "index.csv", index=False)
    out = tmp_path / "report"
    args = ["evaluate", "--weights", _tiny_checkpoint(tmp_path / "m.safetensors"), "--data", cache]
    rc, _, err = run_cli(capsys, [*args, "--out", out, "--n-boot", "5", "--no-progress"])
    assert rc == 0, err
    for name in ("predictions.csv", "val_predictions.csv"):
        rows = _cells((out / name).read_text())
        assert len(rows) == 11 and all(not _formula(c) for row in rows for c in row), rows[:3]
        assert rows[1][0].startswith("'")


def test_prepare_not_cached_csv_writes_no_formula(tmp_path):
    from cxrdx.data.prepare import NOT_CACHED_FILE, _write_not_cached

    rows = [{"image": n, "path": f"/d/{n}", "split": "train", "problem": "-broken"} for n in NAMES]
    _write_not_cached(tmp_path, rows)
    cells = _cells((tmp_path / NOT_CACHED_FILE).read_text())
    assert len(cells) == len(NAMES) + 1 and not any(_formula(c) for row in cells for c in row)
    assert json.dumps(cells)  # plain strings
