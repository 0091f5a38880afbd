"""Degenerate results: the numbers that look like results but mean nothing, each with why.

One place decides them for the evaluation report, the checkpoint's stored evaluation
and the app (through ``cxrdx.model.card``):

- a temperature at a bound of its search range (``TEMPERATURE_RANGE``): the fit ran
  off the end, so the finding's "calibrated" probabilities are not a fitted optimum
  (Pleural_Thickening T = 20.000 flattens every output to about the prevalence, and a
  small ECE then says nothing);
- a threshold whose calls are nearly all false positives: at least ``MIN_CALLS``
  positive calls of which at most ``MAX_PPV`` are right (5 TP against 133 FP);
- an AUROC whose confidence interval contains 0.5: not distinguishable from chance;
- a pointing game below its chance rate (a uniformly random peak cell,
  ``cxrdx.explain.localisation.chance_hit_rate``).

Pure functions of plain numbers and dicts (what metrics.json and the checkpoint hold).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from cxrdx.metrics.calibration import TEMPERATURE_RANGE, finding_methods

BOUND_TOLERANCE = 1e-3  # relative: a fitted T within 0.1 % of a bound sits at it
MIN_CALLS = 10  # fewer positive calls are too few to judge
MAX_PPV = 0.10  # at most 1 call in 10 right: "nearly all false positives"


def temperature_at_bound(calibration: Mapping | None, names: Sequence[str]) -> dict[str, str]:
    """Findings whose fitted temperature sits at a bound of its range -> the flag's text."""
    if not calibration or calibration.get("method", "none") == "none":
        return {}
    per = finding_methods(dict(calibration), names)
    out = {}
    for name in names:
        t = (calibration.get("temperature") or {}).get(name)
        if per[name] != "prior+temperature" or not isinstance(t, int | float):
            continue
        for bound in TEMPERATURE_RANGE:
            if abs(t - bound) <= BOUND_TOLERANCE * bound:
                out[name] = (
                    f"temperature at its bound (T = {t:.3f}, range {TEMPERATURE_RANGE[0]}-"
                    f"{TEMPERATURE_RANGE[1]}): the fit did not converge, its probabilities and ECE are not "
                    "a fitted calibration"
                )
    return out


def mostly_false_positives(at_threshold: Mapping | None) -> str | None:
    """The flag for a threshold whose calls are nearly all false positives, else None."""
    if not at_threshold:
        return None
    tp, fp = at_threshold.get("tp"), at_threshold.get("fp")
    if not isinstance(tp, int | float) or not isinstance(fp, int | float) or tp + fp < MIN_CALLS:
        return None
    ppv = tp / (tp + fp)
    if ppv > MAX_PPV:
        return None
    return (
        f"the threshold's calls are nearly all false positives ({int(tp)} TP against {int(fp)} FP, "
        f"PPV {ppv:.3f})"
    )


def ci_contains_chance(ci: Sequence | None) -> str | None:
    """The flag for an AUROC whose confidence interval contains 0.5, else None."""
    if not ci or len(ci) != 2 or any(not isinstance(v, int | float) or math.isnan(v) for v in ci):
        return None
    lo, hi = ci
    if lo <= 0.5 <= hi:
        return f"AUROC CI [{lo:.3f}, {hi:.3f}] contains 0.5: not distinguishable from chance"
    return None


def below_chance(pointing: float | None, chance: float | None, what: str = "pointing game") -> str | None:
    """The flag for a pointing game below its chance rate, else None."""
    if pointing is None or chance is None or not pointing < chance:
        return None
    return f"{what} {pointing:.3f} is below its chance rate {chance:.3f}"


def class_flags(classes: Mapping[str, Mapping], calibration: Mapping | None = None) -> dict[str, list[str]]:
    """Per finding, the flags of an evaluation's per-class figures (metrics.json ``classes``) and of the
    calibration applied; findings without a flag are left out."""
    temps = temperature_at_bound(calibration, list(classes))
    out: dict[str, list[str]] = {}
    for name, c in classes.items():
        flags = [
            temps.get(name),
            ci_contains_chance(c.get("auroc_ci")),
            mostly_false_positives(c.get("at_threshold")),
            below_chance(c.get("pointing_game"), c.get("pointing_chance")),
        ]
        if any(flags):
            out[name] = [f for f in flags if f]
    return out
