"""The public dataset layouts (CheXpert, MIMIC-CXR-JPG, PadChest, VinDr-CXR, Google NIH re-labels, generic),
the harmonised label map, uncertain policies, views, bad input, and `cxrdx stats` on the real tables."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from PIL import Image
from testkit import run_cli

from cxrdx.data import label_map
from cxrdx.data.stats import label_stats
from cxrdx.data.tables import read_label_table, read_labels, write_labels
from cxrdx.data.vindr import read_boxes
from cxrdx.errors import ConfigError, DataError, LabelError
from cxrdx.labels import ALL_FINDINGS, FINDINGS


@pytest.fixture(scope="module")
def pixels(phantom_dataset):
    """Six phantom images (uint8) to write into each dataset's folder structure."""
    files = sorted((phantom_dataset / "images").glob("*.png"))[:6]
    return [np.asarray(Image.open(f).convert("L")) for f in files]


def _save(img: np.ndarray, path, fmt: str = "PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, fmt)


def test_label_map_is_valid_and_documented():
    assert label_map.check_map() == []
    assert set(label_map.datasets()) == {"chexpert", "mimic", "google", "padchest", "vindr"}
    assert label_map.map_name("chexpert", "Pleural Effusion") == "Effusion"
    assert label_map.map_name("padchest", "costophrenic angle blunting") == "Effusion"
    assert label_map.map_name("vindr", "Pleural effusion") == "Effusion"
    assert label_map.map_name("chexpert", "No Finding") is None
    assert set(label_map.findings_of("chexpert")) <= set(ALL_FINDINGS)
    with pytest.raises(LabelError, match="Pleural Gloom.*not in the label map"):
        label_map.map_name("vindr", "Pleural Gloom")
    assert label_map.codes("padchest")["costophrenic angle blunting"] == -1  # uncertain Effusion


def test_padchest_tree_lineage_is_exact():
    from cxrdx.data.padchest_tree import lineage

    assert lineage("callus rib fracture") == ("callus rib fracture", "rib fracture", "fracture")
    assert {"pneumothorax", "pleural effusion"} <= set(lineage("Hydropneumothorax"))
    assert "nodule" not in lineage("pseudonodule") and "emphysema" not in lineage("subcutaneous emphysema")
    assert lineage("no such term") == ("no such term",)
    assert "radiological finding" not in lineage("nodule")  # the section roots are not findings


CHEXPERT = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly,Lung Opacity,Pleural Effusion,Support Devices\n"
    "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,0.0,1.0\n"
    "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Male,87,Frontal,PA,,-1.0,1.0,-1.0,\n"
    "CheXpert-v1.0-small/train/patient00002/study2/view2_lateral.jpg,Male,87,Lateral,,,-1.0,1.0,-1.0,\n"
    "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Unknown,,Frontal,,,0.0,,1.0,0.0\n"
)


def test_chexpert_layout_paths_policies_and_views(tmp_path, pixels):
    root = tmp_path / "chexpert"
    csv = root / "CheXpert-v1.0-small" / "train.csv"
    csv.parent.mkdir(parents=True)
    csv.write_text(CHEXPERT)
    for i, line in enumerate(CHEXPERT.splitlines()[1:]):
        _save(pixels[i], root / line.split(",")[0], "JPEG")
    table = read_label_table(csv)  # default: uncertain ignored (NaN), every view
    df = table.frame
    assert table.dataset == "chexpert"
    assert table.findings == ("Cardiomegaly", "Effusion", "Lung_Opacity", "Support_Devices")
    assert (df["path"] != "").all()  # found beside the CSV, one folder up
    assert df["patient"].tolist() == ["patient00001", "patient00002", "patient00002", "patient00003"]
    assert df["study"].tolist()[1] == "patient00002/study2"
    assert df["view"].tolist() == ["AP", "PA", "LATERAL", "FRONTAL"]
    assert df["sex"].tolist() == ["F", "M", "M", ""] and df["age"].tolist()[:2] == [68, 87]
    assert all(df[f].dtype == np.float32 for f in table.findings)
    # row 0 is No Finding = 1: its blank Cardiomegaly is negative whatever --blank says
    assert df.loc[0, "Cardiomegaly"] == 0 and df.loc[0, "Effusion"] == 0 and np.isnan(df.loc[1, "Effusion"])
    assert read_labels(csv, blank="unlabelled").loc[0, "Cardiomegaly"] == 0
    # row 1 is not No Finding: its blank Support Devices is "not mentioned", read as --blank says
    assert df.loc[1, "Support_Devices"] == 0 and table.blank == "negative"
    assert np.isnan(read_labels(csv, blank="unlabelled").loc[1, "Support_Devices"])
    assert read_labels(csv, blank="keep").loc[1, "Support_Devices"] == -2
    assert df["no_finding"].tolist() == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="--blank"):
        read_labels(csv, blank="maybe")
    assert "Atelectasis" not in df.columns  # not labelled: missing, never negative
    assert read_labels(csv, uncertain="ones").loc[1, "Effusion"] == 1
    assert read_labels(csv, uncertain="zeros").loc[1, "Effusion"] == 0
    assert read_labels(csv, uncertain="keep").loc[1, "Effusion"] == -1
    assert read_labels(csv, views="frontal")["view"].tolist() == ["AP", "PA", "FRONTAL"]
    assert read_labels(csv, views="PA")["image"].str.contains("patient00002").all()
    with pytest.raises(ConfigError, match="--uncertain"):
        read_labels(csv, uncertain="maybe")
    # --images pointing inside CheXpert-v1.0-small still resolves the paths
    inside = read_labels(csv, images_dir=csv.parent)
    assert (inside["path"] != "").all()
    # round trip through the generic format keeps NaN and findings
    masked = read_label_table(csv, blank="unlabelled")
    back = read_label_table(write_labels(masked, tmp_path / "again.csv"))
    assert back.findings == table.findings and np.isnan(back.frame.loc[1, "Support_Devices"])


