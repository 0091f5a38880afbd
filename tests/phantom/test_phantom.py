"""Synthetic phantoms: NIH layout, determinism, labels == what was drawn (speed: benchmarks/phantom_speed.py)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrdx.cli import main
from cxrdx.errors import ConfigError
from cxrdx.labels import FINDINGS, NO_FINDING, parse_finding_labels
from cxrdx.phantom.anatomy import sample_anatomy
from cxrdx.phantom.config import PhantomConfig
from cxrdx.phantom.dataset import BBOX_COLUMNS, DATA_ENTRY_COLUMNS, plan_dataset, png_bytes, write_dataset
from cxrdx.phantom.render import make_phantom


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_nih_layout(phantom_dataset):
    entry = pd.read_csv(phantom_dataset / "Data_Entry.csv")
    boxes = pd.read_csv(phantom_dataset / "BBox_List.csv")
    assert tuple(entry.columns) == DATA_ENTRY_COLUMNS
    assert tuple(boxes.columns) == BBOX_COLUMNS
    assert len(entry) == 120
    assert entry["Image Index"].is_unique
    for _, row in entry.iterrows():
        assert row["Image Index"] == f"{row['Patient ID']:08d}_{row['Follow-up #']:03d}.png"
    # several images for some patients, follow-ups numbered 0..k-1
    per_patient = entry.groupby("Patient ID")["Follow-up #"].apply(sorted)
    assert (per_patient.map(len) > 1).sum() >= 10
    assert all(f == list(range(len(f))) for f in per_patient)
    files = sorted(p.name for p in (phantom_dataset / "images").glob("*.png"))
    assert files == sorted(entry["Image Index"])
    im = Image.open(phantom_dataset / "images" / files[0])
    assert im.mode == "L" and im.size == (64, 64)
    assert set(entry["Patient Gender"]) <= {"M", "F"}
    assert set(entry["View Position"]) <= {"PA", "AP"}


def test_boxes_agree_with_labels(phantom_dataset):
    entry = pd.read_csv(phantom_dataset / "Data_Entry.csv")
    boxes = pd.read_csv(phantom_dataset / "BBox_List.csv")
    labels = {r["Image Index"]: set(parse_finding_labels(r["Finding Labels"])) for _, r in entry.iterrows()}
    boxed: dict[str, set[str]] = {}
    for _, b in boxes.iterrows():
        boxed.setdefault(b["Image Index"], set()).add(b["Finding Label"])
        assert b["Finding Label"] in labels[b["Image Index"]], f"box without label: {dict(b)}"
        x, y, w, h = b["Bbox [x"], b["y"], b["w"], b["h]"]
        assert w >= 1 and h >= 1 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
    for image, found in labels.items():
        assert boxed.get(image, set()) == found, image
    assert sum(len(v) for v in labels.values()) > 0
    assert (entry["Finding Labels"] == NO_FINDING).sum() > 0


@pytest.mark.parametrize("size", [64, 128, 256])
def test_every_finding_draws_boxes_inside(size):
    for i, finding in enumerate(FINDINGS):
        img, boxes = make_phantom(np.random.default_rng([size, i]), size, {finding})
        assert img.shape == (size, size) and img.dtype == np.uint8
        assert boxes and {b[0] for b in boxes} == {finding}
        for _, x, y, w, h in boxes:
            assert min(x, y) >= 0 and min(w, h) >= 1 and x + w <= size and y + h <= size


LOCAL = [
    "Consolidation",
    "Effusion",
    "Hernia",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
]


@pytest.mark.parametrize("finding", LOCAL)
def test_lesion_is_drawn_inside_its_box(finding):
    """Same seed and anatomy with and without the finding: the change lies in the boxes."""
    fractions, contrasts = [], []
    for seed in range(8):
        anatomy = sample_anatomy(np.random.default_rng([5, seed]))
        base, _ = make_phantom(np.random.default_rng([6, seed]), 128, set(), anatomy)
        img, boxes = make_phantom(np.random.default_rng([6, seed]), 128, {finding}, anatomy)
        diff = np.abs(img.astype(float) - base)
        inside = np.zeros(diff.shape, bool)
        for _, x, y, w, h in boxes:
            inside[max(0, y - 2) : y + h + 2, max(0, x - 2) : x + w + 2] = True
        fractions.append(diff[inside].sum() / diff.sum())
        contrasts.append(diff[inside].max())
    assert min(fractions) > 0.8, fractions
    assert np.median(contrasts) >= 20, contrasts  # visible, in 8-bit gray levels


def test_cardiomegaly_heart_wider_than_half_the_thorax():
    ratios = []
    for seed in range(10):
        anatomy = sample_anatomy(np.random.default_rng([8, seed]))
        _, boxes = make_phantom(np.random.default_rng([9, seed]), 256, {"Cardiomegaly"}, anatomy)
        ratios.append(boxes[0][3] / (2 * anatomy.lung_w * 256))  # drawn silhouette width / thorax
    assert min(ratios) > 0.49, ratios
    assert max(ratios) < 0.7, ratios


def test_synth_is_deterministic_and_independent_of_workers(tmp_path):
    a = write_dataset(tmp_path / "a", n=30, size=64, seed=3)
    b = write_dataset(tmp_path / "b", n=30, size=64, seed=3, workers=2)
    c = write_dataset(tmp_path / "c", n=30, size=64, seed=4)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_follow_ups_look_like_the_same_patient(phantom_dataset):
    entry = pd.read_csv(phantom_dataset / "Data_Entry.csv")

    def load(name):
        x = np.asarray(Image.open(phantom_dataset / "images" / name), dtype=float).ravel()
        return (x - x.mean()) / x.std()

    same, other = [], []
    groups = [g["Image Index"].tolist() for _, g in entry.groupby("Patient ID") if len(g) > 1]
    for names in groups:
        same.append(np.mean(load(names[0]) * load(names[1])))
    firsts = [g[0] for g in groups]
    for a, b in zip(firsts, firsts[1:], strict=False):
        other.append(np.mean(load(a) * load(b)))
    assert np.mean(same) > np.mean(other) + 0.02


def test_prevalence_as_configured():
    config = PhantomConfig(co_occurrence={})
    specs = plan_dataset(20000, 1, config)
    counts = {f: sum(f in s.findings for s in specs) / len(specs) for f in FINDINGS}
    for f, p in config.effective_prevalence().items():
        assert abs(counts[f] - p) < 0.012, (f, counts[f], p)
    assert min(counts.values()) >= 0.035
    default = plan_dataset(5000, 2, PhantomConfig())
    normal = sum(not s.findings for s in default) / len(default)
    assert 0.38 <= normal <= 0.52, normal
    doubled = plan_dataset(5000, 2, PhantomConfig(co_occurrence={}, prevalence_scale=2.0))
    rate = sum("Hernia" in s.findings for s in doubled) / len(doubled)
    assert 0.06 < rate < 0.10


def test_config_is_validated():
    with pytest.raises(ConfigError, match="Pneumonitis"):
        PhantomConfig(prevalence={"Pneumonitis": 0.1})
    with pytest.raises(ConfigError, match="0, 1"):
        PhantomConfig(prevalence={"Mass": 1.5})
    with pytest.raises(ConfigError, match="prevalence_scale"):
        PhantomConfig(prevalence_scale=0)


def test_png_writer_round_trips():
    img = np.random.default_rng(0).integers(0, 256, (37, 53), dtype=np.uint8)
    import io

    back = Image.open(io.BytesIO(png_bytes(img)))
    assert back.mode == "L" and np.array_equal(np.asarray(back), img)


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "ph"
    rc = main(
        ["synth", "--out", str(out), "--n", "12", "--size", "64", "--seed", "1", "--prevalence-scale", "2"]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert re.search(r"wrote 12 phantoms of \d+ patients", text)
    assert "No Finding" in text and "Hernia" in text
    assert len(list((out / "images").glob("*.png"))) == 12
    # a second run into the same folder refuses, without a traceback
    rc = main(["synth", "--out", str(out), "--n", "12", "--size", "64"])
    err = capsys.readouterr().err
    assert rc == 2 and "already exists" in err and "Traceback" not in err
    assert main(["synth", "--out", str(out), "--n", "5", "--size", "64", "--overwrite"]) == 0
    assert len(list((out / "images").glob("*.png"))) == 5
    capsys.readouterr()
    rc = main(["synth", "--out", str(tmp_path / "small"), "--n", "5", "--size", "16"])
    err = capsys.readouterr().err
    assert rc == 2 and "--size" in err and "Traceback" not in err
