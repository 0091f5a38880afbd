"""Partial labels: the masked loss, class weights over labelled images, caches with any finding set,
uncertain policies at load time, and training on several datasets at once (`--data A B`)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import make_toy_cache, tiny_config

from cxrdx.data.cache import open_cache
from cxrdx.errors import ConfigError
from cxrdx.labels import FINDINGS
from cxrdx.metrics.auroc import auroc_with_ci, per_finding_auroc
from cxrdx.metrics.thresholds import choose_thresholds
from cxrdx.model.checkpoint import read_checkpoint
from cxrdx.training.loop import train
from cxrdx.training.loss import WeightedBCEWithLogits, class_weights


def test_nan_targets_are_masked_and_weights_use_labelled_images_only():
    y = np.array([[1, np.nan], [0, 0], [1, np.nan], [np.nan, 1]], dtype=np.float32)
    w_pos, w_neg = class_weights(y)
    np.testing.assert_allclose(w_neg, [2 / 3, 0.5])  # positives among the labelled images
    np.testing.assert_allclose(w_pos, [1 / 3, 0.5])
    assert class_weights(np.full((3, 1), np.nan)) == (pytest.approx([0.0]), pytest.approx([0.0]))
    logits = torch.randn(4, 2, requires_grad=True)
    loss = WeightedBCEWithLogits(w_pos, w_neg, reduction="none")(logits, torch.as_tensor(y))
    # equals the loss with the unlabelled cells' terms left out
    mask = torch.as_tensor(~np.isnan(y))
    parts = []
    for c in range(2):
        one = WeightedBCEWithLogits(w_pos[c : c + 1], w_neg[c : c + 1], reduction="none")
        parts.append(one(logits[:, c : c + 1], torch.as_tensor(np.nan_to_num(y[:, c : c + 1]))) * mask[:, c])
    torch.testing.assert_close(loss, parts[0] + parts[1])
    loss.sum().backward()
    assert logits.grad[0, 1] == 0 and logits.grad[3, 0] == 0 and torch.isfinite(logits.grad).all()


def test_metrics_use_labelled_examples_per_finding():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 2)) < 0.3).astype(np.float64)
    s = y + rng.normal(0, 0.7, size=y.shape)
    y_nan = y.copy()
    y_nan[:100, 1] = np.nan
    s_bad = s.copy()
    s_bad[:100, 1] = -y[:100, 1]  # scores on unlabelled rows must not count
    got = per_finding_auroc(y_nan, s_bad, ["A", "B"])
    ref = per_finding_auroc(y[100:], s[100:], ["A", "B"])
    assert got["B"] == pytest.approx(ref["B"])
    ci = auroc_with_ci(y_nan, s_bad, [str(i // 2) for i in range(200)], ["A", "B"], n_boot=50)
    assert ci["B"].n_pos + ci["B"].n_neg == 100 and ci["B"].auroc == pytest.approx(ref["B"])
    th = choose_thresholds(y_nan, s_bad, ["A", "B"])
    assert th["B"] == choose_thresholds(y[100:], s[100:], ["A", "B"])["B"]


def _partial_cache(out, findings, seed=1, uncertain_every=0):
    """The toy cache relabelled to ``findings`` only (NaN/-1 sprinkled), as prepare writes it."""
    make_toy_cache(out, seed=seed)
    index = pd.read_csv(out / "index.csv")
    keep = [f for f in FINDINGS if f in findings]
    index = index.drop(columns=[f for f in FINDINGS if f not in findings]).astype({f: float for f in keep})
    index["Fracture"] = 0.0
    if uncertain_every:
        index.loc[::uncertain_every, "Effusion"] = -1.0
        index.loc[1 :: uncertain_every * 2, "Effusion"] = np.nan
    index.to_csv(out / "index.csv", index=False)
    info = json.loads((out / "cache.json").read_text())
    info["findings"] = [*keep, "Fracture"]
    (out / "cache.json").write_text(json.dumps(info))
    return out


def test_cache_findings_and_uncertain_policy(tmp_path):
    path = _partial_cache(tmp_path / "b", ["Cardiomegaly", "Effusion"], uncertain_every=5)
    ignore = open_cache(path)
    assert ignore.findings == ("Cardiomegaly", "Effusion", "Fracture")
    assert ignore.labels.shape == (128, 3) and np.isnan(ignore.labels[0, 1])
    assert open_cache(path, uncertain="ones").labels[0, 1] == 1
    assert open_cache(path, uncertain="zeros").labels[0, 1] == 0
    wide = ignore.labels_for(list(FINDINGS))
    assert np.isnan(wide[:, FINDINGS.index("Mass")]).all()


def test_train_on_two_datasets_with_different_label_sets(tmp_path):
    a = make_toy_cache(tmp_path / "a")  # NIH's 14
    b = _partial_cache(tmp_path / "b", ["Cardiomegaly", "Effusion"], seed=2, uncertain_every=4)
    info = json.loads((b / "cache.json").read_text())
    info["origin"] = {"dataset": "B films", "kind": "phantom"}  # as prepare records it; a's cache has none
    (b / "cache.json").write_text(json.dumps(info))
    cfg = tiny_config(a, tmp_path / "run", epochs=1, uncertain="ones")
    cfg.data = [str(a), str(b)]
    result = train(cfg)
    _, meta = read_checkpoint(result.best_path)
    assert meta.labels == [*FINDINGS, "Fracture"]  # the union, NIH's 14 first
    # the card joins the datasets' origins: a's looked for again (no marker, no known file: its folder's name)
    assert meta.model_card["dataset"] == "a + B films" and meta.model_card["kind"] == "phantom+unknown"
    labels = meta.provenance["labels"]
    assert labels["uncertain"] == "ones" and labels["views"] == "frontal"
    assert [d["findings"] for d in labels["datasets"]] == [
        list(FINDINGS),
        ["Cardiomegaly", "Effusion", "Fracture"],
    ]
    assert [d["train"] for d in labels["datasets"]] == [96, 96]
    only = tiny_config(b, tmp_path / "run2", epochs=1, labels=["Effusion", "Cardiomegaly"])
    _, meta2 = read_checkpoint(train(only).best_path)
    assert meta2.labels == ["Effusion", "Cardiomegaly"]
    with pytest.raises(ConfigError, match="Mass: no training dataset labels"):
        train(tiny_config(b, tmp_path / "run3", epochs=1, labels=["Mass"]))


def test_cli_train_several_datasets_records_the_policy(tmp_path, capsys):
    from cxrdx.cli import main

    a = make_toy_cache(tmp_path / "a")
    b = _partial_cache(tmp_path / "b", ["Cardiomegaly", "Effusion"], seed=3, uncertain_every=3)
    argv = ["train", "--data", a, b, "--out", tmp_path / "run", "--arch", "densenet-tiny", "--epochs", "1",
            "--batch-size", "16", "--no-progress", "--workers", "0", "--threads", "1",
            "--uncertain", "zeros", "--views", "PA"]  # fmt: skip
    assert main([str(x) for x in argv]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"] == [str(a), str(b)] and config["uncertain"] == "zeros" and config["views"] == "PA"
    _, meta = read_checkpoint(tmp_path / "run" / "best.safetensors")
    assert meta.provenance["labels"]["uncertain"] == "zeros" and "Fracture" in meta.labels
    with pytest.raises(ConfigError, match="--uncertain 'maybe'"):
        tiny_config(a, tmp_path / "r2", uncertain="maybe").validate()
