"""The HTML report (``report.html``, from the template file next to this module) and ``metrics.json``.

The page layout lives in ``report.html`` (a ``string.Template``: ``$name`` fields, no
new dependency); this module fills in the rows. Every value is HTML-escaped here;
undefined values show as an em dash, never NaN.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from string import Template

import numpy as np

from cxrdx.evaluation.chexnet import CHEXNET_LABEL
from cxrdx.evaluation.metrics_record import (
    CalibrationSummary,
    FindingMetrics,
    MetricsRecord,
    Thresholds,
    write_metrics,
)
from cxrdx.evaluation.plots import (
    plot_pr,
    plot_reliability,
    plot_roc,
    plot_test_val_prevalence,
    plot_uncertainty,
)
from cxrdx.metrics.degenerate import mostly_false_positives
from cxrdx.model.card import PHANTOM_BANNER, never_reached, never_reached_note, threshold_text

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


def _ci_text(ci: Sequence | None) -> str:
    f = format_number
    return f" <span class='ci'>[{f(ci[0])}, {f(ci[1])}]</span>" if ci and ci[0] is not None else ""


def _flag_mark(flags: Sequence[str]) -> str:
    """A visible mark beside a number that means nothing; the reasons in its tooltip."""
    if not flags:
        return ""
    return f" <b class='flag' title='{html.escape('; '.join(flags), quote=True)}'>⚠ flagged</b>"


def _flags(flags: Mapping[str, Sequence[str]]) -> str:
    """The degenerate results (metrics/degenerate.py), listed before the tables so nobody reads past them."""
    if not flags:
        return ""
    e = html.escape
    items = "".join(f"<li><b>{e(name)}</b>: {e('; '.join(reasons))}</li>" for name, reasons in flags.items())
    return (
        "<div class='banner'><b>Flagged: these numbers look like results but mean nothing.</b>"
        f"<ul>{items}</ul></div>"
    )


def _class_rows(
    cls: Mapping[str, FindingMetrics],
    reference: bool = True,
    flags: Mapping[str, Sequence[str]] | None = None,
) -> str:
    e, f = html.escape, format_number
    rows = []
    for name, c in cls.items():
        ci_txt = _ci_text(c.auroc_ci) + _flag_mark((flags or {}).get(name, []))
        rows.append(
            f"<tr><td>{e(name)}</td><td>{c.n_pos}</td><td>{f(c.prevalence)}</td>"
            f"<td>{f(c.auroc)}{ci_txt}</td><td>{c.n_boot_valid}</td><td>{f(c.average_precision)}</td>"
            f"<td>{f(c.ece)}</td>"
            + (f"<td class='ref'>{f(c.chexnet_auroc, 4)}</td>" if reference else "")
            + "</tr>"
        )
    return "\n".join(rows)


def _thresholds(th: Thresholds, cls: Mapping[str, FindingMetrics]) -> str:
    e, f = html.escape, format_number
    if th.values is None:
        return f"<p class='note'>{e(th.note or '')}</p>"
    parts = [
        f"<p class='meta'>Chosen on <code>{e(th.chosen_on or '')}</code> by {e(th.method_text or '')}; "
        f"{'with' if th.tta else 'without'} TTA, on {e(str(th.calibration or 'none'))}-calibrated "
        "outputs; applied to the test data (positive when p \u2265 threshold).</p>"
        "<table><thead><tr><th>finding</th><th>threshold</th><th>sensitivity</th><th>specificity</th>"
        "<th>PPV</th><th>NPV</th><th>F1</th><th>TP / FP / FN / TN</th></tr></thead><tbody>"
    ]
    for name, c in cls.items():
        at = c.at_threshold
        if c.threshold is None or at is None:
            parts.append(f"<tr><td>{e(name)}</td><td>\u2014</td>" + "<td>\u2014</td>" * 6 + "</tr>")
            continue
        fp_flag = mostly_false_positives(at.to_json())
        parts.append(
            f"<tr><td>{e(name)}{_flag_mark([fp_flag] if fp_flag else [])}</td><td>{_threshold_cell(c.threshold)}</td><td>{f(at.sensitivity)}</td>"
            f"<td>{f(at.specificity)}</td><td>{f(at.ppv)}</td><td>{f(at.npv)}</td>"
            f"<td>{f(at.f1)}</td><td>{at.tp} / {at.fp} / {at.fn} / {at.tn}</td></tr>"
        )
    parts.append("</tbody></table>")
    chosen = {n: c.threshold for n, c in cls.items() if c.threshold is not None}
    never = never_reached(chosen)
    if never:
        values = {n: chosen[n] for n in never}
        parts.append(f"<p class='note'><b>{e(never_reached_note(never, values))}</b></p>")
    if th.undefined:
        parts.append(
            f"<p class='note'>No threshold for {e(', '.join(th.undefined))}: "
            "no positives or no negatives in the validation data.</p>"
        )
    return "\n".join(parts)


def _threshold_cell(t: float) -> str:
    """Enough digits (0.99999988, not 1.0000), and a flag when it is practically never reached."""
    text = html.escape(threshold_text(t))
    return (
        f"{text} <b title='practically never reached'>(never reached)</b>"
        if never_reached({"t": t})
        else text
    )


def is_real_data(metrics: MetricsRecord) -> bool:
    """CheXNet's column (real NIH films) is shown only beside results on real data."""
    return metrics.data_kind == "real"