def test_mimic_layout_joins_metadata_and_split(tmp_path, pixels):
    root = tmp_path / "mimic"
    root.mkdir()
    (root / "mimic-cxr-2.0.0-chexpert.csv").write_text(
        "subject_id,study_id,Atelectasis,Cardiomegaly,Pleural Effusion,No Finding\n"
        "10000032,50414267,,1.0,-1.0,\n"
        "10000764,57375967,0.0,,,1.0\n"
    )
    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as fh:
        fh.write(
            "dicom_id,subject_id,study_id,ViewPosition\n"
            "d1,10000032,50414267,PA\nd2,10000032,50414267,LATERAL\nd3,10000764,57375967,AP\n"
            "d4,10000999,50000000,PA\n"  # a study without labels
        )
    (root / "mimic-cxr-2.0.0-split.csv").write_text(
        "dicom_id,study_id,subject_id,split\nd1,50414267,10000032,train\nd2,50414267,10000032,train\n"
        "d3,57375967,10000764,test\n"
    )
    _save(pixels[0], root / "files/p10/p10000032/s50414267/d1.jpg", "JPEG")
    table = read_label_table(root / "mimic-cxr-2.0.0-chexpert.csv")
    df = table.frame
    assert table.dataset == "mimic" and table.format == "mimic-chexpert"
    assert df["image"].tolist()[0] == "files/p10/p10000032/s50414267/d1.jpg"
    assert df["path"].tolist()[0].endswith("d1.jpg") and df["path"].tolist()[1] == ""
    assert df["view"].tolist() == ["PA", "LATERAL", "AP"]
    assert df["official_split"].tolist() == ["train", "train", "test"]
    assert df["Cardiomegaly"].tolist()[:2] == [1.0, 1.0] and np.isnan(df.loc[0, "Effusion"])
    assert any("have no labels" in n for n in table.notes)
    # the CheXpert labeler's No Finding rule, and --blank for the other blanks (both label files)
    assert df.loc[2, "Cardiomegaly"] == 0 and df.loc[2, "Effusion"] == 0  # study 2: No Finding = 1
    assert df.loc[0, "Atelectasis"] == 0 and df["no_finding"].tolist() == [0.0, 0.0, 1.0]
    import shutil

    shutil.copy(root / "mimic-cxr-2.0.0-chexpert.csv", root / "mimic-cxr-2.0.0-negbio.csv")
    for name in ("mimic-cxr-2.0.0-chexpert.csv", "mimic-cxr-2.0.0-negbio.csv"):
        masked = read_label_table(root / name, blank="unlabelled")
        assert np.isnan(masked.frame.loc[0, "Atelectasis"]) and masked.frame.loc[2, "Cardiomegaly"] == 0
    assert masked.format == "mimic-negbio"
    assert len(read_labels(root / "mimic-cxr-2.0.0-chexpert.csv", views="frontal")) == 2
    (root / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    with pytest.raises(DataError, match="mimic-cxr-2.0.0-metadata.csv"):
        read_labels(root / "mimic-cxr-2.0.0-chexpert.csv")


def test_padchest_layout(tmp_path, pixels):
    root = tmp_path / "padchest"
    csv = root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    root.mkdir()
    csv.write_text(
        "ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,PatientBirth,PatientSex_DICOM,Projection,Labels,MethodLabel\n"
        "a.png,0,20140101,s1,p1,1950.0,M,PA,\"['pleural effusion', 'cardiomegaly']\",Physician\n"
        "b.png,0,20140101,s1,p1,1950.0,M,L,\"['normal']\",Physician\n"
        "c.png,1,20150101,s2,p2,1960.0,F,AP_horizontal,\"['costophrenic angle blunting', 'scoliosis']\",RNN_model\n"
        "d.png,1,20150101,s3,p3,1960.0,F,PA,[],RNN_model\n"
    )
    _save(pixels[0], root / "0" / "a.png")
    table = read_label_table(csv, images_dir=root)
    df = table.frame
    assert table.dataset == "padchest"
    assert df["image"].tolist()[0] == "0/a.png" and df["path"].tolist()[0].endswith("a.png")
    assert df.loc[0, "Effusion"] == 1 and df.loc[0, "Cardiomegaly"] == 1 and df.loc[0, "Atelectasis"] == 0
    assert df.loc[1, list(table.findings)].sum() == 0  # normal: every mapped finding negative
    assert np.isnan(df.loc[2, "Effusion"])  # the documented choice: blunting is an uncertain Effusion
    assert read_labels(csv, uncertain="keep").loc[2, "Effusion"] == -1
    assert df["no_finding"].tolist() == [0.0, 1.0, 0.0, 0.0] and table.unmapped_terms == {"scoliosis": 1}
    assert df.loc[3, list(table.findings)].isna().all()  # empty list: unlabelled, not negative
    assert df["age"].tolist()[:3] == [64, 64, 55] and df["label_method"].tolist()[2] == "RNN_model"
    assert any("scoliosis" in n for n in table.notes)
    assert read_labels(csv, views="frontal")["image"].tolist() == ["0/a.png", "1/c.png", "1/d.png"]


VINDR = (
    "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
    "img1,Pleural effusion,10,R1,10,20,30,40\n"
    "img1,Pleural effusion,10,R2,11,21,31,41\n"
    "img1,Cardiomegaly,3,R3,5,5,50,50\n"
    "img1,No finding,14,R3,,,,\n"
    "img2,No finding,14,R1,,,,\n"
    "img2,No finding,14,R2,,,,\n"
    "img2,No finding,14,R3,,,,\n"
)


def test_vindr_layout_rules_and_boxes(tmp_path, pixels):
    csv = tmp_path / "train.csv"
    csv.write_text(VINDR)
    _save(pixels[0], tmp_path / "train" / "img1.png")  # found by stem
    table = read_label_table(csv, images_dir=tmp_path / "train")
    df = table.frame
    assert table.dataset == "vindr" and df["image"].tolist() == ["img1", "img2"]
    assert df["path"].tolist()[0].endswith("img1.png")
    assert df.loc[0, "Effusion"] == 1 and df.loc[0, "Cardiomegaly"] == 1 and df.loc[1, "Effusion"] == 0
    majority = read_labels(csv, vindr_rule="majority")
    assert majority.loc[0, "Effusion"] == 1 and majority.loc[0, "Cardiomegaly"] == 0  # 1 of 3 readers
    import pandas as pd

    boxes = read_boxes(csv, pd.read_csv(csv, dtype=str, keep_default_na=False))
    assert (
        len(boxes) == 3 and boxes.loc[0, "w"] == 20 and set(boxes["finding"]) == {"Effusion", "Cardiomegaly"}
    )
    from cxrdx.data.boxes import read_bboxes

    assert len(read_bboxes(csv)) == 3
    csv.write_text(VINDR + "img3,Pleural gloom,99,R1,1,2,3,4\n")
    with pytest.raises(DataError, match=r"train\.csv: line\(s\) 9.*Pleural gloom"):
        read_labels(csv)


def test_google_relabels_layout(tmp_path):
    csv = tmp_path / "google.csv"
    csv.write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "Fracture,Pneumothorax,Airspace opacity,Nodule or mass,Set Id\n"
        "00000013_008.png,No Finding,8,13,60,M,AP,NO,NO,YES,NO,test\n"
        "00000013_026.png,Cardiomegaly,26,13,57,M,AP,NO,YES,NO,NO,val\n"
    )
    table = read_label_table(csv)
    df = table.frame
    assert table.dataset == "google"
    assert table.findings == ("Pneumothorax", "Lung_Opacity", "Nodule_Mass", "Fracture")
    assert "Cardiomegaly" not in df.columns  # NIH's own NLP labels are not mixed in
    assert df["Lung_Opacity"].tolist() == [1, 0] and df["official_split"].tolist() == ["test", "val"]


