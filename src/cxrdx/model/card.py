"""The model card in words: what a checkpoint was trained on, whether it was evaluated, and the warnings.

One place decides the banners every surface shows (``cxrdx predict``'s table, the app,
the evaluation report): a model trained on synthetic phantoms, a checkpoint without a
recorded evaluation, and thresholds so close to 1 that the finding is practically never
called. Pure functions of ``CheckpointMeta`` (no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cxrdx.model.checkpoint import CheckpointMeta

PHANTOM_BANNER = (
    "Trained on synthetic phantoms: a demo, meaningless on real radiographs. Its probabilities and "
    "calls say nothing about a real patient's film."
)
NO_EVALUATION_BANNER = (
    "No evaluation is recorded in this checkpoint: how well it performs is unknown. "
    "Measure it on labelled images with `cxrdx evaluate`."
)
UNKNOWN_DATA_BANNER = "What this model was trained on is not recorded in the checkpoint."
NEVER_REACHED = 0.9999  # a threshold at or above this is (practically) never reached
IMPORTED = {  # `cxrdx import --from KIND`: what the publisher trained on
    "chexnet": ("NIH ChestX-ray14 (CheXNet weights, imported)", "real"),
    "xrv": ("public chest X-ray datasets (torchxrayvision weights, imported)", "real"),
    "keras": ("not recorded (Keras weights, imported)", "unknown"),
}


def training_card(meta: CheckpointMeta) -> dict:
    """``model_card`` with what older checkpoints only hold in ``provenance`` / ``source`` filled in."""
    card = dict(meta.model_card or {})
    prov = meta.provenance or {}
    source_kind = (meta.source or {}).get("kind")
    if source_kind in IMPORTED and "kind" not in card:  # public weights: trained by their publisher
        name, kind = IMPORTED[source_kind]
        card.setdefault("dataset", meta.source.get("description") or name)
        card["kind"] = kind
    if prov and "dataset" not in card and prov.get("dataset"):
        card["dataset"] = str(prov["dataset"])
    if "phantom" in str(card.get("dataset", "")).lower() and card.get("kind") in (None, "unknown"):
        card["kind"] = "phantom"
    if "epochs" not in card and isinstance(prov.get("epoch"), int):
        card["epochs"] = prov["epoch"]
    if "split" not in card and isinstance(prov.get("splits"), dict):
        card["split"] = dict(prov["splits"])
    card.setdefault("kind", "unknown")
    return card


def is_phantom(meta: CheckpointMeta) -> bool:
    return training_card(meta)["kind"] == "phantom"


def has_evaluation(meta: CheckpointMeta) -> bool:
    evaluation = meta.evaluation or {}
    return bool(evaluation.get("auroc") or evaluation.get("mean_auroc") is not None)


def banners(meta: CheckpointMeta) -> list[str]:
    """The warnings to show prominently wherever this model's output is shown (most serious first)."""
    out = []
    card = training_card(meta)
    if card["kind"] == "phantom":
        out.append(PHANTOM_BANNER)
    elif card["kind"] == "unknown" and not card.get("dataset"):
        out.append(UNKNOWN_DATA_BANNER)
    if not has_evaluation(meta):
        out.append(NO_EVALUATION_BANNER)
    never = never_reached(meta.thresholds)
    if never:
        out.append(never_reached_note(never, meta.thresholds or {}))
    return out


def flagged_results(meta: CheckpointMeta) -> dict[str, list[str]]:
    """Per finding, the degenerate results of this checkpoint (``cxrdx.metrics.degenerate``): those its
    stored evaluation flagged, and a temperature at its bound in its calibration."""
    from cxrdx.metrics.degenerate import temperature_at_bound

    out: dict[str, list[str]] = {}
    stored = (meta.evaluation or {}).get("flags") or {}
    for name, reasons in stored.items():
        out.setdefault(name, []).extend(str(r) for r in reasons)
    for name, reason in temperature_at_bound(meta.calibration, list(meta.labels)).items():
        if reason not in out.get(name, []):
            out.setdefault(name, []).append(reason)
    return out


def never_reached(thresholds: dict[str, float] | None) -> list[str]:
    """Findings whose threshold is so close to 1 that they are practically never called positive."""
    return [n for n, t in (thresholds or {}).items() if t is not None and t >= NEVER_REACHED]


