"""The --blank policy is validated and recorded in the checkpoint's provenance, beside --uncertain."""

from __future__ import annotations

import pytest

from cxrdx.errors import ConfigError
from cxrdx.training.config import TrainConfig
from cxrdx.training.data import TrainingData
from cxrdx.training.provenance import provenance


def test_blank_policy_is_validated_and_recorded():
    with pytest.raises(ConfigError, match="--blank"):
        TrainConfig(data="d", out="o", blank="maybe").validate()
    assert TrainConfig(data="d", out="o").blank == "negative"  # the default (README: Blank labels)
    cfg = TrainConfig(data="d", out="o", blank="unlabelled").validate()
    data = TrainingData(
        train=[0], val=[0], labels=["Atelectasis"], size=32, kind="cache", path="d", desc="d",
        origin=None, patients=None, leakage=None,
    )  # fmt: skip
    record = provenance(cfg, data, 1, 0.5, {}, {"epoch": 1, "val_loss": 0.5}, 1)
    assert record["labels"]["blank"] == "unlabelled" and record["labels"]["uncertain"] == "ignore"
    assert record["config"]["blank"] == "unlabelled"
