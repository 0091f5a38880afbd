"""The real CheXpert, PadChest and Google tables read by each publisher's documented rule.

Every expected number is derived here from the raw CSV (pandas, ``ast``, ``csv``) by the
rule as the publisher states it, never copied from cxrdx's output:

- CheXpert (Irvin et al. 2019): ``No Finding = 1`` only when no pathology is positive or
  uncertain, so a blank on such a row is negative; other blanks are "not mentioned"
  (``--blank``). The 17 films marked Frontal whose AP/PA says LL/RL are not frontal.
- PadChest (Bustos et al. 2020): a term is a kind of each ancestor in the authors' tree
  (``padchest_tree.csv``, read here with ``csv``), so an image with a child term is positive
  for its mapped ancestor; names match exactly; ``normal`` is negative for everything; an
  empty list is unlabelled. An independent reader in this file must agree cell for cell.
- Google re-labels (Majkowska et al. 2019): 4 findings, no No Finding; Set Id val / test.
"""

from __future__ import annotations

import ast
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from testkit import run_cli

from cxrdx.data.stats import label_stats
from cxrdx.data.tables import read_label_table, read_labels
from cxrdx.data.views import filter_views

pytestmark = pytest.mark.realdata

DATA = Path(__file__).resolve().parents[2] / "src" / "cxrdx" / "data"
CHEXPERT_13 = {
    "Enlarged Cardiomediastinum": "Enlarged_Cardiomediastinum",
    "Cardiomegaly": "Cardiomegaly",
    "Lung Opacity": "Lung_Opacity",
    "Lung Lesion": "Lung_Lesion",
    "Edema": "Edema",
    "Consolidation": "Consolidation",
    "Pneumonia": "Pneumonia",
    "Atelectasis": "Atelectasis",
    "Pneumothorax": "Pneumothorax",
    "Pleural Effusion": "Effusion",
    "Pleural Other": "Pleural_Other",
    "Fracture": "Fracture",
    "Support Devices": "Support_Devices",
}
PADCHEST = "padchest/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"


# ---------------------------------------------------------------- CheXpert


@pytest.fixture(scope="module")
def chexpert(shared_data):
    path = shared_data / "chexpert" / "chexpert_train.csv.gz"
    raw = pd.read_csv(path)
    read = {b: read_labels(path, uncertain="keep", blank=b) for b in ("negative", "unlabelled")}
    return raw, read


def test_chexpert_no_finding_rows_are_negative_for_every_blank(chexpert):
    raw, read = chexpert
    nf = (raw["No Finding"] == 1).to_numpy()
    assert nf.sum() == 22_381
    for blank, df in read.items():
        assert (df["image"].to_numpy() == raw["Path"].to_numpy()).all()
        for col, name in CHEXPERT_13.items():
            blank_on_nf = nf & raw[col].isna().to_numpy()
            assert (df[name].to_numpy()[blank_on_nf] == 0).all(), (blank, name)
            expected_neg = int((raw[col] == 0).sum()) + int(blank_on_nf.sum())
            other_blanks = int((~nf & raw[col].isna().to_numpy()).sum())
            if blank == "negative":
                expected_neg += other_blanks
            assert int((df[name] == 0).sum()) == expected_neg, (blank, name)
            assert int(df[name].isna().sum()) == (other_blanks if blank == "unlabelled" else 0)
            assert int((df[name] == 1).sum()) == int((raw[col] == 1).sum())
            assert int((df[name] == -1).sum()) == int((raw[col] == -1).sum())


def test_chexpert_independent_reader_agrees_cell_for_cell(chexpert):
    raw, read = chexpert
    nf = (raw["No Finding"] == 1).to_numpy()[:, None]
    cells = raw[list(CHEXPERT_13)].to_numpy(dtype=float)
    for blank, df in read.items():
        mine = np.where(np.isnan(cells) & nf, 0.0, cells)
        mine = np.where(np.isnan(mine), 0.0 if blank == "negative" else np.nan, mine)
        theirs = df[list(CHEXPERT_13.values())].to_numpy(dtype=float)
        assert np.array_equal(np.nan_to_num(mine, nan=9), np.nan_to_num(theirs, nan=9)), blank


