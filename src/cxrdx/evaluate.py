"""``cxrdx evaluate``: predictions, AUROC with patient-level bootstrap CIs, thresholds, calibration, report.

Decisions (why):

- **AUROC** point estimates come from scikit-learn. The 95 % confidence interval
  is a percentile *cluster* bootstrap over patients: a replicate draws patients
  with replacement and every image of a drawn patient comes along (as many
  times as the patient was drawn). NIH has many follow-up films per patient;
  resampling images would treat them as independent and make the CI too narrow.
  The replicates are computed with a vectorised weighted Mann-Whitney statistic
  (``fast_auroc``, tested equal to scikit-learn) rather than 14 000 sklearn calls.
  Replicates in which a class has no positives or no negatives are skipped and
  the number of valid ones is reported.
- **Undefined classes** (no positives or no negatives in the evaluated set) are
  reported as undefined (``null`` in JSON, an em dash in HTML) and left out of
  the mean AUROC, which names them; they never turn the mean into NaN.
- **Thresholds** are chosen on validation data only (Youden's J by default, or the
  highest threshold that reaches ``--target-sensitivity``) and then applied to the
  test set. Without validation data no threshold is chosen, and the report says
  so: choosing them on the test set would make the test metrics optimistic.
  A prediction is positive when ``p >= threshold`` (the rule ``Predictor`` uses).
- **Calibration**: expected calibration error with 10 equal-width bins per class.
- **CheXNet column**: Rajpurkar et al. 2017 per-class AUROCs, labelled as a
  random-split reference (their split differs from the official patient-wise one).
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxrdx.errors import ConfigError, CxrdxError, DataError
from cxrdx.labels import FINDINGS

if TYPE_CHECKING:
    import pandas as pd

    from cxrdx.predict import Predictor

CHEXNET_AUROC: dict[str, float] = {
    "Atelectasis": 0.8094,
    "Cardiomegaly": 0.9248,
    "Consolidation": 0.7901,
    "Edema": 0.8878,
    "Effusion": 0.8638,
    "Emphysema": 0.9371,
    "Fibrosis": 0.8047,
    "Hernia": 0.9164,
    "Infiltration": 0.7345,
    "Mass": 0.8676,
    "Nodule": 0.7802,
    "Pleural_Thickening": 0.8062,
    "Pneumonia": 0.7680,
    "Pneumothorax": 0.8887,
}
CHEXNET_LABEL = "CheXNet (Rajpurkar 2017), random split reference \u2014 not the same test set"
ECE_BINS = 10
BOOT_CHUNK = 50  # replicates per vectorised block (memory ~ chunk x images x 8 bytes x a few)


# --------------------------------------------------------------------------- AUROC and bootstrap


def _weighted_aurocs(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC for each row of ``weights`` (B, n): weighted Mann-Whitney U with ties counted half.

    Integer weights equal repeating each sample that many times. NaN where a row
    leaves no positive or no negative weight.
    """
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    pos = np.asarray(y, dtype=bool)[order]
    starts = np.r_[0, np.nonzero(np.diff(s))[0] + 1]  # groups of tied scores
    w = np.asarray(weights, dtype=np.float64)[:, order]
    wp = np.add.reduceat(np.where(pos, w, 0.0), starts, axis=1)
    wn = np.add.reduceat(np.where(pos, 0.0, w), starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn  # negative weight strictly below each tie group
    u = (wp * (below + 0.5 * wn)).sum(axis=1)
    p, n = wp.sum(axis=1), wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = u / (p * n)
    auc[(p <= 0) | (n <= 0)] = np.nan
    return auc


def fast_auroc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float | None:
    """AUROC via ranks (equals ``sklearn.metrics.roc_auc_score``); None when undefined."""
    y = np.asarray(y)
    scores = np.asarray(scores, dtype=np.float64)
    w = np.ones((1, len(y))) if weights is None else np.asarray(weights, dtype=np.float64)[None]
    value = float(_weighted_aurocs(y, scores, w)[0])
    return None if math.isnan(value) else value


def patient_multiplicities(patients: Sequence, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_images) int: how often each image appears in each cluster-bootstrap replicate.

    Patients are drawn with replacement (as many draws as there are patients);
    every image inherits its patient's count, so a patient is never split.
    """
    codes, uniques = _factorize(patients)
    n_pat = len(uniques)
    draws = rng.integers(0, n_pat, size=(n_boot, n_pat))
    flat = (draws + np.arange(n_boot)[:, None] * n_pat).ravel()
    counts = np.bincount(flat, minlength=n_boot * n_pat).reshape(n_boot, n_pat)
    return counts[:, codes].astype(np.int32)


def resample_by_patient(patients: Sequence, rng: np.random.Generator) -> np.ndarray:
    """Image indices of one patient-level bootstrap replicate (each drawn patient's images, repeated)."""
    counts = patient_multiplicities(patients, 1, rng)[0]
    return np.repeat(np.arange(len(counts)), counts)


def _factorize(values: Sequence) -> tuple[np.ndarray, np.ndarray]:
    uniques, codes = np.unique(
        np.asarray([str(v) for v in values], dtype=object).astype(str), return_inverse=True
    )
    return codes.astype(np.int64), uniques


@dataclass
class AurocResult:
    """One class's AUROC with its bootstrap CI; ``auroc`` None means undefined."""

    auroc: float | None
    ci_low: float | None
    ci_high: float | None
    n_boot_valid: int
    n_pos: int
    n_neg: int

    @property
    def defined(self) -> bool:
        return self.auroc is not None


def auroc_with_ci(
    y_true: np.ndarray,
    probs: np.ndarray,
    patients: Sequence,
    names: Sequence[str] = FINDINGS,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, AurocResult]:
    """Per-class AUROC (scikit-learn) and a patient-level percentile bootstrap CI."""
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    if y_true.shape != probs.shape or y_true.ndim != 2 or y_true.shape[1] != len(names):
        raise ValueError(
            f"labels {y_true.shape} and probabilities {probs.shape} must both be (n, {len(names)})"
        )
    if len(patients) != len(y_true):
        raise ValueError(f"{len(patients)} patient ids for {len(y_true)} images")
    if not 0 < level < 1:
        raise ConfigError(f"confidence level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    reps: list[list[np.ndarray]] = [[] for _ in names]
    done = 0
    while done < n_boot:
        chunk = min(BOOT_CHUNK, n_boot - done)
        weights = patient_multiplicities(patients, chunk, rng)
        for c in range(len(names)):
            if 0 < y_true[:, c].sum() < len(y_true):
                reps[c].append(_weighted_aurocs(y_true[:, c], probs[:, c], weights))
        done += chunk
    out: dict[str, AurocResult] = {}
    for c, name in enumerate(names):
        n_pos = int(y_true[:, c].sum())
        n_neg = len(y_true) - n_pos
        if n_pos == 0 or n_neg == 0:
            out[name] = AurocResult(None, None, None, 0, n_pos, n_neg)
            continue
        point = float(roc_auc_score(y_true[:, c], probs[:, c]))
        values = np.concatenate(reps[c]) if reps[c] else np.array([])
        values = values[~np.isnan(values)]
        lo = hi = None
        if len(values):
            tail = (1 - level) / 2 * 100
            lo, hi = (float(v) for v in np.percentile(values, [tail, 100 - tail]))
        out[name] = AurocResult(point, lo, hi, int(len(values)), n_pos, n_neg)
    return out


def mean_auroc(results: dict[str, AurocResult]) -> tuple[float | None, list[str], list[str]]:
    """Mean over defined classes, the classes used, and the undefined classes left out."""
    used = [k for k, r in results.items() if r.defined]
    left_out = [k for k, r in results.items() if not r.defined]
    value = float(np.mean([results[k].auroc for k in used])) if used else None
    return value, used, left_out


# --------------------------------------------------------------------------- thresholds


def threshold_table(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct score as a threshold (descending) with true and false positives at ``p >= t``."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    yy = np.asarray(y, dtype=np.int64)[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct value
    tp = np.cumsum(yy)[last]
    fp = last + 1 - tp
    return s[last], tp, fp


def youden_threshold(y: np.ndarray, scores: np.ndarray) -> float | None:
    """The threshold maximising sensitivity + specificity - 1 (the highest one among ties)."""
    p = int(np.sum(y))
    n = len(y) - p
    if p == 0 or n == 0:
        return None
    t, tp, fp = threshold_table(y, scores)
    j = tp / p + (n - fp) / n - 1
    return float(t[int(np.argmax(j))])


def sensitivity_threshold(y: np.ndarray, scores: np.ndarray, target: float) -> float | None:
    """The highest threshold whose sensitivity reaches ``target`` (best specificity at that sensitivity)."""
    p = int(np.sum(y))
    if p == 0 or p == len(y):
        return None
    t, tp, _ = threshold_table(y, scores)
    reach = np.nonzero(tp / p >= target)[0]
    return float(t[reach[0]])


def choose_thresholds(
    y_true: np.ndarray,
    probs: np.ndarray,
    names: Sequence[str] = FINDINGS,
    method: str = "youden",
    target_sensitivity: float = 0.9,
) -> dict[str, float | None]:
    """Per-class thresholds on *validation* data; None for classes that are undefined there."""
    if method not in ("youden", "sensitivity"):
        raise ConfigError(f"threshold method must be 'youden' or 'sensitivity', got {method!r}")
    if method == "sensitivity" and not 0 < target_sensitivity <= 1:
        raise ConfigError(f"--target-sensitivity must be in (0, 1], got {target_sensitivity}")
    out: dict[str, float | None] = {}
    for c, name in enumerate(names):
        y, s = np.asarray(y_true)[:, c], np.asarray(probs)[:, c]
        out[name] = (
            youden_threshold(y, s) if method == "youden" else sensitivity_threshold(y, s, target_sensitivity)
        )
    return out


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def binary_metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | int | None]:
    """Sensitivity, specificity, PPV, NPV, F1 at ``p >= threshold`` (None where a ratio is 0/0)."""
    y = np.asarray(y, dtype=bool)
    pred = np.asarray(scores) >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    tn = int(np.sum(~pred & ~y))
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


# --------------------------------------------------------------------------- calibration


def calibration_bins(y: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Equal-width bins on [0, 1]: count, mean predicted probability and observed frequency per bin."""
    probs = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    y = np.asarray(y, dtype=np.float64)
    idx = np.minimum((probs * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=probs, minlength=n_bins) / count
        freq = np.bincount(idx, weights=y, minlength=n_bins) / count
    return {"count": count, "confidence": conf, "frequency": freq}


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float | None:
    """Sum over bins of (bin share) x |observed frequency - mean predicted probability|."""
    if len(y) == 0:
        return None
    b = calibration_bins(y, probs, n_bins)
    used = b["count"] > 0
    return float(np.sum(b["count"][used] / len(y) * np.abs(b["frequency"][used] - b["confidence"][used])))


# --------------------------------------------------------------------------- data and inference


@dataclass
class EvalSet:
    """Rows to evaluate: a label table and a way to get their [0, 1] squares."""

    description: str
    table: pd.DataFrame  # image, patient, finding columns
    cache_images: np.ndarray | None = None  # (N, S, S) uint8 memmap; table["row"] indexes it
    images_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


def _is_cache(path: Path) -> bool:
    return path.is_dir() and (path / "index.csv").is_file() and (path / "images.npy").is_file()


def load_eval_set(path: str, split: str | None, images: str | None, labels: Sequence[str]) -> EvalSet:
    """A prepared cache directory (rows of ``split``) or a label CSV whose images are read from disk."""
    import pandas as pd

    p = Path(path)
    if _is_cache(p):
        table = pd.read_csv(
            p / "index.csv", dtype={"patient": str, "image": str, "split": str}, keep_default_na=False
        )
        if "row" not in table.columns:
            raise DataError(f"{p / 'index.csv'}: no 'row' column; rebuild the cache with `cxrdx prepare`")
        if split:
            if "split" not in table.columns:
                raise DataError(
                    f"{p / 'index.csv'}: no 'split' column, so --split {split} cannot be selected"
                )
            present = sorted(set(table["split"]))
            table = table[table["split"] == split].reset_index(drop=True)
            if table.empty:
                raise DataError(f"{p}: no rows with split {split!r}; the cache holds splits {present}")
        try:
            images_npy = np.load(p / "images.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"{p / 'images.npy'}: cannot be opened ({exc}); rebuild the cache") from None
        if images_npy.ndim != 3 or images_npy.dtype != np.uint8:
            raise DataError(
                f"{p / 'images.npy'}: expected (N, S, S) uint8, got {images_npy.shape} {images_npy.dtype}"
            )
        bad = int(((table["row"] < 0) | (table["row"] >= len(images_npy))).sum())
        if bad:
            raise DataError(f"{p / 'index.csv'}: {bad} row index(es) outside images.npy; rebuild the cache")
        desc = f"{p} (split {split})" if split else str(p)
        return _finish_table(EvalSet(desc, table, cache_images=images_npy), labels)
    if p.is_dir():
        raise DataError(
            f"{p}: a folder without index.csv and images.npy is not a prepared cache; run `cxrdx prepare`"
        )
    if not p.is_file():
        raise DataError(f"{p}: no such label CSV or prepared cache folder")
    from cxrdx.datasets import read_labels

    table = read_labels(p, images)
    images_dir = Path(images) if images else None
    return _finish_table(EvalSet(str(p), table, images_dir=images_dir), labels)


def _finish_table(es: EvalSet, labels: Sequence[str]) -> EvalSet:
    table = es.table
    missing = [name for name in labels if name not in table.columns]
    if missing:
        raise DataError(
            f"{es.description}: no label column(s) for {', '.join(missing)}, which the model outputs"
        )
    if "image" not in table.columns:
        raise DataError(f"{es.description}: no 'image' column")
    if "patient" not in table.columns or (table["patient"].astype(str).str.strip() == "").any():
        es.notes.append(
            f"{es.description}: some rows have no patient id; each such image counts as its own patient "
            "in the bootstrap (CIs may be too narrow if patients have several images)"
        )
        pat = table["patient"].astype(str) if "patient" in table.columns else table["image"].astype(str)
        table = table.assign(
            patient=np.where(pat.str.strip() == "", "image:" + table["image"].astype(str), pat)
        )
    es.table = table.reset_index(drop=True)
    return es


def _iter_squares(es: EvalSet, size: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions into es.table, float32 (B, S, S) letterboxed [0, 1] squares); unreadable rows omitted."""
    from cxrdx.preprocess import letterbox

    n = len(es.table)
    if es.cache_images is not None:
        rows = es.table["row"].to_numpy()
        for start in range(0, n, batch_size):
            pos = np.arange(start, min(n, start + batch_size))
            yield pos, np.asarray(es.cache_images[rows[pos]], dtype=np.float32) / 255.0
        return
    from cxrdx.io import read_image

    paths = es.table["path"].astype(str) if "path" in es.table.columns else es.table["image"].astype(str)
    pending_pos: list[int] = []
    pending: list[np.ndarray] = []
    for i, raw in enumerate(paths):
        path = Path(raw)
        if not raw or (es.images_dir is not None and not path.is_absolute() and not path.exists()):
            path = (es.images_dir or Path(".")) / str(es.table["image"].iloc[i])
        try:
            image, _ = read_image(path)
        except CxrdxError as exc:
            es.notes.append(f"skipped unreadable image: {exc}")
            continue
        pending_pos.append(i)
        pending.append(letterbox(image, size)[0])
        if len(pending) >= batch_size:
            yield np.asarray(pending_pos), np.stack(pending)
            pending_pos, pending = [], []
    if pending:
        yield np.asarray(pending_pos), np.stack(pending)


def _inputs_for(predictor: Predictor, squares: np.ndarray) -> np.ndarray:
    from cxrdx.preprocess import resize_float

    size = predictor.meta.preprocessing.size
    if squares.shape[1] != size:
        squares = np.stack([resize_float(sq, size, size) for sq in squares])
    return predictor.meta.preprocessing.normalize(squares)


def run_inference(
    predictors: Sequence[Predictor], es: EvalSet, tta: bool, batch_size: int = 32, progress: bool = True
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Probabilities (n_ok, L), spread (n_ok, L) or None, and the table positions they belong to.

    Spread: one checkpoint -> standard deviation over the TTA views (needs ``tta``);
    an ensemble -> standard deviation across the checkpoints (each TTA-averaged if ``tta``).
    """
    from tqdm import tqdm

    size = predictors[0].meta.preprocessing.size
    probs_all, spread_all, pos_all = [], [], []
    bar = tqdm(total=len(es.table), desc="evaluate", unit="img", disable=not progress, file=sys.stderr)
    for pos, squares in _iter_squares(es, size, batch_size):
        outs = [p.probabilities(_inputs_for(p, squares), tta=tta) for p in predictors]
        if len(outs) == 1:
            probs_all.append(outs[0][0])
            spread_all.append(outs[0][1])
        else:
            stack = np.stack([o[0] for o in outs])
            probs_all.append(stack.mean(0))
            spread_all.append(stack.std(0))
        pos_all.append(pos)
        bar.update(len(pos))
    bar.close()
    if not pos_all:
        raise DataError(f"{es.description}: none of the {len(es.table)} images could be read")
    spread = None if spread_all[0] is None else np.concatenate(spread_all)
    return np.concatenate(probs_all), spread, np.concatenate(pos_all)


# --------------------------------------------------------------------------- metrics


def _nz(v: float | None, digits: int = 6) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), digits)


def compute_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    patients: Sequence,
    names: Sequence[str],
    thresholds: dict[str, float | None] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Per-class metrics dict (JSON-ready, None for undefined) and the mean AUROC over defined classes."""
    from sklearn.metrics import average_precision_score

    aucs = auroc_with_ci(y_true, probs, patients, names, n_boot=n_boot, seed=seed)
    mean, used, left_out = mean_auroc(aucs)
    classes: dict[str, dict] = {}
    for c, name in enumerate(names):
        y, s, r = y_true[:, c], probs[:, c], aucs[name]
        entry = {
            "n": int(len(y)),
            "n_pos": r.n_pos,
            "n_neg": r.n_neg,
            "prevalence": _nz(r.n_pos / len(y)) if len(y) else None,
            "auroc": _nz(r.auroc),
            "auroc_ci": [_nz(r.ci_low), _nz(r.ci_high)] if r.defined else None,
            "n_boot_valid": r.n_boot_valid,
            "average_precision": _nz(float(average_precision_score(y, s))) if r.n_pos else None,
            "ece": _nz(expected_calibration_error(y, s)),
            "chexnet_auroc": CHEXNET_AUROC.get(name),
            "threshold": None,
        }
        t = (thresholds or {}).get(name)
        if t is not None:
            entry["threshold"] = _nz(t, 8)
            entry["at_threshold"] = {
                k: (_nz(v) if isinstance(v, float) else v) for k, v in binary_metrics(y, s, t).items()
            }
        classes[name] = entry
    ref = [CHEXNET_AUROC[k] for k in used if k in CHEXNET_AUROC]
    return {
        "classes": classes,
        "mean_auroc": _nz(mean),
        "mean_auroc_classes": used,
        "undefined_classes": left_out,
        "chexnet_mean_same_classes": _nz(float(np.mean(ref))) if ref else None,
    }


# --------------------------------------------------------------------------- plots and report


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(n: int) -> list:
    plt = _plt()
    cmap = plt.get_cmap("tab20")
    return [cmap(i % 20) for i in range(n)]


def plot_roc(out: Path, y_true: np.ndarray, probs: np.ndarray, names: Sequence[str], metrics: dict) -> Path:
    from sklearn.metrics import roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 6), dpi=110)
    for c, (name, color) in enumerate(zip(names, _colors(len(names)), strict=True)):
        auc = metrics["classes"][name]["auroc"]
        if auc is None:
            continue
        fpr, tpr, _ = roc_curve(y_true[:, c], probs[:, c])
        ax.plot(fpr, tpr, color=color, lw=1.6, label=f"{name} ({auc:.3f})")
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1)
    ax.set(
        xlim=(0, 1), ylim=(0, 1.01), xlabel="1 \u2212 specificity (false positive rate)", ylabel="sensitivity"
    )
    ax.set_title("ROC curves (AUROC in legend)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return _save(fig, out / "roc.png")


def plot_pr(out: Path, y_true: np.ndarray, probs: np.ndarray, names: Sequence[str], metrics: dict) -> Path:
    from sklearn.metrics import precision_recall_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 6), dpi=110)
    for c, (name, color) in enumerate(zip(names, _colors(len(names)), strict=True)):
        ap = metrics["classes"][name]["average_precision"]
        if ap is None:
            continue
        prec, rec, _ = precision_recall_curve(y_true[:, c], probs[:, c])
        prev = metrics["classes"][name]["prevalence"]
        ax.plot(rec, prec, color=color, lw=1.6, label=f"{name} (AP {ap:.3f}, prev {prev:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)")
    ax.set_title("Precision-recall curves (average precision and prevalence in legend)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return _save(fig, out / "pr.png")


def plot_reliability(
    out: Path, y_true: np.ndarray, probs: np.ndarray, names: Sequence[str], metrics: dict
) -> Path:
    plt = _plt()
    cols = 5
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows + 0.4), dpi=100, squeeze=False)
    for c, name in enumerate(names):
        ax = axes[c // cols][c % cols]
        b = calibration_bins(y_true[:, c], probs[:, c])
        used = b["count"] > 0
        centers = (np.arange(ECE_BINS) + 0.5) / ECE_BINS
        ax.bar(centers, np.where(used, b["frequency"], 0), width=1 / ECE_BINS, color="#4c78a8", alpha=0.35)
        ax.plot(b["confidence"][used], b["frequency"][used], "o-", color="#4c78a8", ms=3, lw=1.2)
        ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=0.8)
        ece = metrics["classes"][name]["ece"]
        ax.set_title(f"{name}\nECE {ece:.3f}" if ece is not None else name, fontsize=9)
        ax.set(xlim=(0, 1), ylim=(0, 1))
        ax.tick_params(labelsize=7)
    for k in range(len(names), rows * cols):
        axes[k // cols][k % cols].set_axis_off()
    fig.supxlabel("mean predicted probability (10 equal-width bins)", fontsize=9)
    fig.supylabel("observed frequency", fontsize=9)
    fig.suptitle("Reliability diagrams (diagonal = perfect calibration)", fontsize=11)
    return _save(fig, out / "reliability.png")


def plot_prevalence(out: Path, metrics: dict, names: Sequence[str], val_metrics: dict | None) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 5), dpi=110)
    y = np.arange(len(names))
    test_prev = [metrics["classes"][n]["prevalence"] or 0.0 for n in names]
    h = 0.4 if val_metrics else 0.7
    ax.barh(y - (h / 2 if val_metrics else 0), test_prev, height=h, color="#4c78a8", label="test")
    for yi, n in zip(y, names, strict=True):
        pv = metrics["classes"][n]["prevalence"] or 0.0
        ax.text(
            pv,
            yi - (h / 2 if val_metrics else 0),
            f" {metrics['classes'][n]['n_pos']}",
            va="center",
            fontsize=7,
        )
    if val_metrics:
        ax.barh(
            y + h / 2,
            [val_metrics[n]["prevalence"] or 0.0 for n in names],
            height=h,
            color="#f58518",
            label="validation",
        )
        ax.legend(fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("prevalence (fraction of images; number = positives in test)")
    ax.set_title("Class prevalence")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out / "prevalence.png")


