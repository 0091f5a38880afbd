"""AUROC: one implementation, with the patient-level (cluster) bootstrap CI.

The point estimate is ``fast_auroc`` (ranks; tests hold it to scikit-learn). The 95 % confidence interval is a
percentile cluster bootstrap over patients: a replicate draws patients with
replacement and every image of a drawn patient comes along (as many times as the
patient was drawn). NIH has many follow-up films per patient; resampling images
would treat them as independent and make the CI too narrow. Replicates use a
vectorised weighted Mann-Whitney statistic, the same one. A finding with no positives
or no negatives has an undefined AUROC (None) and is left out of means.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cxrdx.errors import ConfigError
from cxrdx.labels import FINDINGS

BOOT_CHUNK = 50  # replicates per vectorised block (memory ~ chunk x images x 8 bytes x a few)


def _weighted_aurocs(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC for each row of ``weights`` (B, n): weighted Mann-Whitney U with ties counted half.

    Integer weights equal repeating each sample that many times. NaN where a row
    leaves no positive or no negative weight.
    """
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    pos = np.asarray(y, dtype=bool)[order]
    starts = np.r_[0, np.nonzero(np.diff(s))[0] + 1]  # groups of tied scores
    w = np.asarray(weights, dtype=np.float64)[:, order]
    wp = np.add.reduceat(np.where(pos, w, 0.0), starts, axis=1)
    wn = np.add.reduceat(np.where(pos, 0.0, w), starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn  # negative weight strictly below each tie group
    u = (wp * (below + 0.5 * wn)).sum(axis=1)
    p, n = wp.sum(axis=1), wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = u / (p * n)
    auc[(p <= 0) | (n <= 0)] = np.nan
    return auc


def fast_auroc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float | None:
    """AUROC via ranks (equals ``sklearn.metrics.roc_auc_score``); None when undefined."""
    y = np.asarray(y)
    scores = np.asarray(scores, dtype=np.float64)
    w = np.ones((1, len(y))) if weights is None else np.asarray(weights, dtype=np.float64)[None]
    value = float(_weighted_aurocs(y, scores, w)[0])
    return None if math.isnan(value) else value


def patient_multiplicities(patients: Sequence, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_images) int: how often each image appears in each cluster-bootstrap replicate.

    Patients are drawn with replacement (as many draws as there are patients);
    every image inherits its patient's count, so a patient is never split.
    """
    codes, uniques = _factorize(patients)
    n_pat = len(uniques)
    draws = rng.integers(0, n_pat, size=(n_boot, n_pat))
    flat = (draws + np.arange(n_boot)[:, None] * n_pat).ravel()
    counts = np.bincount(flat, minlength=n_boot * n_pat).reshape(n_boot, n_pat)
    return counts[:, codes].astype(np.int32)


def resample_by_patient(patients: Sequence, rng: np.random.Generator) -> np.ndarray:
    """Image indices of one patient-level bootstrap replicate (each drawn patient's images, repeated)."""
    counts = patient_multiplicities(patients, 1, rng)[0]
    return np.repeat(np.arange(len(counts)), counts)


def _factorize(values: Sequence) -> tuple[np.ndarray, np.ndarray]:
    uniques, codes = np.unique(
        np.asarray([str(v) for v in values], dtype=object).astype(str), return_inverse=True
    )
    return codes.astype(np.int64), uniques


@dataclass
class AurocResult:
    """One class's AUROC with its bootstrap CI; ``auroc`` None means undefined."""

    auroc: float | None
    ci_low: float | None
    ci_high: float | None
    n_boot_valid: int
    n_pos: int
    n_neg: int
    replicates: np.ndarray | None = field(default=None, repr=False)  # (n_boot,), NaN where undefined

    @property
    def defined(self) -> bool:
        return self.auroc is not None


def auroc_with_ci(
    y_true: np.ndarray,
    probs: np.ndarray,
    patients: Sequence,
    names: Sequence[str] = FINDINGS,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, AurocResult]:
    """Per-class AUROC (``fast_auroc``) and a patient-level percentile bootstrap CI."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    if y_true.shape != probs.shape or y_true.ndim != 2 or y_true.shape[1] != len(names):
        raise ValueError(
            f"labels {y_true.shape} and probabilities {probs.shape} must both be (n, {len(names)})"
        )
    if len(patients) != len(y_true):
        raise ValueError(f"{len(patients)} patient ids for {len(y_true)} images")
    if not 0 < level < 1:
        raise ConfigError(f"confidence level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    reps: list[list[np.ndarray]] = [[] for _ in names]
    # NaN labels are unlabelled: each finding uses only its labelled images (patients are drawn once
    # for all findings, and a finding's replicate keeps its labelled images of the drawn patients)
    labelled = ~np.isnan(np.asarray(y_true, dtype=np.float64))
    y_true = np.where(labelled, y_true, 0)
    done = 0
    while done < n_boot:
        chunk = min(BOOT_CHUNK, n_boot - done)
        weights = patient_multiplicities(patients, chunk, rng)
        for c in range(len(names)):
            m = labelled[:, c]
            if 0 < y_true[m, c].sum() < m.sum():
                reps[c].append(_weighted_aurocs(y_true[m, c], probs[m, c], weights[:, m]))
        done += chunk
    out: dict[str, AurocResult] = {}
    for c, name in enumerate(names):
        m = labelled[:, c]
        n_pos = int(y_true[m, c].sum())
        n_neg = int(m.sum()) - n_pos
        if n_pos == 0 or n_neg == 0:
            out[name] = AurocResult(None, None, None, 0, n_pos, n_neg)
            continue
        point = fast_auroc(y_true[m, c], probs[m, c])
        replicates = np.concatenate(reps[c]) if reps[c] else np.array([])
        values = replicates[~np.isnan(replicates)]
        lo = hi = None
        if len(values):
            tail = (1 - level) / 2 * 100
            lo, hi = (float(v) for v in np.percentile(values, [tail, 100 - tail]))
        out[name] = AurocResult(point, lo, hi, int(len(values)), n_pos, n_neg, replicates)
    return out


def mean_auroc_ci(
    results: Mapping[str, AurocResult], findings: Sequence[str] | None = None, level: float = 0.95
) -> tuple[float | None, float | None]:
    """Patient-bootstrap CI of the mean AUROC over the defined findings (restricted to ``findings``).

    Every finding's replicates come from the same patient draws (``auroc_with_ci`` draws once per
    replicate for all findings), so the mean is taken within each replicate, then its percentiles.
    """
    rows = [
        r.replicates
        for k, r in results.items()
        if r.defined
        and r.replicates is not None
        and len(r.replicates)
        and (findings is None or k in findings)
    ]
    if not rows:
        return None, None
    stacked = np.stack(rows)
    defined = ~np.isnan(stacked)
    counts = defined.sum(axis=0)
    means = np.where(defined, stacked, 0.0).sum(axis=0)[counts > 0] / counts[counts > 0]
    if not len(means):
        return None, None
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def per_finding_auroc(
    y_true: np.ndarray, scores: np.ndarray, names: Sequence[str] = FINDINGS
) -> dict[str, float | None]:
    """AUROC per finding (columns of ``y_true``/``scores`` in ``names`` order); None where undefined.

    NaN labels are unlabelled: each finding is scored on its labelled images only.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    out = {}
    for c, name in enumerate(names):
        m = ~np.isnan(y_true[:, c])
        out[name] = fast_auroc(y_true[m, c], scores[m, c]) if m.any() else None
    return out


def mean_auroc(aurocs: Mapping[str, float | None], findings: Sequence[str] | None = None) -> float | None:
    """Mean over the findings with a defined AUROC (restricted to ``findings`` when given); None if none."""
    values = [v for k, v in aurocs.items() if v is not None and (findings is None or k in findings)]
    return float(np.mean(values)) if values else None