def test_chexpert_frontal_views_and_atelectasis_prevalence(shared_data, chexpert):
    raw, _ = chexpert
    frontal_raw = (raw["Frontal/Lateral"] == "Frontal") & ~raw["AP/PA"].isin(["LL", "RL"])
    assert int((raw["Frontal/Lateral"] == "Frontal").sum()) - int(frontal_raw.sum()) == 17
    path = shared_data / "chexpert" / "chexpert_train.csv.gz"
    for blank in ("negative", "unlabelled"):
        df = read_labels(path, views="frontal", blank=blank)  # uncertain ignored
        assert len(df) == int(frontal_raw.sum()) == 191_010
        a = raw.loc[frontal_raw, "Atelectasis"]
        nf = raw.loc[frontal_raw, "No Finding"] == 1
        pos = int((a == 1).sum())
        neg = int((a == 0).sum()) + int((a.isna() & (nf | (blank == "negative"))).sum())
        got = df["Atelectasis"]
        assert int((got == 1).sum()) == pos and int((got == 0).sum()) == neg
        prevalence = pos / (pos + neg)
        assert label_stats(df)["per_finding"]["Atelectasis"]["prevalence"] == pytest.approx(prevalence)
        assert prevalence < (0.2 if blank == "negative" else 0.7)  # was 0.967 with 1,328 negatives


def test_stats_reports_the_publishers_no_finding(shared_data, capsys, tmp_path):
    rc, out, _ = run_cli(capsys, ["stats", "--labels", shared_data / "chexpert" / "chexpert_train.csv.gz"])
    raw = pd.read_csv(shared_data / "chexpert" / "chexpert_train.csv.gz", usecols=["No Finding"])
    line = next(x for x in out.splitlines() if x.startswith("No Finding"))
    assert rc == 0 and f"{int((raw['No Finding'] == 1).sum()):,}" in line and "publisher" in line
    assert "prev. labelled" in out and "prev. all" in out


# ---------------------------------------------------------------- PadChest


