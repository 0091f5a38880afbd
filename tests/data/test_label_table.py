"""The label table's metadata is a typed record (``LabelTable``), passed explicitly, never in ``DataFrame.attrs``.

pandas drops ``attrs`` when it concatenates tables whose attrs differ (pandas >= 2.1 keeps them
only when all inputs agree), which is what happens between reading and use: several split files,
a filter, a copy. These tests take the metadata through those operations and check it arrives.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from cxrdx.data.stats import label_stats
from cxrdx.data.tables import read_label_table, read_labels

GOOGLE_HEADER = "Image Index,Finding Labels,Patient ID,View Position,Fracture,Pneumothorax,Airspace opacity,Nodule or mass,Set Id\n"
# the four findings the Google re-labels adjudicate, as cxrdx names them (README "Datasets" table)
GOOGLE_FINDINGS = ("Pneumothorax", "Lung_Opacity", "Nodule_Mass", "Fracture")


def test_frames_carry_no_attrs(tmp_path):
    csv = tmp_path / "g.csv"
    csv.write_text(GOOGLE_HEADER + "a.png,No Finding,1,PA,NO,YES,NO,NO,val\n")
    assert read_label_table(csv).frame.attrs == {} and read_labels(csv).attrs == {}


def test_metadata_survives_concat_filter_and_copy(tmp_path):
    val, test = tmp_path / "val.csv", tmp_path / "test.csv"
    val.write_text(
        GOOGLE_HEADER + "a.png,No Finding,1,PA,NO,YES,NO,NO,val\nb.png,No Finding,2,LL,NO,NO,NO,NO,val\n"
    )
    test.write_text(
        GOOGLE_HEADER + "c.png,Mass,3,AP,YES,NO,NO,YES,test\nd.png,No Finding,4,PA,NO,NO,YES,NO,test\n"
    )
    tables = [read_label_table(p, views="frontal") for p in (val, test)]
    both = pd.concat([t.frame for t in tables], ignore_index=True)
    assert both.attrs == {}  # what attrs would have carried: gone after the concat
    whole = tables[0].with_frame(both)
    kept = whole.with_frame(whole.frame[whole.frame["Pneumothorax"] == 0].copy().reset_index(drop=True))
    assert len(kept) == 2 and kept.dataset == "google" and kept.findings == GOOGLE_FINDINGS
    assert kept.views is not None and kept.views_dropped == {"LL": 1}  # b.png, a lateral film of val.csv
    stats = label_stats(kept)
    assert set(stats["per_finding"]) == set(GOOGLE_FINDINGS)
    assert stats["no_finding"] is None  # No Finding is not a label of the Google re-labels
    # the same rows without their record: only the NIH names present count, and "normal" is guessed
    bare = label_stats(kept.frame)
    assert set(bare["per_finding"]) == {"Pneumothorax"} and bare["no_finding"] == 2  # c.png, d.png


def _films(root, names):
    for i, name in enumerate(names):
        Image.fromarray(np.full((32, 32), 40 * i + 20, dtype=np.uint8)).save(root / name)


def test_view_counts_reach_evaluation_and_training(tmp_path):
    """What the view filter dropped reaches evaluate/calibrate (EvalSet) and the model card (TrainingData)."""
    from cxrdx.evaluation.eval_set import load_eval_set
    from cxrdx.training.config import TrainConfig
    from cxrdx.training.data import load_data

    header = "image,patient,view,Effusion,Mass\n"
    (tmp_path / "train.csv").write_text(header + "a.png,1,PA,1,0\nb.png,1,LL,0,1\nc.png,2,AP,0,0\n")
    (tmp_path / "val.csv").write_text(header + "d.png,3,PA,1,\ne.png,4,LATERAL,0,1\nf.png,5,LL,0,0\n")
    _films(tmp_path, [f"{c}.png" for c in "abcdef"])
    es = load_eval_set(str(tmp_path / "val.csv"), None, str(tmp_path), ["Effusion", "Mass"], views="frontal")
    assert len(es.table) == 1 and es.views_dropped == {"LL": 1, "LATERAL": 1}
    assert es.findings == ("Effusion", "Mass")
    data = load_data(TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), images=str(tmp_path)))
    (part,) = data.datasets
    assert part["views_dropped"] == {"LL": 2, "LATERAL": 1} and part["train"] == 2 and part["val"] == 1
