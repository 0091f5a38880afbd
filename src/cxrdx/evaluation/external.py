"""External validation: which findings a model and a dataset share, thresholds moved between datasets,
and THE side-by-side comparison of one model's evaluations on several datasets.

- A model is scored only on the findings the evaluated dataset *labels*; every other
  output is listed as skipped with the reason (never scored against invented negatives).
  Within a finding, unlabelled images (NaN) are left out per finding.
- Thresholds chosen on the *source* validation set (``--val SOURCE_VAL``, or the ones
  stored in the checkpoint) are applied unchanged to the target: that is what happens
  when a model moves hospitals. The shift in sensitivity and specificity between the
  source validation set and the target is reported per finding.
- ``compare``: the per-finding AUROC (with CIs) of several ``metrics.json`` side by side,
  the first taken as internal, the drop of each other one, a plot and ``comparison.json``
  (``comparison_record``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cxrdx.errors import DataError
from cxrdx.evaluation.comparison_record import Comparison, DatasetAuroc, DropSummary, write_comparison
from cxrdx.evaluation.metrics_record import Labelled, ShiftRow, read_metrics
from cxrdx.metrics.thresholds import binary_metrics


def shared_findings(
    table, names: Sequence[str], description: str, findings: Sequence[str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """(model outputs the table labels, {skipped output: why}); DataError when they share none.

    ``findings``: what the table labels (``LabelTable.findings``); None: the columns named like an output.
    """
    labelled = set(findings) if findings else {n for n in names if n in table.columns}
    shared, skipped = [], {}
    for n in names:
        if n not in labelled or n not in table.columns:
            skipped[n] = f"not labelled in {description}"
        elif table[n].isna().all():
            skipped[n] = f"no image of {description} is labelled for it"
        else:
            shared.append(n)
    if not shared:
        raise DataError(
            f"{description}: labels none of the model's outputs ({', '.join(names)}); nothing to evaluate"
        )
    return shared, skipped


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return round(v, 6) if isinstance(v, float) else v


def at_thresholds(y: np.ndarray, probs: np.ndarray, names: Sequence[str], thresholds: Mapping) -> dict:
    """Binary metrics at each finding's threshold, over its labelled images only."""
    out = {}
    for c, n in enumerate(names):
        t = thresholds.get(n)
        if t is None:
            continue
        m = ~np.isnan(y[:, c])
        if m.sum() == 0:
            continue
        out[n] = {k: _clean(v) for k, v in binary_metrics(y[m, c].astype(int), probs[m, c], float(t)).items()}
        out[n]["threshold"] = float(t)
    return out


def threshold_shift(source: Mapping[str, Mapping], target: Mapping[str, Mapping]) -> dict[str, ShiftRow]:
    """Per finding: sensitivity and specificity on the source (validation) and the target, and the change
    (``at_thresholds`` rows; the source's may come from a checkpoint's ``threshold_info``)."""
    out = {}
    for n, tgt in target.items():
        src = source.get(n) or {}
        row = {"threshold": tgt.get("threshold")}
        for k in ("sensitivity", "specificity"):
            a, b = src.get(k), tgt.get(k)
            row[f"{k}_source"], row[f"{k}_target"] = a, b
            row[f"{k}_shift"] = None if a is None or b is None else round(b - a, 6)
        out[n] = ShiftRow(**row)
    return out


def labelled_summary(y: np.ndarray, names: Sequence[str]) -> dict[str, Labelled]:
    """Per finding: images labelled, positives and prevalence among the labelled."""
    out = {}
    for c, n in enumerate(names):
        m = ~np.isnan(y[:, c])
        pos = int((y[m, c] == 1).sum())
        out[n] = Labelled(
            n_labelled=int(m.sum()),
            n_pos=pos,
            prevalence=pos / int(m.sum()) if m.any() else None,
        )
    return out