def plot_uncertainty(out: Path, spread: np.ndarray, names: Sequence[str], kind: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 4.5), dpi=110)
    ax.boxplot([spread[:, c] for c in range(len(names))], showfliers=False)
    ax.set_xticks(np.arange(1, len(names) + 1), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("spread (std of probability)")
    ax.set_title(f"Per-prediction uncertainty: {kind}")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out / "uncertainty.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    _plt().close(fig)
    return path


def _fmt(v: float | None, digits: int = 3) -> str:
    return "\u2014" if v is None else f"{v:.{digits}f}"


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1180px;color:#222;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:2px solid #4c78a8;padding-bottom:.2rem}
.meta{color:#555;font-size:.9rem}.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5rem .8rem;margin:.6rem 0;font-size:.9rem}
table{border-collapse:collapse;font-size:.86rem;margin:.6rem 0}th,td{padding:.28rem .6rem;border-bottom:1px solid #ddd;text-align:right}
th{background:#f0f4f8;position:sticky;top:0}td:first-child,th:first-child{text-align:left}tr:hover td{background:#f7fbff}
td.ref,th.ref{color:#777;font-style:italic}tfoot td{font-weight:600;border-top:2px solid #999}
.ci{color:#666;font-size:.8rem}img{max-width:100%;border:1px solid #e3e3e3;margin:.4rem 0}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1rem}.disclaimer{color:#a00;font-size:.85rem}
"""


def render_html(metrics: dict, plots: Sequence[str]) -> str:
    """The report page: summary, per-class table, thresholds, calibration and every plot."""
    e = html.escape
    ds, cls = metrics["dataset"], metrics["classes"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>cxrdx evaluation report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>cxrdx evaluation report</h1>",
        f"<p class='meta'>weights: <code>{e(metrics['model']['weights'])}</code> ({e(metrics['model']['architecture'])}"
        f"{', ensemble of ' + str(len(metrics['model']['ensemble'])) if len(metrics['model']['ensemble']) > 1 else ''}"
        f", TTA {'on (horizontal flip)' if metrics['model']['tta'] else 'off'})<br>"
        f"test data: <code>{e(ds['description'])}</code> \u2014 {ds['n_images']} images, {ds['n_patients']} patients"
        f"{', ' + str(ds['n_unreadable']) + ' unreadable (left out)' if ds['n_unreadable'] else ''}</p>",
        "<p class='disclaimer'>For research and education only; not a medical device.</p>",
    ]
    mean = metrics["mean_auroc"]
    left = metrics["undefined_classes"]
    parts.append(
        f"<p><b>Mean AUROC</b> over {len(metrics['mean_auroc_classes'])} defined classes: <b>{_fmt(mean)}</b>"
        f" (CheXNet reference over the same classes: {_fmt(metrics['chexnet_mean_same_classes'])})</p>"
    )
    if left:
        parts.append(
            f"<p class='note'>Undefined AUROC (no positives or no negatives in the test data), left out of the mean: "
            f"{e(', '.join(left))}.</p>"
        )
    for note in metrics.get("notes", []):
        parts.append(f"<p class='note'>{e(note)}</p>")
    boot = metrics["bootstrap"]
    parts += [
        "<h2>Discrimination</h2>",
        f"<p class='meta'>95 % CI: percentile bootstrap resampling <b>patients</b> ({boot['n_boot']} replicates, "
        f"seed {boot['seed']}; replicates in which a class has no positives or no negatives are skipped).</p>",
        "<table><thead><tr><th>finding</th><th>n pos</th><th>prevalence</th><th>AUROC [95 % CI]</th>"
        "<th>valid boot</th><th>avg precision</th><th>ECE</th>"
        f"<th class='ref' title='{e(CHEXNET_LABEL)}'>CheXNet AUROC\u00b9</th></tr></thead><tbody>",
    ]
    for name, c in cls.items():
        ci = c["auroc_ci"]
        ci_txt = (
            f" <span class='ci'>[{_fmt(ci[0])}, {_fmt(ci[1])}]</span>" if ci and ci[0] is not None else ""
        )
        parts.append(
            f"<tr><td>{e(name)}</td><td>{c['n_pos']}</td><td>{_fmt(c['prevalence'])}</td>"
            f"<td>{_fmt(c['auroc'])}{ci_txt}</td><td>{c['n_boot_valid']}</td><td>{_fmt(c['average_precision'])}</td>"
            f"<td>{_fmt(c['ece'])}</td><td class='ref'>{_fmt(c['chexnet_auroc'], 4)}</td></tr>"
        )
    parts.append(
        f"</tbody><tfoot><tr><td>mean (defined classes)</td><td></td><td></td><td>{_fmt(mean)}</td><td></td><td></td>"
        f"<td></td><td class='ref'>{_fmt(metrics['chexnet_mean_same_classes'], 4)}</td></tr></tfoot></table>"
        f"<p class='meta'>\u00b9 {e(CHEXNET_LABEL)}. CheXNet used a random image split of NIH "
        "ChestX-ray14; its numbers are a point of reference, not a like-for-like comparison.</p>"
    )
    th = metrics["thresholds"]
    parts.append("<h2>Operating thresholds</h2>")
    if th["values"] is None:
        parts.append(f"<p class='note'>{e(th['note'])}</p>")
    else:
        parts.append(
            f"<p class='meta'>Chosen on <code>{e(th['chosen_on'])}</code> by {e(th['method_text'])}; "
            "applied to the test data (positive when p \u2265 threshold).</p>"
            "<table><thead><tr><th>finding</th><th>threshold</th><th>sensitivity</th><th>specificity</th>"
            "<th>PPV</th><th>NPV</th><th>F1</th><th>TP / FP / FN / TN</th></tr></thead><tbody>"
        )
        for name, c in cls.items():
            at = c.get("at_threshold")
            if c["threshold"] is None or at is None:
                parts.append(f"<tr><td>{e(name)}</td><td>\u2014</td>" + "<td>\u2014</td>" * 6 + "</tr>")
                continue
            parts.append(
                f"<tr><td>{e(name)}</td><td>{_fmt(c['threshold'], 4)}</td><td>{_fmt(at['sensitivity'])}</td>"
                f"<td>{_fmt(at['specificity'])}</td><td>{_fmt(at['ppv'])}</td><td>{_fmt(at['npv'])}</td>"
                f"<td>{_fmt(at['f1'])}</td><td>{at['tp']} / {at['fp']} / {at['fn']} / {at['tn']}</td></tr>"
            )
        parts.append("</tbody></table>")
        if th.get("undefined"):
            parts.append(
                f"<p class='note'>No threshold for {e(', '.join(th['undefined']))}: "
                "no positives or no negatives in the validation data.</p>"
            )
    titles = {
        "roc.png": "ROC curves",
        "pr.png": "Precision-recall curves",
        "reliability.png": "Calibration: reliability diagrams",
        "prevalence.png": "Class prevalence",
        "uncertainty.png": "Uncertainty",
    }
    parts.append("<h2>Plots</h2>")
    for name in plots:
        parts.append(
            f"<h3>{e(titles.get(name, name))}</h3><img src='{e(name)}' alt='{e(titles.get(name, name))}'>"
        )
    parts.append(
        "<p class='meta'>Files: <a href='metrics.json'>metrics.json</a>, "
        "<a href='predictions.csv'>predictions.csv</a>.</p></body></html>"
    )
    return "\n".join(parts)


def write_report(
    out: str | Path,
    metrics: dict,
    y_true: np.ndarray,
    probs: np.ndarray,
    names: Sequence[str],
    spread: np.ndarray | None = None,
    spread_kind: str = "",
    val_classes: dict | None = None,
) -> Path:
    """Write the PNG plots, ``metrics.json`` and ``report.html`` (which shows every plot) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = [
        plot_roc(out, y_true, probs, names, metrics),
        plot_pr(out, y_true, probs, names, metrics),
        plot_reliability(out, y_true, probs, names, metrics),
        plot_prevalence(out, metrics, names, val_classes),
    ]
    if spread is not None:
        plots.append(plot_uncertainty(out, spread, names, spread_kind))
    metrics["plots"] = [p.name for p in plots]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    report = out / "report.html"
    report.write_text(render_html(metrics, metrics["plots"]), encoding="utf-8")
    return report


# --------------------------------------------------------------------------- the command


@dataclass
class EvaluateConfig:
    weights: str
    data: str
    out: str
    images: str | None = None
    split: str = "test"
    val: str | None = None
    val_split: str = "val"
    val_images: str | None = None
    target_sensitivity: float | None = None  # None -> Youden's J
    tta: bool = False
    ensemble: list[str] = field(default_factory=list)
    n_boot: int = 1000
    seed: int = 0
    batch_size: int = 32
    device: str = "auto"
    write_thresholds: bool = True
    progress: bool = True


def _predictions_frame(es: EvalSet, pos: np.ndarray, probs: np.ndarray, spread: np.ndarray | None, names):
    import pandas as pd

    frame = pd.DataFrame({"image": es.table["image"].astype(str).to_numpy()[pos]})
    for c, name in enumerate(names):
        frame[name] = np.round(probs[:, c], 6)
    if spread is not None:
        for c, name in enumerate(names):
            frame[f"{name}_spread"] = np.round(spread[:, c], 6)
    frame["patient"] = es.table["patient"].astype(str).to_numpy()[pos]
    return frame


def evaluate(config: EvaluateConfig) -> dict:
    """Run the whole evaluation; returns the metrics dict that is also written to ``metrics.json``."""
    from cxrdx.gradcam import _device
    from cxrdx.model import update_checkpoint_meta
    from cxrdx.predict import Predictor

    if config.n_boot < 0:
        raise ConfigError(f"--n-boot must be >= 0, got {config.n_boot}")
    if config.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {config.batch_size}")
    method = "youden" if config.target_sensitivity is None else "sensitivity"
    if method == "sensitivity" and not 0 < config.target_sensitivity <= 1:  # type: ignore[operator]
        raise ConfigError(f"--target-sensitivity must be in (0, 1], got {config.target_sensitivity}")
    device = _device(config.device)
    predictors = [Predictor.load(w, device=device) for w in [config.weights, *config.ensemble]]
    names = predictors[0].labels
    for w, p in zip(config.ensemble, predictors[1:], strict=True):
        if p.labels != names:
            raise ConfigError(f"--ensemble {w}: outputs {p.labels}, but {config.weights} outputs {names}")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    test = load_eval_set(
        config.data, config.split if _is_cache(Path(config.data)) else None, config.images, names
    )
    val: EvalSet | None = None
    val_path = config.val or (config.data if _is_cache(Path(config.data)) else None)
    if val_path is not None:
        is_cache = _is_cache(Path(val_path))
        if is_cache and val_path == config.data and config.val_split == config.split:
            raise ConfigError(
                f"--val-split {config.val_split} is the test split: thresholds must not be chosen on the test data"
            )
        if not is_cache and config.val and Path(config.val).resolve() == Path(config.data).resolve():
            raise ConfigError(
                "--val is the same file as --data: thresholds must not be chosen on the test data"
            )
        try:
            val = load_eval_set(
                val_path, config.val_split if is_cache else None, config.val_images or config.images, names
            )
        except DataError as exc:
            if config.val:  # asked for explicitly: a problem is an error
                raise
            print(
                f"cxrdx evaluate: no validation data ({exc}); thresholds will not be chosen", file=sys.stderr
            )

    probs, spread, pos = run_inference(predictors, test, config.tta, config.batch_size, config.progress)
    y_true = test.table.loc[pos, names].to_numpy().astype(np.int64)
    patients = test.table["patient"].astype(str).to_numpy()[pos]
    _predictions_frame(test, pos, probs, spread, names).to_csv(out / "predictions.csv", index=False)
    spread_kind = ""
    if spread is not None:
        spread_kind = (
            f"std across {len(predictors)} checkpoints"
            if len(predictors) > 1
            else "std across 2 TTA views (identity, flip)"
        )

    notes = list(test.notes[:20])
    thresholds: dict[str, float | None] | None = None
    val_classes = None
    th_info: dict = {"values": None, "method": None}
    if val is not None:
        v_probs, v_spread, v_pos = run_inference(
            predictors, val, config.tta, config.batch_size, config.progress
        )
        v_true = val.table.loc[v_pos, names].to_numpy().astype(np.int64)
        _predictions_frame(val, v_pos, v_probs, v_spread, names).to_csv(
            out / "val_predictions.csv", index=False
        )
        thresholds = choose_thresholds(v_true, v_probs, names, method, config.target_sensitivity or 0.9)
        method_text = (
            "Youden's J (max sensitivity + specificity \u2212 1)"
            if method == "youden"
            else f"the highest threshold with sensitivity \u2265 {config.target_sensitivity}"
        )
        th_info = {
            "values": thresholds,
            "method": method if method == "youden" else f"sensitivity>={config.target_sensitivity}",
            "method_text": method_text,
            "chosen_on": val.description,
            "n_val_images": int(len(v_pos)),
            "undefined": [k for k, v in thresholds.items() if v is None],
        }
        val_classes = {
            n: {
                "prevalence": float(v_true[:, c].mean()) if len(v_true) else None,
                "n_pos": int(v_true[:, c].sum()),
            }
            for c, n in enumerate(names)
        }
        shared = set(val.table["patient"].astype(str)) & set(patients)
        if shared:
            notes.append(
                f"{len(shared)} patient(s) appear in both the validation and the test data (patient leakage); "
                "the thresholds and test metrics are not independent"
            )
        notes += val.notes[:20]
    else:
        th_info["note"] = (
            "Thresholds were not chosen: no validation data was given (--val VAL_CSV, or a cache with a "
            f"'{config.val_split}' split). They are never chosen on the test data."
        )

    metrics = compute_metrics(y_true, probs, patients, names, thresholds, config.n_boot, config.seed)
    metrics = {
        "model": {
            "weights": str(config.weights),
            "architecture": predictors[0].meta.architecture,
            "ensemble": [str(config.weights), *map(str, config.ensemble)],
            "tta": bool(config.tta),
            "uncertainty": spread_kind or None,
        },
        "dataset": {
            "description": test.description,
            "n_images": int(len(pos)),
            "n_patients": int(len(set(patients))),
            "n_unreadable": int(len(test.table) - len(pos)),
        },
        **metrics,
        "thresholds": th_info,
        "bootstrap": {"unit": "patient", "n_boot": config.n_boot, "level": 0.95, "seed": config.seed},
        "calibration": {"bins": ECE_BINS, "binning": "equal-width on [0, 1]"},
        "chexnet_reference": {"label": CHEXNET_LABEL, "auroc": CHEXNET_AUROC},
        "notes": notes,
    }
    if thresholds is not None:
        chosen = {k: v for k, v in thresholds.items() if v is not None}
        sidecar = {
            "thresholds": chosen,
            "threshold_method": th_info["method"],
            "chosen_on": th_info["chosen_on"],
        }
        (out / "thresholds.json").write_text(json.dumps(sidecar, indent=2) + "\n")
        if config.write_thresholds and len(predictors) == 1:
            evaluation = {
                "auroc": {k: v["auroc"] for k, v in metrics["classes"].items()},
                "mean_auroc": metrics["mean_auroc"],
                "dataset": test.description,
                "n": int(len(pos)),
                "tta": bool(config.tta),
            }

            def change(meta) -> None:
                meta.thresholds = chosen
                meta.threshold_method = th_info["method"]
                meta.evaluation = evaluation

            update_checkpoint_meta(config.weights, change)
            metrics["thresholds"]["written_to"] = str(config.weights)
        elif len(predictors) > 1:
            metrics["notes"].append(
                "Ensemble thresholds apply to the ensemble's mean probability; they were written only to "
                "thresholds.json, not into any single checkpoint."
            )
    write_report(out, metrics, y_true, probs, names, spread, spread_kind, val_classes)
    return metrics


def format_summary(metrics: dict) -> str:
    lines = [
        f"{'finding':<20} {'n pos':>6} {'AUROC':>7} {'95% CI':>17} {'AP':>7} {'ECE':>7} {'thresh':>8} {'CheXNet*':>9}"
    ]
    for name, c in metrics["classes"].items():
        ci = c["auroc_ci"]
        ci_txt = f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "undefined"
        lines.append(
            f"{name:<20} {c['n_pos']:>6} {_fmt(c['auroc']):>7} {ci_txt:>17} {_fmt(c['average_precision']):>7} "
            f"{_fmt(c['ece']):>7} {_fmt(c['threshold'], 4):>8} {_fmt(c['chexnet_auroc'], 4):>9}"
        )
    lines.append(
        f"mean AUROC over {len(metrics['mean_auroc_classes'])} defined classes: {_fmt(metrics['mean_auroc'])}"
    )
    if metrics["undefined_classes"]:
        lines.append(f"undefined (left out of the mean): {', '.join(metrics['undefined_classes'])}")
    lines.append(f"* {CHEXNET_LABEL}")
    return "\n".join(lines)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="AUROC with patient-bootstrap CIs, thresholds, calibration, HTML report",
        description="Evaluate a checkpoint on a prepared cache split or a label CSV: predictions.csv, per-class AUROC "
        "with 95%% CIs (bootstrap over patients), average precision, thresholds chosen on validation data, "
        "calibration, plots, metrics.json and report.html in --out.",
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="a cxrdx .safetensors checkpoint")
    p.add_argument("--data", required=True, metavar="CSV_OR_CACHE", help="prepared cache folder or label CSV")
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="report folder")
    p.add_argument("--images", metavar="DIR", help="image folder for a label CSV")
    p.add_argument("--split", default="test", help="cache split to evaluate (default test)")
    p.add_argument("--val", metavar="VAL_CSV", help="validation label CSV (or cache) to choose thresholds on")
    p.add_argument("--val-split", default="val", help="cache split for thresholds (default val)")
    p.add_argument("--val-images", metavar="DIR", help="image folder for --val (default: --images)")
    p.add_argument(
        "--target-sensitivity",
        type=float,
        metavar="S",
        help="choose each threshold as the highest reaching this sensitivity on validation (default: Youden's J)",
    )
    p.add_argument(
        "--tta", action="store_true", help="average over a horizontal flip; reports the spread as uncertainty"
    )
    p.add_argument(
        "--ensemble", nargs="+", default=[], metavar="CKPT", help="more checkpoints to average with --weights"
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--no-write-thresholds",
        dest="write_thresholds",
        action="store_false",
        help="do not store the chosen thresholds in the checkpoint (thresholds.json is still written)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    config = EvaluateConfig(
        weights=args.weights,
        data=args.data,
        out=args.out,
        images=args.images,
        split=args.split,
        val=args.val,
        val_split=args.val_split,
        val_images=args.val_images,
        target_sensitivity=args.target_sensitivity,
        tta=args.tta,
        ensemble=list(args.ensemble),
        n_boot=args.n_boot,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        write_thresholds=args.write_thresholds,
        progress=args.progress,
    )
    metrics = evaluate(config)
    print(format_summary(metrics))
    if metrics["thresholds"]["values"] is None:
        print(metrics["thresholds"]["note"])
    elif "written_to" in metrics["thresholds"]:
        print(
            f"thresholds ({metrics['thresholds']['method']}) written into {metrics['thresholds']['written_to']}"
        )
    print(f"report: {Path(config.out) / 'report.html'}")
    return 0
