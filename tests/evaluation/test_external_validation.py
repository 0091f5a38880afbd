"""External validation: a model evaluated on a dataset with another label set (shared findings only, the
rest skipped with the reason), source thresholds moved to the target (sens/spec shift), `cxrdx compare`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from testkit import run_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from test_partial_labels import _partial_cache  # noqa: E402
from test_train import make_toy_cache, tiny_config  # noqa: E402

from cxrdx.evaluation.evaluate import EvaluateConfig, evaluate  # noqa: E402
from cxrdx.labels import FINDINGS  # noqa: E402
from cxrdx.training.loop import train  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("ext")
    a = make_toy_cache(root / "a")
    result = train(tiny_config(a, root / "run", epochs=2))
    return root, a, result.best_path


def test_external_evaluation_skips_unlabelled_outputs_and_moves_thresholds(model, capsys):
    root, a, ckpt = model
    evaluate(
        EvaluateConfig(
            weights=str(ckpt),
            data=str(a),
            split="val",
            val=str(a),
            val_split="train",
            out=str(root / "int"),
            n_boot=50,
            progress=False,
            device="cpu",
            out_weights=str(root / "with_thresholds.safetensors"),
        )
    )
    internal = json.loads((root / "int" / "metrics.json").read_text())  # as a user reads it
    assert internal["skipped"] == {} and set(internal["classes"]) == set(FINDINGS)
    assert internal["threshold_shift"]["Cardiomegaly"]["sensitivity_source"] is not None
    b = _partial_cache(root / "b", ["Cardiomegaly", "Effusion"], seed=5, uncertain_every=4)
    evaluate(
        EvaluateConfig(
            weights=str(root / "with_thresholds.safetensors"),
            data=str(b),
            split="val",
            out=str(root / "ext"),
            val_split="none",  # no validation on the target: the checkpoint's (source) thresholds apply
            n_boot=50,
            progress=False,
            device="cpu",
        )
    )
    external = json.loads((root / "ext" / "metrics.json").read_text())
    assert set(external["classes"]) == {"Cardiomegaly", "Effusion"}
    assert external["skipped"]["Mass"].startswith("not labelled in")
    card = external["classes"]["Effusion"]
    assert (
        card["n"] == external["labelled"]["Effusion"]["n_labelled"] < 32
    )  # NaN (uncertain ignored) left out
    assert external["classes"]["Cardiomegaly"]["auroc_ci"] is not None
    shift = external["source_thresholds"]["shift"]["Cardiomegaly"]
    assert shift["sensitivity_source"] is not None and shift["sensitivity_target"] is not None
    assert shift["sensitivity_shift"] == pytest.approx(
        shift["sensitivity_target"] - shift["sensitivity_source"]
    )
    rc, out, _ = run_cli(
        capsys,
        ["compare", "--reports", root / "int", root / "ext", "--names", "A", "B", "--out", root / "cmp"],
    )
    assert rc == 0 and "mean AUROC drop A -> B" in out
    result = json.loads((root / "cmp" / "comparison.json").read_text())
    assert "drop" in result["findings"]["Cardiomegaly"]["B"]
    assert result["findings"]["Mass"]["B"]["skipped"].startswith("not labelled")
    assert (root / "cmp" / "comparison.png").stat().st_size > 1000


def test_lateral_films_of_an_external_table_are_left_out_by_default_and_noted(model):
    import pandas as pd

    root, _, ckpt = model
    c = make_toy_cache(root / "c", seed=7)
    index = pd.read_csv(c / "index.csv")
    index.loc[index.index % 4 == 0, "view"] = "LL"  # a quarter of the films are laterals
    index.to_csv(c / "index.csv", index=False)
    common = dict(weights=str(ckpt), data=str(c), split="val", val_split="none", n_boot=0, progress=False)
    frontal = evaluate(EvaluateConfig(out=str(root / "frontal"), device="cpu", **common)).to_json()
    every = evaluate(EvaluateConfig(out=str(root / "every"), device="cpu", views=None, **common)).to_json()
    n_val = int((index["split"] == "val").sum())
    n_lateral = int(((index["split"] == "val") & (index["view"] == "LL")).sum())
    assert every["classes"]["Cardiomegaly"]["n"] == n_val
    assert frontal["classes"]["Cardiomegaly"]["n"] == n_val - n_lateral > 0
    assert any(f"{n_lateral} LL" in note for note in frontal["notes"])