def test_generic_subset_and_forced_dataset(tmp_path):
    csv = tmp_path / "h.csv"
    csv.write_text("image,patient,Pleural Effusion,pneumothorax,Fracture\na.png,1,1,,-1\nb.png,2,0,1.0,\n")
    table = read_label_table(csv)
    df = table.frame
    assert table.format == "generic" and table.findings == ("Effusion", "Pneumothorax", "Fracture")
    assert np.isnan(df.loc[0, "Pneumothorax"]) and np.isnan(df.loc[0, "Fracture"])
    with pytest.raises(DataError, match="not a CheXpert table: missing column.*Path"):
        read_labels(csv, dataset="chexpert")
    with pytest.raises(ConfigError, match="--dataset 'rsna'"):
        read_labels(csv, dataset="rsna")


def test_stats_counts_each_label_state(tmp_path, capsys):
    csv = tmp_path / "h.csv"
    csv.write_text(
        "image,patient,view,Effusion,Pneumothorax\na.png,1,PA,1,\nb.png,1,LL,-1,0\nc.png,2,AP,0,1\n"
    )
    stats = label_stats(read_label_table(csv, uncertain="keep"))
    assert stats["per_finding"]["Effusion"] == {
        "positives": 1,
        "negatives": 1,
        "uncertain": 1,
        "unlabelled": 0,
        "prevalence": 1 / 3,
        "prevalence_all": 1 / 3,
    }
    assert stats["per_finding"]["Pneumothorax"]["unlabelled"] == 1 and stats["frontal"] == 2
    rc, out, _ = run_cli(capsys, ["stats", "--labels", csv, "--views", "frontal"])
    assert rc == 0 and "images    2" in out and "views left out: LL 1" in out


