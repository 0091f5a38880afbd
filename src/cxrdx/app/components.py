"""What the page shows for one Prediction: the image, overlays, the probability chart and text.

Everything here is a pure function of a Prediction (or a Predictor's metadata) so the
page's content is testable without Gradio. Pictures are drawn without pyplot (a
Figure with an Agg canvas, a colormap lookup), so they are safe from Gradio's worker threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrdx import settings

if TYPE_CHECKING:
    from PIL import Image

    from cxrdx.inference.predictor import Prediction, Predictor

DISCLAIMER = (
    "For research and education only. Not a medical device and not a replacement for a clinician's diagnosis."
)
TOP_K = settings.TOP_K
DISPLAY_MAX_SIDE = 768  # the image shown in the page; the model always sees the full one


# --------------------------------------------------------------------------- pictures


def display_image(image: np.ndarray) -> Image.Image:
    """The [0, 1] image as an 8-bit PIL image, at most DISPLAY_MAX_SIDE on its longer side."""
    from PIL import Image

    from cxrdx.imaging.read import image_to_uint8

    pil = Image.fromarray(image_to_uint8(image), mode="L")
    pil.thumbnail((DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE), Image.Resampling.LANCZOS)
    return pil


def overlay_image(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Heatmap (jet) blended over the gray image, as an RGB PIL image at display size: the film and
    the map resampled to the shown size, then blended as every overlay is (``explain.overlay.overlay_rgb``)."""
    from PIL import Image

    from cxrdx.explain.overlay import overlay_rgb

    gray = np.asarray(display_image(image), dtype=np.float32) / 255.0
    heat = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F").resize(
        (gray.shape[1], gray.shape[0]), Image.Resampling.BILINEAR
    )
    return Image.fromarray(overlay_rgb(gray, np.asarray(heat), alpha), mode="RGB")


CAPTIONED_MIN_SIDE = 512  # small images are enlarged so the burnt-in caption stays legible


