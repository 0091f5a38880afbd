"""Calibration: turning the network's scores into probabilities, and measuring how well that worked.

Why scores are not probabilities: the training loss is class-weighted
(``w_pos = 1 - f``, ``w_neg = f``, f = training prevalence; ``cxrdx.training.loss``), and a
weighted BCE is minimised at ``odds(p) = (w_pos / w_neg) x odds(true risk)``: every logit
is shifted by ``log(w_pos / w_neg)``, so a base-rate image scores about 0.5 for every
finding. Calibration undoes that per finding, on the logit ``z``:

    z' = z / temperature - log_prior_shift,   p = sigmoid(z')

- method ``"prior"``: the shift ``log(w_pos / w_neg)`` is known exactly from training
  (stored in the checkpoint; recomputed from the recorded training prevalence for older
  checkpoints); temperature 1.
- method ``"prior+temperature"``: plus a per-finding temperature fitted by maximum
  likelihood on validation data (the shift stays fixed). The temperature scales the raw
  logit about 0, the weighted loss's balance point, so an image that scores 0.5 raw (a
  base-rate image) still gets the training prevalence whatever the temperature: a poorly
  fitted temperature cannot move calibration-in-the-large much. It is fitted only with
  at least ``MIN_PER_CLASS`` positives and negatives (else kept at 1). For a network
  whose training weights are unknown (an imported checkpoint) the shift is fitted too,
  which is Platt scaling (``sigmoid(a z + b)``) in another parametrisation;
  ``fitted_on["prior"]`` says which. The same minimum applies on both paths.
- method ``"none"``: the scores are shown as they are (imported checkpoints until calibrated).

The method is recorded **per finding** (``per_finding``: name -> method): a finding that
could not be fitted (too few positives or negatives, or not labelled in the fitting data)
keeps what it had, the prior shift or nothing, and one with ``"none"`` is a score
(uncalibrated) wherever it is shown. The record's ``method`` is the strongest any finding
got. Records written before ``per_finding`` existed are read by ``finding_methods``.

The transform is strictly increasing, so AUROC and the calls at mapped thresholds are
unchanged (``map_thresholds``). It runs in float64 on probabilities, via the logit, so
the PyTorch and the ONNX path (whose graph ends in a sigmoid) share this one place.
Everything here is numpy only. ECE: 10 equal-width bins per class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ECE_BINS = 10
METHODS = ("prior+temperature", "prior", "none")
MIN_WEIGHT = 1e-4  # a finding with no training positives (w_neg = 0) gets the shift of f = 1e-4
TEMPERATURE_RANGE = (0.05, 20.0)
MIN_PER_CLASS = 5  # positives and negatives needed to fit a temperature on top of a known prior
_P_LO, _P_HI = 1e-300, 1.0 - 2.0**-53  # float32 0 and 1 stay distinct from their neighbours


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


# --------------------------------------------------------------------------- the transform


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _P_LO, _P_HI)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def none_calibration() -> dict:
    return {"method": "none", "log_prior_shift": {}, "temperature": {}, "fitted_on": {}}


def finding_methods(calibration: dict | None, names: Sequence[str]) -> dict[str, str]:
    """The calibration each finding really gets: ``per_finding`` when recorded, else derived.

    Older records carry one method for the whole checkpoint: under ``"prior+temperature"``
    the findings listed in ``fitted_on["temperature_kept_at_1"]`` got the prior only, or,
    when the prior was fitted with the temperature (Platt), nothing at all.
    """
    cal = calibration or {}
    method = cal.get("method", "none")
    stored = cal.get("per_finding")
    if isinstance(stored, dict):
        return {n: stored.get(n, "none") if stored.get(n) in METHODS else "none" for n in names}
    if method not in METHODS or method == "none":
        return {n: "none" for n in names}
    shifts = cal.get("log_prior_shift") or {}
    fitted_on = cal.get("fitted_on") or {}
    kept = set(fitted_on.get("temperature_kept_at_1") or [])
    platt = str(fitted_on.get("prior") or "").startswith("fitted")
    out = {}
    for n in names:
        if n not in shifts:
            out[n] = "none"
        elif method == "prior+temperature" and n in kept:
            out[n] = "none" if platt else "prior"
        else:
            out[n] = method
    return out


def strongest(methods: Sequence[str]) -> str:
    """The record-wide method: the strongest any finding got (``"none"`` only when none is calibrated)."""
    for m in METHODS:
        if m in methods:
            return m
    return "none"


def prior_calibration(
    names: Sequence[str], w_pos: Sequence[float], w_neg: Sequence[float], source: str
) -> dict:
    """Method "prior": shift each logit back by log(w_pos / w_neg) (weights clipped at MIN_WEIGHT)."""
    shift, untrained = {}, []
    for name, wp, wn in zip(names, w_pos, w_neg, strict=True):
        wp, wn = float(wp), float(wn)
        if wp <= 0 or wn <= 0:
            untrained.append(name)
        shift[name] = math.log(max(wp, MIN_WEIGHT) / max(wn, MIN_WEIGHT))
    return {
        "method": "prior",
        "log_prior_shift": shift,
        "temperature": {n: 1.0 for n in names},
        "w_pos": {n: float(w) for n, w in zip(names, w_pos, strict=True)},
        "w_neg": {n: float(w) for n, w in zip(names, w_neg, strict=True)},
        "fitted_on": {"prior": source, "untrained": untrained},
    }


def prevalence_calibration(names: Sequence[str], prevalence: dict[str, float], source: str) -> dict | None:
    """Method "prior" from per-finding training prevalence f (the loss used w_pos = 1 - f, w_neg = f)."""
    if not all(n in prevalence and prevalence[n] is not None for n in names):
        return None
    f = [float(prevalence[n]) for n in names]
    return prior_calibration(names, [1.0 - v for v in f], f, source)


def resolve_calibration(calibration: dict | None, provenance: dict | None, names: Sequence[str]) -> dict:
    """The calibration to apply: the stored one, else "prior" from recorded training prevalence, else "none".

    Checkpoints trained before calibration was stored carry no record; when their
    provenance has the training prevalence (``train_prevalence``) or the class weights,
    the prior shift is recomputed from it.
    """
    if calibration and calibration.get("method") in METHODS:
        return {**calibration, "per_finding": finding_methods(calibration, names)}
    prov = provenance or {}
    weights = prov.get("class_weights")
    if isinstance(weights, dict) and {"w_pos", "w_neg"} <= set(weights):
        wp, wn = weights["w_pos"], weights["w_neg"]
        if isinstance(wp, dict):
            wp, wn = [wp.get(n) for n in names], [wn.get(n) for n in names]
        if len(wp) == len(names) and None not in wp and None not in wn:
            cal = prior_calibration(names, wp, wn, "class weights recorded in the provenance")
            return {**cal, "per_finding": finding_methods(cal, names)}
    prevalence = prov.get("train_prevalence")
    if isinstance(prevalence, dict):
        cal = prevalence_calibration(names, prevalence, "training prevalence recorded in the provenance")
        if cal is not None:
            return {**cal, "per_finding": finding_methods(cal, names)}
    return {**none_calibration(), "per_finding": {n: "none" for n in names}}


def apply_calibration(probs: np.ndarray, calibration: dict | None, names: Sequence[str]) -> np.ndarray:
    """(..., L) raw sigmoid outputs -> calibrated probabilities (float64); "none" returns them unchanged
    (for the whole record, or per finding)."""
    if not calibration or calibration.get("method", "none") == "none":
        return np.asarray(probs)
    per = finding_methods(calibration, names)
    shift = np.array([calibration["log_prior_shift"].get(n, 0.0) for n in names], dtype=np.float64)
    temp = np.array([calibration.get("temperature", {}).get(n, 1.0) for n in names], dtype=np.float64)
    out = sigmoid(logit(probs) / temp - shift)
    raw = np.array([per[n] == "none" for n in names])
    if raw.any():
        out[..., raw] = np.asarray(probs, dtype=np.float64)[..., raw]
    return out


def combine_views(
    views: np.ndarray, calibration: dict | None, names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray | None]:
    """(V, N, L) raw outputs of V test-time views -> (mean, spread or None) of the calibrated views."""
    cal = apply_calibration(views, calibration, names)
    if len(cal) == 1:
        return cal[0], None
    return cal.mean(0), cal.std(0)


def map_thresholds(
    thresholds: dict[str, float], old: dict | None, new: dict | None, names: Sequence[str]
) -> dict[str, float]:
    """Thresholds on ``old``'s scale moved onto ``new``'s, so every call stays the same (the map is monotone)."""
    out = {}
    for name, t in thresholds.items():
        if name not in names:
            continue
        z = logit(np.array([t]))
        if old and finding_methods(old, [name])[name] != "none":
            z = (z + old["log_prior_shift"].get(name, 0.0)) * old.get("temperature", {}).get(name, 1.0)
        out[name] = float(apply_calibration(sigmoid(z), new, [name])[0])
    return out


# --------------------------------------------------------------------------- fitting


def _nll(z: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.logaddexp(0.0, z) - y * z))


def fit_temperature(z: np.ndarray, y: np.ndarray, shift: float = 0.0) -> float:
    """The T minimising the log loss of sigmoid(z / T - shift) (golden-section search on log T)."""
    lo, hi = (math.log(v) for v in TEMPERATURE_RANGE)
    g = (math.sqrt(5) - 1) / 2

    def f(log_t: float) -> float:
        return _nll(z / math.exp(log_t) - shift, y)

    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = f(b)
    return float(math.exp((lo + hi) / 2))


def fit_platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(shift, temperature) with p = sigmoid(z / T - shift): Platt scaling (Newton, Platt's smoothed targets)."""
    n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
    t = np.where(y > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    a, b = 1.0, math.log((n_pos + 1) / (n_neg + 1))  # p = sigmoid(a z + b)

    def loss(a: float, b: float) -> float:
        s = a * z + b
        return float(np.sum(np.logaddexp(0.0, s) - t * s))

    current = loss(a, b)
    for _ in range(100):
        p = sigmoid(a * z + b)
        d, w = p - t, np.maximum(p * (1 - p), 1e-12)
        grad = np.array([np.sum(d * z), np.sum(d)])
        hess = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6:
            na, nb = a - scale * step[0], b - scale * step[1]
            new = loss(na, nb)
            if new <= current:
                break
            scale /= 2
        else:
            break
        converged = current - new < 1e-10 * max(1.0, abs(current))
        a, b, current = na, nb, new
        if converged:
            break
    lo, hi = TEMPERATURE_RANGE
    a = min(max(a, 1 / hi), 1 / lo)  # a <= 0 (no signal, or inverted) is clipped to the flattest T
    return float(-b), float(1 / a)


def fit_calibration(
    y_true: np.ndarray, raw_probs: np.ndarray, names: Sequence[str], base: dict | None, fitted_on: dict
) -> dict:
    """Per finding "prior+temperature" fitted on validation labels and raw (uncalibrated) outputs.

    With a known prior shift (``base`` of method prior or prior+temperature) only the
    temperature is fitted on top of it; without a prior the shift is fitted too (Platt).
    Either way only with ``MIN_PER_CLASS`` positives and ``MIN_PER_CLASS`` negatives: a
    finding with fewer keeps temperature 1 and what ``base`` gave it (the prior shift:
    ``"prior"``, or nothing: ``"none"``, a score). NaN labels (unlabelled) are left out
    per finding. ``per_finding`` records each finding's method, ``method`` the strongest.
    """
    known = bool(base) and base.get("method", "none") != "none"
    base_methods = finding_methods(base, names)
    z_all = logit(raw_probs)
    shift, temp, skipped, per, counts = {}, {}, [], {}, {}
    for c, name in enumerate(names):
        y = np.asarray(y_true[:, c], dtype=np.float64)
        keep = ~np.isnan(y)
        y, z = y[keep], z_all[keep, c]
        s0 = float(base["log_prior_shift"].get(name, 0.0)) if known else 0.0
        n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
        counts[name] = {"positives": n_pos, "negatives": n_neg}
        too_few = min(n_pos, n_neg) < MIN_PER_CLASS
        if too_few or name in (base or {}).get("fitted_on", {}).get("untrained", []):
            shift[name], temp[name] = s0, 1.0
            skipped.append(name)
            per[name] = ("prior" if base_methods[name] != "none" else "none") if known else "none"
        elif known:
            shift[name], temp[name] = s0, fit_temperature(z, y, s0)
            per[name] = "prior+temperature"
        else:
            shift[name], temp[name] = fit_platt(z, y)
            per[name] = "prior+temperature"
    out = {
        "method": strongest(list(per.values())),
        "per_finding": per,
        "log_prior_shift": shift,
        "temperature": temp,
        "fitted_on": {
            **fitted_on,
            "prior": (base or {}).get("fitted_on", {}).get("prior")
            if known
            else "fitted with the temperature (Platt)",
            "temperature_kept_at_1": skipped,
            "min_per_class": MIN_PER_CLASS,
            "counts": counts,
        },
    }
    for key in ("w_pos", "w_neg"):
        if known and key in base:
            out[key] = base[key]
    return out


def calibration_table(
    y_true: np.ndarray, before: np.ndarray, after: np.ndarray, names: Sequence[str]
) -> dict[str, dict]:
    """Per finding: prevalence, mean predicted probability and ECE before and after calibration."""
    out = {}
    for c, name in enumerate(names):
        y = np.asarray(y_true[:, c], dtype=np.float64)
        keep = ~np.isnan(y)
        y, b, a = y[keep], before[keep, c], after[keep, c]
        out[name] = {
            "prevalence": float(y.mean()) if len(y) else None,
            "mean_predicted_before": float(np.mean(b)) if len(y) else None,
            "mean_predicted_after": float(np.mean(a)) if len(y) else None,
            "ece_before": expected_calibration_error(y, b),
            "ece_after": expected_calibration_error(y, a),
        }
    return out