@pytest.mark.realdata
def test_stats_real_chexpert_and_vindr(shared_data, capsys):
    rc, out, _ = run_cli(capsys, ["stats", "--labels", shared_data / "chexpert" / "chexpert_train.csv.gz"])
    assert (
        rc == 0
        and "images    223,414" in out
        and "patients  64,540" in out
        and "frontal: 191,010 kept" in out
    )
    assert any(line.split()[:1] == ["Effusion"] for line in out.splitlines())
    rc, out, _ = run_cli(capsys, ["stats", "--labels", shared_data / "vindr" / "vinbigdata-train.csv.gz"])
    assert rc == 0 and "images    15,000" in out
    boxes_table = read_label_table(shared_data / "vindr" / "vinbigdata-train.csv.gz")
    assert len(boxes_table.frame) == 15_000 and len(boxes_table.findings) == 14
    google = read_labels(shared_data / "nih" / "google2019_nih-chest-xray-labels.csv.gz")
    assert len(google) == 4_376 and set(google["official_split"]) == {"val", "test"}
    assert (google["official_split"] == "val").sum() == 2_414


@pytest.mark.realdata
def test_real_chexpert_frontal_filter(shared_data):
    table = read_label_table(shared_data / "chexpert" / "chexpert_train.csv.gz", views="frontal")
    df = table.frame
    assert len(df) == 191_010 and df["patient"].nunique() <= 64_540  # 191,027 marked Frontal, 17 say LL/RL
    assert set(FINDINGS) - set(table.findings) == {
        "Emphysema",
        "Fibrosis",
        "Hernia",
        "Infiltration",
        "Mass",
        "Nodule",
        "Pleural_Thickening",
    }


def test_prepare_keeps_partial_and_uncertain_labels(tmp_path, pixels):
    from cxrdx.data.cache import open_cache
    from cxrdx.data.prepare import prepare_cache

    root = tmp_path / "chexpert"
    csv = root / "CheXpert-v1.0-small" / "train.csv"
    csv.parent.mkdir(parents=True)
    csv.write_text(CHEXPERT)
    for i, line in enumerate(CHEXPERT.splitlines()[1:]):
        _save(pixels[i], root / line.split(",")[0], "JPEG")
    result = prepare_cache([csv], tmp_path / "cache", size=32, images=root, workers=0, progress=False)
    assert result.cached == 4
    cache = open_cache(tmp_path / "cache")
    assert cache.findings == ("Cardiomegaly", "Effusion", "Lung_Opacity", "Support_Devices")
    assert cache.info["findings"] == list(cache.findings)
    assert np.isnan(cache.labels[1, 1]) and cache.labels[0, 0] == 0  # uncertain ignored, No Finding row
    assert cache.labels[1, 3] == 0  # "not mentioned": negative by default
    assert cache.index["Support_Devices"].tolist()[1] == 0
    raw = __import__("pandas").read_csv(tmp_path / "cache" / "index.csv")
    assert raw["Support_Devices"].tolist()[1] == -2  # the cache keeps it raw
    assert np.isnan(open_cache(tmp_path / "cache", blank="unlabelled").labels[1, 3])
    assert open_cache(tmp_path / "cache", uncertain="ones").labels[1, 1] == 1
    assert cache.index["view"].tolist() == ["AP", "PA", "LATERAL", "FRONTAL"]