def compare(
    reports: Sequence[str | os.PathLike], out: str | os.PathLike, names: Sequence[str] = ()
) -> Comparison:
    """Side-by-side comparison of evaluations (``metrics.json`` or the folders holding them).

    The first is the internal (source) evaluation; each finding's AUROC on every other
    dataset and its drop from the internal value are reported where both are defined.
    Writes ``comparison.json`` (:class:`~cxrdx.evaluation.comparison_record.Comparison`),
    ``comparison.md`` and ``comparison.png`` into ``out``.
    """
    from cxrdx.files import atomic_write_text

    if len(reports) < 2:
        raise DataError("compare needs at least two evaluations (the internal one first)")
    loaded = []
    for i, r in enumerate(reports):
        m = read_metrics(r)
        description = m.dataset.description if m.dataset else ""
        p = Path(r)
        label = names[i] if i < len(names) else (description or (p if p.is_dir() else p.parent).name)
        loaded.append((label, m))
    findings: list[str] = []
    for _, m in loaded:
        findings += [f for f in m.classes if f not in findings]
    rows: dict[str, dict[str, DatasetAuroc]] = {}
    internal_label, internal = loaded[0]
    for f in findings:
        row = {}
        base = internal.classes[f].auroc if f in internal.classes else None
        for label, m in loaded:
            c = m.classes.get(f)
            if c is None:
                row[label] = DatasetAuroc(auroc=None, skipped=m.skipped.get(f, "not evaluated"))
                continue
            drop = None
            if label != internal_label and base is not None and c.auroc is not None:
                drop = round(base - c.auroc, 6)
            row[label] = DatasetAuroc(
                auroc=c.auroc,
                auroc_ci=c.auroc_ci,
                n_labelled=c.n,
                n_pos=c.n_pos,
                prevalence=c.prevalence,
                drop=drop,
            )
        rows[f] = row
    means = {}
    for label, _ in loaded[1:]:
        both = [f for f, r in rows.items() if label in r and r[label].drop is not None]
        means[label] = DropSummary(
            mean_drop=float(np.mean([rows[f][label].drop for f in both])) if both else None,
            mean_internal=float(np.mean([rows[f][internal_label].auroc for f in both])) if both else None,
            mean_external=float(np.mean([rows[f][label].auroc for f in both])) if both else None,
            findings=len(both),
        )
    result = Comparison(
        internal=internal_label,
        datasets=tuple(lbl for lbl, _ in loaded),
        findings=rows,
        drop=means,
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_comparison(out / "comparison.json", result)
    atomic_write_text(out / "comparison.md", format_comparison(result))
    _plot(result, out / "comparison.png")
    return result


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def format_comparison(result: Comparison) -> str:
    """The comparison as a Markdown table (``comparison.md``, and what ``cxrdx compare`` prints)."""
    labels = result.datasets
    lines = [
        "| finding | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for f, row in result.findings.items():
        cells = []
        for lbl in labels:
            c = row.get(lbl)
            if c is None or c.auroc is None:
                skipped = c is not None and c.skipped is not None
                cells.append(f"skipped ({c.skipped})" if skipped else "undefined")
                continue
            ci = c.auroc_ci or (None, None)
            drop = f", drop {c.drop:+.3f}" if c.drop is not None else ""
            cells.append(f"{_fmt(c.auroc)} [{_fmt(ci[0])}, {_fmt(ci[1])}] n={c.n_labelled}{drop}")
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    for lbl, d in result.drop.items():
        lines.append(
            f"\nmean AUROC drop {result.internal} -> {lbl}: {_fmt(d.mean_drop)} over {d.findings} "
            f"shared findings ({_fmt(d.mean_internal)} -> {_fmt(d.mean_external)})"
        )
    return "\n".join(lines) + "\n"


def _plot(result: Comparison, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    findings = list(result.findings)
    labels = result.datasets
    fig = Figure(figsize=(8, 0.35 * len(findings) + 1.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    h = 0.8 / len(labels)
    for j, lbl in enumerate(labels):
        ys = [i - 0.4 + h * (j + 0.5) for i in range(len(findings))]
        cells = [result.findings[f].get(lbl) for f in findings]
        vals = [(c.auroc if c is not None else None) or 0.0 for c in cells]
        ax.barh(ys, vals, height=h, label=lbl)
    ax.set_yticks(range(len(findings)), findings, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_xlabel("AUROC (0 = skipped or undefined)")
    ax.set_title("Internal vs external AUROC per finding")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
