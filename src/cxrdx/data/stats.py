"""Label statistics: counts per finding, their text table, and THE one prevalence bar plot."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from cxrdx.data.label_table import LabelTable
from cxrdx.data.views import is_frontal
from cxrdx.errors import DataError
from cxrdx.labels import FINDINGS, NO_FINDING

_COLOURS = ("#4477aa", "#ee7733", "#228833", "#aa3377")


def label_stats(table: LabelTable | pd.DataFrame) -> dict:
    """Counts for a label table: images, patients, views, and per finding positives / negatives / uncertain / unlabelled.

    Read the table with ``uncertain="keep"`` to count uncertain (-1) labels; with another
    policy they are already 0, 1 or NaN. ``prevalence`` is positives over *labelled* images
    (positives + negatives + uncertain), ``prevalence_all`` positives over *all* images.
    ``no_finding``: the publisher's own No Finding count where the table carries it (the
    ``no_finding`` column: CheXpert / MIMIC-CXR ``No Finding = 1``, PadChest ``normal``),
    None where the dataset has no such label (the Google re-labels: 4 findings), else the
    images with no positive and no uncertain finding (NIH: its ``No Finding``).
    ``views`` counts every view in the table, ``frontal`` those the frontal filter keeps.
    A ``LabelTable`` counts the findings it labels; a bare DataFrame the 14 NIH findings it has.
    """
    import numpy as np

    df = table.frame if isinstance(table, LabelTable) else table
    named = table.findings if isinstance(table, LabelTable) and table.findings else FINDINGS
    dataset = table.dataset if isinstance(table, LabelTable) else None
    findings = [f for f in named if f in df.columns]
    values = df[findings].to_numpy(dtype=np.float32) if findings else np.zeros((len(df), 0), np.float32)
    per = {}
    for i, f in enumerate(findings):
        v = values[:, i]
        pos, neg, unc = int((v == 1).sum()), int((v == 0).sum()), int((v == -1).sum())
        labelled = pos + neg + unc
        per[f] = {
            "positives": pos,
            "negatives": neg,
            "uncertain": unc,
            "unlabelled": len(v) - labelled,
            "prevalence": pos / labelled if labelled else None,
            "prevalence_all": pos / len(v) if len(v) else None,
        }
    if "no_finding" in df.columns:
        normal: int | None = int((pd.to_numeric(df["no_finding"], errors="coerce") == 1).sum())
        normal_source = "publisher"
    elif dataset == "google":
        normal, normal_source = None, "not labelled"
    else:
        normal = int(((values == 1) | (values == -1)).sum(axis=1).__eq__(0).sum()) if findings else 0
        normal_source = "no positive or uncertain finding"
    views = (
        df["view"].fillna("").astype(str).replace("", "(none)").value_counts() if "view" in df.columns else {}
    )
    frontal = int(df["view"].fillna("").astype(str).map(is_frontal).sum()) if "view" in df.columns else 0
    splits = (
        {str(k): int(v) for k, v in df["official_split"].astype(str).value_counts().items()}
        if "official_split" in df.columns
        else {}
    )
    return {
        "images": len(df),
        "patients": int(df["patient"].nunique()),
        "studies": int(df["study"].nunique()) if "study" in df.columns else None,
        "views": {str(k): int(v) for k, v in dict(views).items()},
        "frontal": frontal,
        "splits": splits,
        "findings": findings,
        "per_finding": per,
        "positives": {f: c["positives"] for f, c in per.items()},
        "no_finding": normal,
        "no_finding_source": normal_source,
        "resolved": int((df["path"] != "").sum()) if "path" in df.columns else 0,
    }


def _pct(x: float | None) -> str:
    return f"{x:.2%}" if x is not None else "-"


def format_stats(stats: dict) -> str:
    n = stats["images"]
    lines = [f"images    {n:,}", f"patients  {stats['patients']:,}"]
    if stats.get("studies") is not None:
        lines.append(f"studies   {stats['studies']:,}")
    if set(stats.get("views") or {}) == {"(none)"}:
        lines.append("views     not recorded (kept by the default frontal filter)")
    elif stats.get("views"):
        shown = ", ".join(f"{k}{'*' if is_frontal(k) else ''} {v:,}" for k, v in stats["views"].items())
        lines.append(f"views     {shown} (* frontal: {stats['frontal']:,} kept by the frontal filter)")
    if stats.get("splits"):
        lines.append("split     " + ", ".join(f"{k} {v:,}" for k, v in stats["splits"].items()))
    lines += [
        "",
        f"{'finding':<27}{'positives':>10}{'negatives':>11}{'uncertain':>10}{'unlabelled':>11}"
        f"{'prev. labelled':>16}{'prev. all':>11}",
    ]
    per = stats.get("per_finding") or {
        f: {
            "positives": c,
            "negatives": n - c,
            "uncertain": 0,
            "unlabelled": 0,
            "prevalence": c / n if n else None,
            "prevalence_all": c / n if n else None,
        }
        for f, c in stats["positives"].items()
    }
    for f, c in sorted(per.items(), key=lambda kv: (-kv[1]["positives"], kv[0])):
        lines.append(
            f"{f:<27}{c['positives']:>10,}{c['negatives']:>11,}{c['uncertain']:>10,}{c['unlabelled']:>11,}"
            f"{_pct(c['prevalence']):>16}{_pct(c.get('prevalence_all')):>11}"
        )
    normal = stats.get("no_finding")
    if normal is None:
        lines.append(f"{NO_FINDING:<27}{'not a label of this dataset':>42}")
    else:
        how = {"publisher": "the publisher's own label"}.get(stats.get("no_finding_source", ""), "")
        lines.append(f"{NO_FINDING:<27}{normal:>10,}{how:>32}{'':>16}{normal / max(n, 1):>11.2%}")
    lines.append(
        "prev. labelled = positives / labelled images (positives + negatives + uncertain); "
        "prev. all = positives / all images"
    )
    return "\n".join(lines)


def write_unmapped(terms: Mapping[str, int], out: str | os.PathLike) -> Path:
    """Every source term that has no cxrdx finding, with its image count (CSV: term, images)."""
    out = Path(out)
    frame = pd.DataFrame({"term": list(terms), "images": [int(v) for v in terms.values()]})
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.sort_values(["images", "term"], ascending=[False, True]).to_csv(out, index=False)
    except OSError as exc:
        raise DataError(f"cannot write the unmapped terms to {out}: {exc}") from exc
    return out


def plot_prevalence(
    series: Mapping[str, Mapping[str, float | None]],
    out: str | os.PathLike,
    title: str = "",
    counts: Mapping[str, int] | None = None,
) -> Path:
    """Horizontal bars of prevalence per finding, one bar group per series (PNG at ``out``).

    ``series`` is ``{series name: {finding: prevalence in [0, 1] or None}}``; findings are
    drawn top to bottom in the first series' order (None draws as 0). ``counts``
    (positives per finding) is written beside the first series' bars. Used by
    `cxrdx stats` (one series) and the evaluation report (test and validation).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not series:
        raise DataError("plot_prevalence: no series to plot")
    names = list(next(iter(series.values())).keys())
    k = len(series)
    height = 0.8 / k
    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for j, (label, values) in enumerate(series.items()):
        ys = [i - 0.4 + height * (j + 0.5) for i in range(len(names))]
        prev = [float(values.get(n) or 0.0) for n in names]
        ax.barh(ys, prev, height=height, color=_COLOURS[j % len(_COLOURS)], label=label)
        for y, n, p in zip(ys, names, prev, strict=True):
            text = f" {p:.1%}" if j or counts is None else f" {counts.get(n, 0):,} ({p:.1%})"
            ax.text(p, y, text, va="center", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("prevalence (fraction of images)" + ("; number = positives" if counts else ""))
    ax.set_title(title or "Class prevalence")
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.25)
    if k > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    except OSError as exc:
        raise DataError(f"cannot write plot {out}: {exc}") from exc
    return out