def _banners(metrics: MetricsRecord) -> str:
    """Prominent warnings: a phantom-trained model or phantom test data; no evaluation stored in the model."""
    e = html.escape
    out = []
    if metrics.model_kind == "phantom":
        out.append(PHANTOM_BANNER)
    kind = metrics.data_kind
    if kind == "phantom":
        out.append(
            "Test data: synthetic phantoms. These AUROCs measure the demo pipeline, not performance on "
            "real radiographs, so no published real-data reference is shown."
        )
    elif kind == "unknown":
        out.append(
            "The test data's origin is not recorded (not a known dataset file, no cxrdx dataset.json), "
            "so CheXNet's real-data reference is not shown."
        )
    written = metrics.thresholds.written_to if metrics.thresholds else None
    if metrics.model and metrics.model.evaluated_before is False and not written:
        out.append(
            "The checkpoint itself records no evaluation: wherever it is used it shows 'no evaluation'. "
            "Store these results in it with --out-weights NEW.safetensors (or --write-thresholds)."
        )
    return "\n".join(f"<p class='banner'>{e(b)}</p>" for b in out)


def _calibration(cal: CalibrationSummary | None, flags: Mapping[str, Sequence[str]]) -> str:
    """Calibration-in-the-large and ECE per finding, before (raw scores) and after calibration."""
    e, f = html.escape, format_number
    if cal is None:
        return ""
    method = cal.method_text
    where = " (fitted in this evaluation, on the validation data)" if cal.fitted_here else ""
    word = "probability" if method != "none" else "score (uncalibrated)"
    parts = [
        f"<p class='meta'>Calibration applied: <b>{e(method)}</b>{e(where)}. Before = the raw network scores "
        "(sigmoid of the logits; the class-weighted loss shifts them towards 0.5). Calibration-in-the-large: "
        f"mean predicted {e(word)} vs observed prevalence on the test data.</p>",
        "<table><thead><tr><th>finding</th><th>prevalence</th><th>mean score before</th>"
        f"<th>mean {e(word)} after</th><th>ECE before</th><th>ECE after</th></tr></thead><tbody>",
    ]
    per = cal.per_finding_method
    at_bound = {
        n: [t for t in reasons if t.startswith("temperature at its bound")] for n, reasons in flags.items()
    }
    for name, r in cal.per_finding.items():
        mark = " (not calibrated: a score)" if per.get(name) == "none" and method != "none" else ""
        parts.append(
            f"<tr><td>{e(name)}{e(mark)}{_flag_mark(at_bound.get(name, []))}</td><td>{f(r.prevalence)}</td><td>{f(r.mean_predicted_before)}</td>"
            f"<td>{f(r.mean_predicted_after)}</td><td>{f(r.ece_before)}</td><td>{f(r.ece_after)}</td></tr>"
        )
    parts.append(
        f"</tbody><tfoot><tr><td>mean over findings</td><td></td><td>|gap| {f(cal.mean_abs_gap_before)}</td>"
        f"<td>|gap| {f(cal.mean_abs_gap_after)}</td><td>{f(cal.mean_ece_before)}</td>"
        f"<td>{f(cal.mean_ece_after)}</td></tr></tfoot></table>"
    )
    if method == "none":
        parts.append(
            "<p class='note'>This checkpoint is not calibrated: its numbers are scores (uncalibrated), not "
            "probabilities. Fit a calibration on validation data with <code>cxrdx calibrate</code> or "
            "<code>cxrdx evaluate --calibrate --out-weights NEW.safetensors</code>.</p>"
        )
    return "\n".join(parts)


def _reference_fields(metrics: MetricsRecord) -> dict[str, str]:
    """The CheXNet column's cells: on real data only (a phantom AUROC beside it would mislead)."""
    if not is_real_data(metrics):
        return dict.fromkeys(("chexnet_summary", "chexnet_th", "chexnet_td", "chexnet_note"), "")
    e, f = html.escape, format_number
    return {
        "chexnet_summary": f"(CheXNet reference over the same classes: {f(metrics.chexnet_mean_same_classes)})",
        "chexnet_th": f"<th class='ref' title='{e(CHEXNET_LABEL)}'>CheXNet AUROC&sup1;</th>",
        "chexnet_td": f"<td class='ref'>{f(metrics.chexnet_mean_same_classes, 4)}</td>",
        "chexnet_note": (
            f"<p class='meta'>&sup1; {e(CHEXNET_LABEL)}. CheXNet used a random image split of NIH ChestX-ray14; "
            "its numbers are a point of reference, not a like-for-like comparison.</p>"
        ),
    }


