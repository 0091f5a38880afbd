"""`cxrdx explain --boxes` on a handful of pairs says the rates are an example, not a measurement."""

from __future__ import annotations

import pandas as pd
from testkit import run_cli, tiny_checkpoint


def test_few_scored_pairs_are_called_an_example(phantom_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cache"))
    ckpt = tiny_checkpoint(tmp_path / "m.safetensors", size=64)
    boxed = pd.read_csv(phantom_dataset / "BBox_List.csv")["Image Index"].drop_duplicates()
    one = phantom_dataset / "images" / boxed.iloc[0]
    argv = ["explain", "--weights", ckpt, one, "--boxes", phantom_dataset / "BBox_List.csv",
            "--out", tmp_path / "x", "--top-k", "1", "--quiet", "--device", "cpu"]  # fmt: skip
    rc, out, _ = run_cli(capsys, argv)
    assert rc == 0 and "an example, not a measurement" in out
    assert " -> " not in out  # --quiet: no line per overlay