def _tree() -> dict[str, set[str]]:
    parents: dict[str, set[str]] = defaultdict(set)
    with open(DATA / "padchest_tree.csv", newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(x for x in fh if not x.startswith("#")):
            if r["parent"] and r["parent"] not in ("radiological finding", "differential diagnosis"):
                parents[r["term"].lower()].add(r["parent"].lower())
    return parents


def _ancestors(term: str, parents) -> set[str]:
    out, todo = set(), [term]
    while todo:
        for p in parents.get(todo.pop(), ()):
            if p not in out:
                out.add(p)
                todo.append(p)
    return out


def _padchest_map() -> dict[str, tuple[str, float]]:
    with open(DATA / "label_map.csv", newline="", encoding="utf-8") as fh:
        return {
            r["name"].lower(): (r["cxrdx"], float(r["code"] or 1))
            for r in csv.DictReader(fh)
            if r["dataset"] == "padchest" and r["cxrdx"]
        }


def _terms(cell) -> list[str]:
    if not isinstance(cell, str) or not cell.strip():
        return []
    return [t.strip().lower() for t in ast.literal_eval(cell) if t.strip()]


@pytest.fixture(scope="module")
def padchest(shared_data):
    raw = pd.read_csv(shared_data / PADCHEST, usecols=["ImageID", "Projection", "Labels"], dtype=str)
    terms = [_terms(c) for c in raw["Labels"]]
    table = read_label_table(shared_data / PADCHEST, uncertain="keep")
    return raw, terms, table


def test_padchest_child_terms_are_positive_for_their_mapped_ancestor(padchest):
    raw, terms, table = padchest
    df = table.frame
    parents, mapping = _tree(), _padchest_map()
    checked = 0
    for child in {t for ts in terms for t in ts}:
        for anc in _ancestors(child, parents):
            if anc in mapping and mapping[anc][1] == 1:
                rows = np.array([child in ts for ts in terms])
                assert (df[mapping[anc][0]].to_numpy()[rows] == 1).all(), (child, anc)
                checked += int(rows.sum())
    assert checked > 20_000
    # the examples, counted from the raw table
    for child, finding in (
        ("pulmonary mass", "Mass"),
        ("callus rib fracture", "Fracture"),
        ("central venous catheter via jugular vein", "Support_Devices"),
        ("dual chamber device", "Support_Devices"),
        ("reticular interstitial pattern", "ILD"),
        ("calcified pleural thickening", "Pleural_Thickening"),
        ("multiple nodules", "Nodule"),
        ("segmental atelectasis", "Atelectasis"),
        ("atypical pneumonia", "Pneumonia"),
        ("loculated pleural effusion", "Effusion"),
        ("hydropneumothorax", "Pneumothorax"),
        ("hydropneumothorax", "Effusion"),
    ):
        rows = np.array([child in ts for ts in terms])
        assert rows.sum() > 0 and (df[finding].to_numpy()[rows] == 1).all(), child
    mass = np.array([any(t in ("mass", "pulmonary mass") for t in ts) for ts in terms])
    assert int((df["Mass"] == 1).sum()) >= int(mass.sum()) > 1_000  # was 56


def test_padchest_no_substring_matches_normal_and_empty_rows(padchest):
    raw, terms, table = padchest
    df = table.frame
    nodule_terms = {"nodule", "multiple nodules"}
    pseudo = np.array(["pseudonodule" in ts and not nodule_terms & set(ts) for ts in terms])
    assert pseudo.sum() > 2_000 and (df["Nodule"].to_numpy()[pseudo] == 0).all()
    sub = np.array(["subcutaneous emphysema" in ts and "emphysema" not in ts for ts in terms])
    assert sub.sum() > 150 and (df["Emphysema"].to_numpy()[sub] == 0).all()
    findings = list(table.findings)
    only_normal = np.array([ts == ["normal"] for ts in terms])
    assert only_normal.sum() > 40_000 and (df.loc[only_normal, findings].to_numpy() == 0).all()
    empty = np.array([not ts for ts in terms])
    assert empty.sum() > 0 and df.loc[empty, findings].isna().all().all()
    normal = np.array(["normal" in ts for ts in terms])
    assert int((df["no_finding"] == 1).sum()) == int(normal.sum()) == 50_616
    blunting_only = np.array(
        ["costophrenic angle blunting" in ts and not {"pleural effusion"} & set(ts) for ts in terms]
    )
    eff = df["Effusion"].to_numpy()
    assert (eff[blunting_only] != 0).all()  # uncertain (-1) unless another term makes it positive


def test_padchest_independent_reader_agrees_cell_for_cell(padchest):
    raw, terms, table = padchest
    df = table.frame
    parents, mapping = _tree(), _padchest_map()
    findings = list(table.findings)
    col = {f: i for i, f in enumerate(findings)}
    mine = np.full((len(terms), len(findings)), np.nan)
    cache: dict[tuple[str, ...], np.ndarray] = {}
    for i, ts in enumerate(terms):
        key = tuple(ts)
        if key not in cache:
            row = np.full(len(findings), np.nan)
            if ts:
                row[:] = 0
                for t in ts:
                    for name in {t} | _ancestors(t, parents):
                        if name in mapping:
                            f, code = mapping[name]
                            row[col[f]] = max(row[col[f]], code) if row[col[f]] != 0 else code
            cache[key] = row
        mine[i] = cache[key]
    theirs = df[findings].to_numpy(dtype=float)
    disagree = ~(np.nan_to_num(mine, nan=9) == np.nan_to_num(theirs, nan=9))
    assert int(disagree.sum()) == 0


def test_padchest_views_and_unmapped_terms_file(shared_data, padchest, capsys, tmp_path):
    raw, terms, table = padchest
    df = table.frame
    frontal = filter_views(df, "frontal")
    counts = frontal["view"].value_counts()
    assert counts["AP_HORIZONTAL"] == int((raw["Projection"] == "AP_horizontal").sum()) == 14_346
    assert len(frontal) == int(raw["Projection"].isin(["PA", "AP", "AP_horizontal"]).sum())
    out_file = tmp_path / "unmapped.csv"
    rc, out, _ = run_cli(capsys, ["stats", "--labels", shared_data / PADCHEST, "--unmapped", out_file])
    assert rc == 0 and str(out_file) in out
    written = pd.read_csv(out_file)
    parents, mapping = _tree(), _padchest_map()
    expected: dict[str, int] = defaultdict(int)
    for ts in terms:
        for t in set(ts):
            if t != "normal" and not ({t} | _ancestors(t, parents)) & set(mapping):
                expected[t] += 1
    assert dict(zip(written["term"].str.lower(), written["images"], strict=True)) == dict(expected)
    line = next(x for x in out.splitlines() if x.startswith("No Finding"))
    assert "50,616" in line


# ---------------------------------------------------------------- Google re-labels


def test_google_relabels_have_no_no_finding_and_show_the_split(shared_data, capsys):
    path = shared_data / "nih" / "google2019_nih-chest-xray-labels.csv.gz"
    raw = pd.read_csv(path)
    stats = label_stats(read_label_table(path))
    assert stats["no_finding"] is None
    assert stats["splits"] == {k: int(v) for k, v in raw["Set Id"].value_counts().items()}
    rc, out, _ = run_cli(capsys, ["stats", "--labels", path])
    assert rc == 0 and "not a label of this dataset" in out
    assert "val 2,414" in out and "test 1,962" in out