def render_html(metrics: MetricsRecord, plots: Sequence[str]) -> str:
    """The report page: summary, per-class table, thresholds, calibration and every plot."""
    e, f = html.escape, format_number
    ds, model = metrics.dataset, metrics.model
    if ds is None or model is None or metrics.thresholds is None or metrics.bootstrap is None:
        raise ValueError(
            "render_html needs a whole evaluation's record (model, dataset, thresholds, bootstrap)"
        )
    ensemble = f", ensemble of {len(model.ensemble)}" if len(model.ensemble) > 1 else ""
    tta = "on (horizontal flip)" if model.tta else "off"
    unreadable = f", {ds.n_unreadable} unreadable (left out)" if ds.n_unreadable else ""
    notes = []
    if metrics.undefined_classes:
        notes.append(
            "<p class='note'>Undefined AUROC (no positives or no negatives in the test data), left out of the "
            f"mean: {e(', '.join(metrics.undefined_classes))}.</p>"
        )
    notes += [f"<p class='note'>{e(note)}</p>" for note in metrics.notes]
    plot_html = [
        f"<h3>{e(PLOT_TITLES.get(name, name))}</h3><img src='{e(name)}' alt='{e(PLOT_TITLES.get(name, name))}'>"
        for name in plots
    ]
    boot = metrics.bootstrap
    return _template().substitute(
        weights=e(model.weights),
        model_details=f"{e(model.architecture)}{ensemble}, TTA {tta}",
        data=e(ds.description),
        data_details=f"{ds.n_images} images, {ds.n_patients} patients{unreadable}",
        n_defined=len(metrics.mean_auroc_classes),
        mean=f(metrics.mean_auroc),
        mean_cell=f(metrics.mean_auroc) + _ci_text(metrics.mean_auroc_ci),
        chexnet_mean=f(metrics.chexnet_mean_same_classes),
        chexnet_mean4=f(metrics.chexnet_mean_same_classes, 4),
        notes="\n".join(notes),
        n_boot=boot.n_boot,
        seed=boot.seed,
        chexnet_label=e(CHEXNET_LABEL),
        banners=_banners(metrics) + _flags(metrics.flags),
        **_reference_fields(metrics),
        class_rows=_class_rows(metrics.classes, is_real_data(metrics), metrics.flags),
        thresholds=_thresholds(metrics.thresholds, metrics.classes),
        calibration=_calibration(metrics.calibration, metrics.flags),
        plots="\n".join(plot_html),
    )


def write_plots(
    out: str | Path,
    metrics: MetricsRecord,
    y_true: np.ndarray,
    probs: np.ndarray,
    names: Sequence[str],
    spread: np.ndarray | None = None,
    spread_kind: str = "",
    val_classes: dict | None = None,
    raw: np.ndarray | None = None,
) -> list[str]:
    """The PNG plots in ``out``; returns their file names (the record's ``plots``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = [
        plot_roc(out, y_true, probs, names, metrics),
        plot_pr(out, y_true, probs, names, metrics),
        plot_reliability(out, y_true, probs, names, metrics, raw),
        plot_test_val_prevalence(out, metrics, names, val_classes),
    ]
    if spread is not None:
        plots.append(plot_uncertainty(out, spread, names, spread_kind))
    return [p.name for p in plots]


def write_outputs(out: str | Path, metrics: MetricsRecord) -> Path:
    """``metrics.json`` and ``report.html`` (which shows every plot the record names) in ``out``."""
    out = Path(out)
    write_metrics(out / "metrics.json", metrics)
    report = out / "report.html"
    report.write_text(render_html(metrics, metrics.plots), encoding="utf-8")
    return report


def write_report(
    out: str | Path,
    metrics: MetricsRecord,
    y_true: np.ndarray,
    probs: np.ndarray,
    names: Sequence[str],
    spread: np.ndarray | None = None,
    spread_kind: str = "",
    val_classes: dict | None = None,
    raw: np.ndarray | None = None,
) -> Path:
    """Write the PNG plots, ``metrics.json`` and ``report.html`` (which shows every plot) into ``out``."""
    plots = write_plots(out, metrics, y_true, probs, names, spread, spread_kind, val_classes, raw)
    return write_outputs(out, dataclasses.replace(metrics, plots=tuple(plots)))
