"""Checkpoint metadata without torch, an image given as --weights, and the model card's words."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from testkit import run_cli

from cxrdx.errors import CheckpointError
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.model.card import (
    NO_EVALUATION_BANNER,
    PHANTOM_BANNER,
    banners,
    never_reached,
    threshold_text,
    training_card,
)
from cxrdx.model.checkpoint import (
    METADATA_KEY,
    CheckpointMeta,
    read_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from cxrdx.model.networks import build_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "m.safetensors"
    torch.manual_seed(0)
    card = {"dataset": "cxrdx synthetic phantoms", "kind": "phantom", "images": 10, "epochs": 1}
    meta = CheckpointMeta(architecture="densenet-tiny", preprocessing=Preprocessing(size=32), model_card=card)
    save_checkpoint(path, build_model("densenet-tiny"), meta)
    return path


def test_metadata_alone_reads_without_torch_and_equals_the_full_read(ckpt):
    assert read_checkpoint_meta(ckpt) == read_checkpoint(ckpt)[1]
    code = (
        "import sys; from cxrdx.model.checkpoint import read_checkpoint_meta; "
        f"m = read_checkpoint_meta({str(ckpt)!r}); "
        "assert m.model_card['kind'] == 'phantom'; "
        "assert not {'torch', 'monai', 'safetensors'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_checkpoints_without_a_model_card_still_load(ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    data = json.loads(CheckpointMeta(architecture="densenet-tiny").to_json())
    del data["model_card"]  # written before the field existed
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(ckpt)), str(old), metadata={METADATA_KEY: json.dumps(data)})
    assert read_checkpoint_meta(old).model_card == {}


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "DICOM"])
def test_an_image_given_as_weights_is_named_as_one(tmp_path, capsys, kind):
    scan = tmp_path / f"scan.{kind.lower()}"
    if kind == "DICOM":
        scan.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    else:
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(scan, format=kind)
    for read in (read_checkpoint_meta, read_checkpoint):
        with pytest.raises(CheckpointError, match=f"this is a {kind} image, not a model checkpoint"):
            read(scan)
    rc, _, err = run_cli(capsys, ["predict", "--weights", scan, scan])
    assert rc == 2 and "image, not a model checkpoint" in err and "header too large" not in err


def test_a_truncated_checkpoint_is_reported_as_one(ckpt, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(ckpt.read_bytes()[:5])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint_meta(cut)


def test_banners_for_phantom_unevaluated_and_never_reached(ckpt):
    meta = read_checkpoint_meta(ckpt)
    assert banners(meta) == [PHANTOM_BANNER, NO_EVALUATION_BANNER]
    meta.evaluation = {"auroc": {"Mass": 0.8}, "mean_auroc": 0.8}
    meta.thresholds = {"Emphysema": 0.99999988, "Mass": 0.4}
    out = banners(meta)
    assert out[0] == PHANTOM_BANNER and len(out) == 2 and "Emphysema 0.99999988" in out[1]
    assert never_reached(meta.thresholds) == ["Emphysema"]


def test_threshold_text_shows_enough_digits():
    assert threshold_text(0.4123) == "0.412"
    assert threshold_text(0.99999988) == "0.99999988"
    assert float(threshold_text(0.9999999)) < 1 and threshold_text(None) == "-"


def test_older_checkpoints_get_their_card_from_provenance():
    meta = CheckpointMeta(
        provenance={"dataset": "/x/demo/phantoms/cache", "epoch": 3, "splits": {"train": 5}}
    )
    card = training_card(meta)
    assert card["kind"] == "phantom" and card["epochs"] == 3 and card["split"] == {"train": 5}
    imported = training_card(CheckpointMeta(source={"kind": "xrv", "file": "nih.pt"}))
    assert imported["kind"] == "real" and "torchxrayvision" in imported["dataset"]


def test_predict_table_shows_banners_and_flags_a_threshold_never_reached():
    from cxrdx.inference.formats import format_table
    from cxrdx.inference.prediction import Prediction

    pred = Prediction("x.png", {"Emphysema": 0.9999, "Mass": 0.5}, {"Emphysema": False, "Mass": True})
    text = format_table([pred], {"Emphysema": 0.99999988, "Mass": 0.4}, banners=[PHANTOM_BANNER])
    assert text.splitlines()[1] == f"!! {PHANTOM_BANNER}"
    row = next(line for line in text.splitlines() if "Emphysema" in line)
    assert "0.99999988  neg (never reached)" in row  # p shows as 1.000: the threshold says why "neg"