def _wrap(text: str, font, width: int) -> list[str]:
    """Words into lines no wider than ``width`` pixels (a long word gets a line of its own)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines or [""]


def captioned_overlay(
    image: np.ndarray, heatmap: np.ndarray, caption: str, caveats: Sequence[str] = ()
) -> Image.Image:
    """The overlay with its caption burnt in above it and a jet colour bar (low..high) on its right.

    Burnt in, so a downloaded or screenshotted overlay still says what it shows; ``caveats``
    (``cxrdx.inference.formats.overlay_caveats``: a demo model's stamp, OUT OF DISTRIBUTION)
    are burnt in too, in red, under the caption, as ``cxrdx explain`` does.
    """
    from PIL import Image, ImageDraw

    from cxrdx.explain.colormap import jet
    from cxrdx.explain.overlay import font as make_font
    from cxrdx.explain.overlay import printable

    caption, caveats = printable(caption), [printable(c) for c in caveats]  # the bundled font is ASCII
    body = overlay_image(image, heatmap)
    if max(body.size) < CAPTIONED_MIN_SIDE:
        k = CAPTIONED_MIN_SIDE / max(body.size)
        body = body.resize((round(body.width * k), round(body.height * k)), Image.Resampling.BILINEAR)
    w, h = body.size
    size = max(14, min(22, w // 28))
    font = make_font(size)
    bar_w, pad = max(12, w // 40), 5
    label_w = int(font.getlength("high")) + 2 * pad
    total_w = w + bar_w + label_w + pad
    lines = _wrap(caption, font, total_w - 2 * pad)
    warned = [part for c in caveats for part in _wrap(c, font, total_w - 2 * pad)]
    colours = ["black"] * len(lines) + [(200, 0, 0)] * len(warned)
    lines += warned
    strip = len(lines) * (size + 3) + 2 * pad
    canvas = Image.new("RGB", (total_w, h + strip), "white")
    canvas.paste(body, (0, strip))
    ramp = jet(np.linspace(1.0, 0.0, h))  # top = high attention
    bar = np.repeat((ramp * 255).astype(np.uint8)[:, None, :], bar_w, axis=1)
    canvas.paste(Image.fromarray(bar, mode="RGB"), (w + pad, strip))
    draw = ImageDraw.Draw(canvas)
    for k, (line, colour) in enumerate(zip(lines, colours, strict=True)):
        draw.text((pad, pad + k * (size + 3)), line, fill=colour, font=font)
    x = w + pad + bar_w + pad
    draw.text((x, strip), "high", fill="black", font=font)
    draw.text((x, strip + h - size - 2), "low", fill="black", font=font)
    return canvas


def overlay_caption(pred: Prediction, finding: str, thresholds: dict[str, float] | None) -> str:
    """``Effusion POSITIVE: p 0.71 \u2265 threshold 0.640``: call, probability and threshold, as the CLI's."""
    from cxrdx.model.card import never_reached, threshold_text

    p = pred.probabilities[finding]
    word = "p" if pred.is_probability(finding) else "score"
    t = (thresholds or {}).get(finding)
    if t is None or pred.positive is None:
        return f"{finding}: {word} {p:.2f}, no threshold (not called)"
    positive = bool(pred.positive.get(finding))
    never = " (never reached)" if never_reached({finding: t}) else ""
    # the call first: a caption cut short in the gallery still says it
    call, relation = ("POSITIVE", "\u2265") if positive else ("negative", "<")
    return f"{finding} {call}: {word} {p:.2f} {relation} threshold {threshold_text(t)}{never}"


def banners_html(predictor: Predictor) -> str:
    """The model card's warnings (phantom-trained, no evaluation, thresholds never reached), prominent."""
    import html

    from cxrdx.model.card import banners, flagged_results

    items = banners(predictor.meta)
    flagged = flagged_results(predictor.meta)  # numbers that mean nothing (metrics/degenerate.py)
    if flagged:
        items.append(
            f"Flagged results for {', '.join(flagged)}: their recorded numbers mean nothing (see the model card)."
        )
    return "".join(f'<div class="cxrdx-banner">\u26a0 {html.escape(b)}</div>' for b in items)


def probability_chart(pred: Prediction, thresholds: dict[str, float] | None) -> Image.Image:
    """Horizontal bars of every finding's probability, thresholds as black ticks, positives in red."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from PIL import Image

    names = list(pred.probabilities)
    probs = [pred.probabilities[n] for n in names]
    positive = pred.positive or {}
    colours = ["#dc2626" if positive.get(n) else "#3b82f6" for n in names]
    fig = Figure(figsize=(6.4, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y, probs, color=colours, height=0.7)
    for i, n in enumerate(names):
        ax.text(min(probs[i] + 0.01, 0.9), i, f"{probs[i]:.2f}", va="center", fontsize=8)
        if thresholds and n in thresholds:
            ax.plot([thresholds[n]] * 2, [i - 0.42, i + 0.42], color="black", linewidth=2)
    ax.set_yticks(y, names, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    raw = pred.uncalibrated
    word = "probability" if not raw else "score (uncalibrated)"
    if raw and len(raw) < len(names):  # some findings could not be calibrated: say which
        word = f"probability; score (uncalibrated): {', '.join(raw)}"
    ax.set_xlabel(word, fontsize=8 if raw and len(raw) < len(names) else 10)
    handles = [Patch(color="#3b82f6", label="negative" if thresholds else word)]
    if thresholds:
        handles = [Patch(color="#dc2626", label="positive"), *handles]
        handles.append(Line2D([], [], color="black", linewidth=2, label="threshold"))
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_title("Findings" + ("" if thresholds else " (no thresholds in this checkpoint)"), fontsize=10)
    fig.tight_layout()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return Image.fromarray(rgba[..., :3].copy(), mode="RGB")


# --------------------------------------------------------------------------- text


def status_html(source: str, width: int, height: int, warnings: list[str], ood_text: str | None) -> str:
    """The status line after an analysis. Every value is escaped: file names, warnings and the
    DICOM header values inside them come from the upload, and the status is HTML."""
    import html

    notes = "".join(f"<br>warning: {html.escape(w)}" for w in warnings)
    if ood_text:
        notes = f'<p class="error">{html.escape(ood_text)}.</p>' + notes
    return f"Analysed <b>{html.escape(source)}</b> ({width}x{height} px).{notes}"


def error_html(message: str) -> str:
    """The status when a file could not be analysed (``message`` is escaped: it quotes the upload)."""
    import html

    return f'<p class="error">Could not analyse this file{html.escape(message)}</p>'


_CARD_SKIP = ("config", "val_auroc", "torch", "processes")  # too long or not about the data


def _fmt_value(v: Any) -> str:
    """Short text for a metadata value; dicts of scalars inline (splits: train 800, val 100)."""
    if isinstance(v, dict):
        items = [f"{k} {x}" for k, x in v.items() if not isinstance(x, dict | list)]
        return "(" + ", ".join(items) + ")" if items else ""
    if isinstance(v, list):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def model_card(predictor: Predictor) -> str:
    """Markdown: what the model is, what it was trained on, its recorded evaluation, the disclaimer."""
    from cxrdx.model.card import card_lines

    meta = predictor.meta
    pre = meta.preprocessing
    lines = [
        "### Model card",
        f"**Disclaimer.** {DISCLAIMER}",
        "",
        f"- **Network:** {meta.architecture}, {len(meta.labels)} findings, "
        f"input {pre.size}x{pre.size} px, {pre.channels} channel(s), letterboxed",
        f"- **Inference backend:** {predictor.backend}",
    ]
    for line in card_lines(meta):  # trained on (dataset, kind), images, patients, split, epochs, evaluated on
        key, _, value = line.partition(": ")
        lines.append(f"- **{key.capitalize()}:** {value}")
    prov = meta.provenance or {}
    if prov:
        shown = [f"{k}: {_fmt_value(v)}" for k, v in prov.items() if k not in _CARD_SKIP and _fmt_value(v)]
        lines.append(f"- **Provenance:** {', '.join(shown) or 'recorded (see checkpoint metadata)'}")
    else:
        lines.append("- **Provenance:** not recorded in this checkpoint")
    if meta.source:
        shown = [f"{k}: {_fmt_value(v)}" for k, v in meta.source.items() if _fmt_value(v)]
        lines.append(f"- **Imported weights:** {', '.join(shown)}")
    if meta.thresholds:
        lines.append(
            f"- **Thresholds:** {len(meta.thresholds)} findings, chosen by {meta.threshold_method or 'unknown method'}"
        )
    else:
        lines.append(
            "- **Thresholds:** none recorded, so no finding is called positive; choose them with `cxrdx evaluate`"
        )
    evaluation = meta.evaluation or {}
    auroc = evaluation.get("auroc")
    if isinstance(auroc, dict) and auroc:
        where = evaluation.get("dataset") or evaluation.get("split") or "the recorded evaluation set"
        extra = [f"n = {evaluation['n']}"] if evaluation.get("n") else []
        if isinstance(evaluation.get("mean_auroc"), int | float):
            extra.append(f"mean AUROC {evaluation['mean_auroc']:.3f}")
        lines += ["", f"**Evaluation AUROC** on {where}" + (f" ({', '.join(extra)})" if extra else "") + ":"]
        lines += ["", "| finding | AUROC |", "|---|---|"]
        for name, value in auroc.items():
            v = value.get("auroc", value.get("value")) if isinstance(value, dict) else value
            lines.append(f"| {name} | {v:.3f} |" if isinstance(v, int | float) else f"| {name} | n/a |")
    else:
        lines.append("- **Evaluation:** no AUROCs recorded in this checkpoint (run `cxrdx evaluate`)")
    from cxrdx.model.card import flagged_results

    flagged = flagged_results(meta)  # numbers that look like results but mean nothing (metrics/degenerate.py)
    if flagged:
        lines += ["", "**\u26a0 Flagged results** (these numbers mean nothing):"]
        lines += [f"- **{name}:** {'; '.join(reasons)}" for name, reasons in flagged.items()]
    text = "\n".join(lines)
    data = str(
        (meta.model_card or {}).get("path") or ""
    )  # the training folder on the machine that trained it
    return text.replace(data, Path(data).name) if data else text


def ood_markdown(pred: Prediction, threshold: float | None = None) -> str:
    """A loud warning when the image is out of distribution ("" otherwise, or without a reference)."""
    from cxrdx.inference.formats import ood_warning

    text = ood_warning(pred, threshold)
    return "" if text is None else f"**\u26a0 {text}.**\n\n"


def positives_markdown(pred: Prediction, ood_threshold: float | None = None) -> str:
    warning = ood_markdown(pred, ood_threshold)
    unreliable = " (unreliable: out of distribution)" if warning else ""
    if pred.positive is None:
        top = ", ".join(f"{n} ({p:.2f})" for n, p in pred.ranked()[:TOP_K])
        return (
            f"{warning}**Positive findings:** not called: this checkpoint has no thresholds. "
            f"Highest {'scores (uncalibrated)' if pred.uncalibrated else 'probabilities'}{unreliable}: "
            f"{top}."
        )
    pos = [f"**{n}** ({p:.2f})" for n, p in pred.ranked() if pred.positive.get(n)]
    return f"{warning}**Positive findings{unreliable}:** " + (
        ", ".join(pos) if pos else "none above their thresholds"
    )


def findings_table(pred: Prediction, thresholds: dict[str, float] | None) -> str:
    """Every finding as text (the chart is a picture; screen readers and copy-paste need words)."""
    from cxrdx.model.card import never_reached, threshold_text

    thresholds = thresholds or {}
    mixed = bool(pred.uncalibrated) and len(pred.uncalibrated) < len(pred.probabilities)
    word = "probability" if not pred.uncalibrated else ("value" if mixed else "score (uncalibrated)")
    rows = [f"| finding | {word} | threshold | call |", "|---|---:|---:|---|"]
    for name, p in pred.ranked():
        t = thresholds.get(name)
        call = (
            "-"
            if t is None or pred.positive is None
            else ("**positive**" if pred.positive.get(name) else "negative")
        )
        if call != "-" and pred.in_distribution is False:
            call += " (unreliable)"
        flag = " (never reached)" if t is not None and never_reached({name: t}) else ""
        value = f"{p:.3f}" + (" (score, uncalibrated)" if mixed and not pred.is_probability(name) else "")
        rows.append(f"| {name} | {value} | {threshold_text(t)}{flag} | {call} |")
    return "\n".join(rows)
