"""Label statistics: counts per finding, their text table, and THE one prevalence bar plot."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from cxrdx.errors import DataError
from cxrdx.labels import FINDINGS, NO_FINDING

_COLOURS = ("#4477aa", "#ee7733", "#228833", "#aa3377")


def label_stats(df: pd.DataFrame) -> dict:
    """Counts for a label table: images, patients, positives per finding, normals."""
    positives = {f: int(df[f].sum()) for f in FINDINGS}
    normal = int((df[list(FINDINGS)].sum(axis=1) == 0).sum())
    return {
        "images": len(df),
        "patients": int(df["patient"].nunique()),
        "positives": positives,
        "no_finding": normal,
        "resolved": int((df["path"] != "").sum()) if "path" in df.columns else 0,
    }


def format_stats(stats: dict) -> str:
    n = stats["images"]
    lines = [
        f"images    {n:,}",
        f"patients  {stats['patients']:,}",
        "",
        f"{'finding':<20}{'positives':>10}{'prevalence':>12}",
    ]
    for f, c in sorted(stats["positives"].items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"{f:<20}{c:>10,}{c / n:>12.2%}")
    lines.append(f"{NO_FINDING:<20}{stats['no_finding']:>10,}{stats['no_finding'] / n:>12.2%}")
    return "\n".join(lines)


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
