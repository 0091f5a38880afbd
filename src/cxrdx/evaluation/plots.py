"""The report's PNG plots: ROC, precision-recall, reliability diagrams, prevalence, uncertainty."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxrdx.evaluation.metrics_record import MetricsRecord
from cxrdx.metrics.calibration import ECE_BINS, calibration_bins


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(n: int) -> list:
    plt = _plt()
    cmap = plt.get_cmap("tab20")
    return [cmap(i % 20) for i in range(n)]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    _plt().close(fig)
    return path


def _labelled(y_true: np.ndarray, scores: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Finding c's labels and scores over its labelled images (NaN = unlabelled, left out)."""
    y = np.asarray(y_true[:, c], dtype=np.float64)
    m = ~np.isnan(y)
    return y[m].astype(np.int64), np.asarray(scores[:, c])[m]


def plot_roc(
    out: Path, y_true: np.ndarray, probs: np.ndarray, names: Sequence[str], metrics: MetricsRecord
) -> Path:
    from cxrdx.metrics.curves import roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 6), dpi=110)
    for c, (name, color) in enumerate(zip(names, _colors(len(names)), strict=True)):
        auc = metrics.classes[name].auroc
        if auc is None:
            continue
        fpr, tpr, _ = roc_curve(*_labelled(y_true, probs, c))
        ax.plot(fpr, tpr, color=color, lw=1.6, label=f"{name} ({auc:.3f})")
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1)
    ax.set(
        xlim=(0, 1), ylim=(0, 1.01), xlabel="1 \u2212 specificity (false positive rate)", ylabel="sensitivity"
    )
    ax.set_title("ROC curves (AUROC in legend)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return _save(fig, out / "roc.png")


def plot_pr(
    out: Path, y_true: np.ndarray, probs: np.ndarray, names: Sequence[str], metrics: MetricsRecord
) -> Path:
    from cxrdx.metrics.curves import precision_recall_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 6), dpi=110)
    for c, (name, color) in enumerate(zip(names, _colors(len(names)), strict=True)):
        ap = metrics.classes[name].average_precision
        if ap is None:
            continue
        prec, rec = precision_recall_curve(*_labelled(y_true, probs, c))
        prev = metrics.classes[name].prevalence
        ax.plot(rec, prec, color=color, lw=1.6, label=f"{name} (AP {ap:.3f}, prev {prev:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)")
    ax.set_title("Precision-recall curves (average precision and prevalence in legend)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return _save(fig, out / "pr.png")


def plot_reliability(
    out: Path,
    y_true: np.ndarray,
    probs: np.ndarray,
    names: Sequence[str],
    metrics: MetricsRecord,
    raw: np.ndarray | None = None,
) -> Path:
    """Per finding: the reliability diagram after calibration (blue) and, with ``raw``, before it (grey)."""
    plt = _plt()
    cols = 5
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows + 0.4), dpi=100, squeeze=False)
    centers = (np.arange(ECE_BINS) + 0.5) / ECE_BINS
    for c, name in enumerate(names):
        ax = axes[c // cols][c % cols]
        b = calibration_bins(*_labelled(y_true, probs, c))
        used = b["count"] > 0
        ax.bar(centers, np.where(used, b["frequency"], 0), width=1 / ECE_BINS, color="#4c78a8", alpha=0.35)
        if raw is not None:
            r = calibration_bins(*_labelled(y_true, raw, c))
            r_used = r["count"] > 0
            ax.plot(r["confidence"][r_used], r["frequency"][r_used], "s--", color="0.45", ms=2.5, lw=1)
        ax.plot(b["confidence"][used], b["frequency"][used], "o-", color="#4c78a8", ms=3, lw=1.2)
        ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=0.8)
        cls = metrics.classes[name]
        ece, before = cls.ece, cls.ece_uncalibrated
        title = name
        if ece is not None:
            title += (
                f"\nECE {before:.3f} \u2192 {ece:.3f}"
                if raw is not None and before is not None
                else f"\nECE {ece:.3f}"
            )
        ax.set_title(title, fontsize=9)
        ax.set(xlim=(0, 1), ylim=(0, 1))
        ax.tick_params(labelsize=7)
    for k in range(len(names), rows * cols):
        axes[k // cols][k % cols].set_axis_off()
    fig.supxlabel("mean predicted probability (10 equal-width bins)", fontsize=9)
    fig.supylabel("observed frequency", fontsize=9)
    what = "grey = raw scores, blue = calibrated; " if raw is not None else ""
    fig.suptitle(f"Reliability diagrams ({what}diagonal = perfect calibration)", fontsize=11)
    return _save(fig, out / "reliability.png")


def plot_test_val_prevalence(
    out: Path, metrics: MetricsRecord, names: Sequence[str], val_classes: dict | None
) -> Path:
    """Test (and validation) prevalence per finding, drawn by THE prevalence plot of the data layer."""
    from cxrdx.data.stats import plot_prevalence as draw

    series = {"test": {n: metrics.classes[n].prevalence for n in names}}
    if val_classes:
        series["val"] = {n: val_classes[n]["prevalence"] for n in names}
    counts = {n: metrics.classes[n].n_pos for n in names}
    return draw(series, out / "prevalence.png", title="Class prevalence", counts=counts)


def plot_uncertainty(out: Path, spread: np.ndarray, names: Sequence[str], kind: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 4.5), dpi=110)
    ax.boxplot([spread[:, c] for c in range(len(names))], showfliers=False)
    ax.set_xticks(np.arange(1, len(names) + 1), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("spread (std of probability)")
    ax.set_title(f"Per-prediction uncertainty: {kind}")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out / "uncertainty.png")
