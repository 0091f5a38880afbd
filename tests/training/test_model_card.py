"""A model trained on phantoms says so: synth -> prepare -> train puts it in the checkpoint's model card."""

from __future__ import annotations

import pandas as pd

from cxrdx.data.prepare import prepare_cache
from cxrdx.inference.formats import format_table
from cxrdx.inference.prediction import Prediction
from cxrdx.model.card import NO_EVALUATION_BANNER, PHANTOM_BANNER, banners, card_lines
from cxrdx.model.checkpoint import read_checkpoint_meta
from cxrdx.phantom.dataset import write_dataset
from cxrdx.training.config import TrainConfig
from cxrdx.training.loop import train


def test_phantom_training_is_recorded_in_words_and_shown_as_a_banner(tmp_path):
    ds = write_dataset(tmp_path / "phantoms", n=48, size=32, seed=1)
    table = pd.read_csv(ds / "Data_Entry.csv")
    train_rows = table["Patient ID"].isin(sorted(set(table["Patient ID"]))[::4])  # patient-disjoint
    table[~train_rows].to_csv(tmp_path / "train.csv", index=False)
    table[train_rows].to_csv(tmp_path / "val.csv", index=False)
    n_train, n_val = int((~train_rows).sum()), int(train_rows.sum())
    cache = tmp_path / "cache"
    prepare_cache([tmp_path / "train.csv", tmp_path / "val.csv"], cache, size=32, images=ds / "images",
                  workers=0, progress=False)  # fmt: skip
    cfg = TrainConfig(data=str(cache), out=str(tmp_path / "run"), arch="densenet-tiny", epochs=1,
                      batch_size=16, progress=False, workers=0, threads=1, deterministic=True)  # fmt: skip
    train(cfg)
    meta = read_checkpoint_meta(tmp_path / "run" / "last.safetensors")
    card = meta.model_card
    assert card["dataset"] == "cxrdx synthetic phantoms" and card["kind"] == "phantom"
    assert card["images"] == 48 and card["split"] == {"train": n_train, "val": n_val} and card["epochs"] == 1
    assert card["patients"] == table["Patient ID"].nunique()
    assert banners(meta)[:2] == [PHANTOM_BANNER, NO_EVALUATION_BANNER]
    assert "trained on: cxrdx synthetic phantoms (phantom data)" in card_lines(meta)
    text = format_table([Prediction("x.png", {"Effusion": 0.5})], None, banners=banners(meta))
    assert text.startswith("!" * 78) and PHANTOM_BANNER in text
