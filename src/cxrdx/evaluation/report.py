"""The HTML report (``report.html``, from the template file next to this module) and ``metrics.json``.

The page layout lives in ``report.html`` (a ``string.Template``: ``$name`` fields, no
new dependency); this module fills in the rows. Every value is HTML-escaped here;
undefined values show as an em dash, never NaN.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from string import Template

import numpy as np

from cxrdx.evaluation.chexnet import CHEXNET_LABEL
from cxrdx.evaluation.plots import (
    plot_pr,
    plot_reliability,
    plot_roc,
    plot_test_val_prevalence,
    plot_uncertainty,
)

PLOT_TITLES = {
    "roc.png": "ROC curves",
    "pr.png": "Precision-recall curves",
    "reliability.png": "Calibration: reliability diagrams",
    "prevalence.png": "Class prevalence",
    "uncertainty.png": "Uncertainty",
}


def format_number(v: float | None, digits: int = 3) -> str:
    """A metric for people: fixed digits, an em dash for undefined."""
    return "\u2014" if v is None else f"{v:.{digits}f}"


@cache
def _template() -> Template:
    return Template(resources.files("cxrdx.evaluation").joinpath("report.html").read_text(encoding="utf-8"))


def _class_rows(cls: dict) -> str:
    e, f = html.escape, format_number
    rows = []
    for name, c in cls.items():
        ci = c["auroc_ci"]
        ci_txt = f" <span class='ci'>[{f(ci[0])}, {f(ci[1])}]</span>" if ci and ci[0] is not None else ""
        rows.append(
            f"<tr><td>{e(name)}</td><td>{c['n_pos']}</td><td>{f(c['prevalence'])}</td>"
            f"<td>{f(c['auroc'])}{ci_txt}</td><td>{c['n_boot_valid']}</td><td>{f(c['average_precision'])}</td>"
            f"<td>{f(c['ece'])}</td><td class='ref'>{f(c['chexnet_auroc'], 4)}</td></tr>"
        )
    return "\n".join(rows)


def _thresholds(th: dict, cls: dict) -> str:
    e, f = html.escape, format_number
    if th["values"] is None:
        return f"<p class='note'>{e(th['note'])}</p>"
    parts = [
        f"<p class='meta'>Chosen on <code>{e(th['chosen_on'])}</code> by {e(th['method_text'])}; "
        "applied to the test data (positive when p \u2265 threshold).</p>"
        "<table><thead><tr><th>finding</th><th>threshold</th><th>sensitivity</th><th>specificity</th>"
        "<th>PPV</th><th>NPV</th><th>F1</th><th>TP / FP / FN / TN</th></tr></thead><tbody>"
    ]
    for name, c in cls.items():
        at = c.get("at_threshold")
        if c["threshold"] is None or at is None:
            parts.append(f"<tr><td>{e(name)}</td><td>\u2014</td>" + "<td>\u2014</td>" * 6 + "</tr>")
            continue
        parts.append(
            f"<tr><td>{e(name)}</td><td>{f(c['threshold'], 4)}</td><td>{f(at['sensitivity'])}</td>"
            f"<td>{f(at['specificity'])}</td><td>{f(at['ppv'])}</td><td>{f(at['npv'])}</td>"
            f"<td>{f(at['f1'])}</td><td>{at['tp']} / {at['fp']} / {at['fn']} / {at['tn']}</td></tr>"
        )
    parts.append("</tbody></table>")
    if th.get("undefined"):
        parts.append(
            f"<p class='note'>No threshold for {e(', '.join(th['undefined']))}: "
            "no positives or no negatives in the validation data.</p>"
        )
    return "\n".join(parts)


def render_html(metrics: dict, plots: Sequence[str]) -> str:
    """The report page: summary, per-class table, thresholds, calibration and every plot."""
    e, f = html.escape, format_number
    ds, model = metrics["dataset"], metrics["model"]
    ensemble = f", ensemble of {len(model['ensemble'])}" if len(model["ensemble"]) > 1 else ""
    tta = "on (horizontal flip)" if model["tta"] else "off"
    unreadable = f", {ds['n_unreadable']} unreadable (left out)" if ds["n_unreadable"] else ""
    notes = []
    if metrics["undefined_classes"]:
        notes.append(
            "<p class='note'>Undefined AUROC (no positives or no negatives in the test data), left out of the "
            f"mean: {e(', '.join(metrics['undefined_classes']))}.</p>"
        )
    notes += [f"<p class='note'>{e(note)}</p>" for note in metrics.get("notes", [])]
    plot_html = [
        f"<h3>{e(PLOT_TITLES.get(name, name))}</h3><img src='{e(name)}' alt='{e(PLOT_TITLES.get(name, name))}'>"
        for name in plots
    ]
    boot = metrics["bootstrap"]
    return _template().substitute(
        weights=e(model["weights"]),
        model_details=f"{e(model['architecture'])}{ensemble}, TTA {tta}",
        data=e(ds["description"]),
        data_details=f"{ds['n_images']} images, {ds['n_patients']} patients{unreadable}",
        n_defined=len(metrics["mean_auroc_classes"]),
        mean=f(metrics["mean_auroc"]),
        chexnet_mean=f(metrics["chexnet_mean_same_classes"]),
        chexnet_mean4=f(metrics["chexnet_mean_same_classes"], 4),
        notes="\n".join(notes),
        n_boot=boot["n_boot"],
        seed=boot["seed"],
        chexnet_label=e(CHEXNET_LABEL),
        class_rows=_class_rows(metrics["classes"]),
        thresholds=_thresholds(metrics["thresholds"], metrics["classes"]),
        plots="\n".join(plot_html),
    )


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
        plot_test_val_prevalence(out, metrics, names, val_classes),
    ]
    if spread is not None:
        plots.append(plot_uncertainty(out, spread, names, spread_kind))
    metrics["plots"] = [p.name for p in plots]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    report = out / "report.html"
    report.write_text(render_html(metrics, metrics["plots"]), encoding="utf-8")
    return report