def never_reached_note(names: list[str], thresholds: dict[str, float]) -> str:
    shown = ", ".join(f"{n} {threshold_text(thresholds[n])}" for n in names)
    return (
        f"Threshold effectively never reached: {shown}. These findings are (practically) never called "
        "positive, even at a displayed probability of 1.000; the validation set gave no usable cut-off "
        "(too few positives?)."
    )


def threshold_text(t: float | None) -> str:
    """A threshold with enough digits: 0.412, but 0.99999988 (not 1.000) when it sits just below 1."""
    if t is None:
        return "-"
    if t < 0.999 or t >= 1:
        return f"{t:.3f}"
    n = next((n for n in range(4, 16) if float(f"{t:.{n}f}") < 1), 15)
    return f"{t:.{n + 1}f}".rstrip("0")


def card_lines(meta: CheckpointMeta) -> list[str]:
    """Plain-text lines: dataset (kind), images, patients, split, epochs, evaluation."""
    card = training_card(meta)
    lines = [f"trained on: {card.get('dataset') or 'not recorded'} ({card['kind']} data)"]
    counts = []
    if card.get("images") is not None:
        counts.append(f"{card['images']} images")
    if card.get("patients") is not None:
        counts.append(f"{card['patients']} patients")
    if isinstance(card.get("split"), dict) and card["split"]:
        counts.append("split " + ", ".join(f"{k} {v}" for k, v in card["split"].items()))
    if card.get("epochs") is not None:
        text = f"{card['epochs']} epoch(s) trained"
        if card.get("best_epoch") is not None:
            text += f", best epoch {card['best_epoch']}"
            if card.get("weights_epoch") is not None and card["weights_epoch"] != card["best_epoch"]:
                text += f" (these weights: epoch {card['weights_epoch']})"
        counts.append(text)
    if counts:
        lines.append("training data: " + ", ".join(counts))
    evaluation = meta.evaluation or {}
    if has_evaluation(meta):
        where = evaluation.get("dataset") or evaluation.get("split") or "a recorded evaluation set"
        mean = evaluation.get("mean_auroc")
        lines.append(
            f"evaluated on: {where}" + (f", mean AUROC {mean:.3f}" if isinstance(mean, int | float) else "")
        )
    else:
        lines.append("evaluated on: nothing recorded")
    return lines


# --------------------------------------------------------------------------- what results carry (issue 26)

DEMO_FLAG = "--allow-demo-model"


def demo_reasons(meta: CheckpointMeta) -> list[str]:
    """Why this model's output must not pass for a result: trained on phantoms, never evaluated ([] if neither)."""
    out = []
    if is_phantom(meta):
        out.append("trained on synthetic phantoms")
    if not has_evaluation(meta):
        out.append("never evaluated")
    return out


def demo_stamp(meta: CheckpointMeta) -> str | None:
    """The short stamp every result object of a demo model carries (SR text, burned-in caption, FHIR)."""
    reasons = demo_reasons(meta)
    if not reasons:
        return None
    return f"DEMO MODEL ({', '.join(reasons)}): its findings mean nothing for this patient"


def require_not_demo(meta: CheckpointMeta, allowed: bool, where: str) -> None:
    """Refuse a demo model (``demo_reasons``) for output that leaves cxrdx (a PACS, DICOM/FHIR files)."""
    from cxrdx.errors import ConfigError

    reasons = demo_reasons(meta)
    if reasons and not allowed:
        raise ConfigError(
            f"this checkpoint is {' and '.join(reasons)}: {where} would put its findings beside a "
            f"patient's images. Use a model trained and evaluated on real radiographs, or add {DEMO_FLAG} "
            "to send them anyway, stamped as a demo in every object"
        )


def training_line(meta: CheckpointMeta) -> str:
    """The model card's training-data line: what the model was trained on, and how much."""
    lines = card_lines(meta)
    return "; ".join(line for line in lines if line.startswith(("trained on", "training data")))


def ood_not_evaluated(score: float | None, threshold: float | None, sent: bool = False) -> str:
    """What a result says about an out-of-distribution image (its findings withheld, or ``sent`` on request)."""
    numbers = (
        ""
        if score is None
        else f" (OOD score {score:.2f}" + (f" > threshold {threshold:.2f})" if threshold is not None else ")")
    )
    if sent:
        return (
            f"OUT OF DISTRIBUTION{numbers}: the image is unlike the model's training images; its findings "
            "are reported only because --send-ood-findings was given and must not be relied on"
        )
    return (
        f"NOT EVALUATED: the image is out of distribution{numbers}, unlike the images the model was "
        "trained on, so no finding is reported present or absent"
    )
