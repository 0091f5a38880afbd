"""The checkpoint format: safetensors + metadata round trip, in-place metadata updates, clear refusals."""

import json

import pytest
import torch

from cxrdx.errors import CheckpointError
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.labels import FINDINGS
from cxrdx.model.checkpoint import (
    METADATA_KEY,
    CheckpointMeta,
    load_checkpoint,
    save_checkpoint,
    update_checkpoint_meta,
)
from cxrdx.model.networks import build_model


def tiny_meta(**kw) -> CheckpointMeta:
    return CheckpointMeta(architecture="densenet-tiny", preprocessing=Preprocessing(size=32), **kw)


def test_checkpoint_round_trip_keeps_weights_and_metadata(tmp_path):
    model = build_model("densenet-tiny").eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, tiny_meta(provenance={"epoch": 3}))
    loaded, meta = load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert meta.labels == list(FINDINGS) and meta.provenance["epoch"] == 3
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves nothing behind


def test_update_metadata_records_thresholds(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, build_model("densenet-tiny"), tiny_meta())
    update_checkpoint_meta(path, lambda m: setattr(m, "thresholds", {"Mass": 0.3}))
    assert load_checkpoint(path)[1].thresholds == {"Mass": 0.3}


def test_pickle_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="cxrdx import"):
        load_checkpoint(path)


def test_truncated_and_mismatched_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_checkpoint(path, build_model("densenet-tiny"), tiny_meta())
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.safetensors")

    tensors = {k: v.clone() for k, v in build_model("densenet-tiny", num_classes=13).state_dict().items()}
    save_file(tensors, tmp_path / "shape.safetensors", metadata={METADATA_KEY: tiny_meta().to_json()})
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(tmp_path / "shape.safetensors")

    bad = json.loads(tiny_meta().to_json())
    bad["labels"] = ["Mass", "Broken"] + list(FINDINGS[2:])
    save_file(tensors, tmp_path / "labels.safetensors", metadata={METADATA_KEY: json.dumps(bad)})
    with pytest.raises(CheckpointError, match="Broken"):
        load_checkpoint(tmp_path / "labels.safetensors")


def test_missing_file_message(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_thresholds_must_name_outputs():
    with pytest.raises(CheckpointError):
        tiny_meta(thresholds={"Fracture": 0.5})
    assert tiny_meta(thresholds={"Infiltrate": 0.5}).thresholds == {"Infiltration": 0.5}
