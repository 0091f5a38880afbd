"""The explain job's localisation columns: "within half a cell" must use the half-cell tolerance."""

from __future__ import annotations

import numpy as np
import pandas as pd

import cxrdx.jobs.explain_maps as job
from cxrdx.explain.localisation import format_localisation, half_cell_tolerance
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.inference.prediction import Prediction
from cxrdx.jobs.explain import Config
from cxrdx.model.checkpoint import CheckpointMeta

SIZE = 128  # model input: a Grad-CAM cell is 32 input px, so half a cell is 16 px on a 128 px image
PEAK = (60, 60)  # (row, col) of the fake heatmap's maximum


class _FakePredictor:
    labels = ["Nodule", "Mass"]
    thresholds = None
    ood = None
    meta = CheckpointMeta(architecture="densenet-tiny", preprocessing=Preprocessing(size=SIZE))

    @classmethod
    def load(cls, *_args, **_kwargs):
        return cls()

    def read(self, item):
        return np.zeros((SIZE, SIZE), np.float32), []

    def prepare(self, image):
        return np.zeros((1, SIZE, SIZE), np.float32), None

    def probabilities(self, x):
        return np.array([[0.9, 0.1]], np.float32), None

    def predict(self, images, batch_size=1, workers=0):
        return [Prediction("a.png", {"Nodule": 0.9, "Mass": 0.1})]

    def explain(self, image, finding):
        heatmap = np.zeros(image.shape, np.float32)
        heatmap[PEAK] = 1.0
        return heatmap


def test_half_cell_column_uses_the_tolerance(tmp_path, monkeypatch):
    tolerance = half_cell_tolerance((SIZE, SIZE), SIZE)
    assert tolerance == 16
    r, c = PEAK
    # Nodule's box starts 10 px right of the peak: a strict miss, a hit within half a cell (16 px).
    # Mass's box is 40 px away: a miss either way.
    boxes = pd.DataFrame(
        [
            {"image": "a.png", "finding": "Nodule", "x": c + 10, "y": r - 5, "w": 20, "h": 10},
            {"image": "a.png", "finding": "Mass", "x": c + 40, "y": r - 5, "w": 20, "h": 10},
        ]
    )
    monkeypatch.setattr(job, "Predictor", _FakePredictor)
    monkeypatch.setattr(job, "read_bboxes", lambda _path: boxes)
    monkeypatch.setattr(job, "overlay_png", lambda *a, **k: None)
    config = Config(weights="w", images=[str(tmp_path / "a.png")], out=str(tmp_path / "o"), boxes="b")
    results = job.explain(config)
    nodule, mass = results["localisation"]["Nodule"], results["localisation"]["Mass"]
    assert nodule["pointing_game"] == 0.0
    assert nodule["pointing_game_half_cell"] == 1.0  # differs from strict: the tolerance was applied
    assert mass["pointing_game"] == mass["pointing_game_half_cell"] == 0.0
    records = {rec["finding"]: rec for rec in results["images"][0]["findings"]}
    assert records["Nodule"]["pointing_game"] is False
    table = format_localisation(results["scores"])
    row = next(line.split() for line in table.splitlines() if line.startswith("Nodule"))
    assert row[:3] == ["Nodule", "1", "0.000"] and row[4] == "1.000"  # strict, (chance), half cell differ
