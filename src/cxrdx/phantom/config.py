"""What a phantom dataset contains: per-finding prevalence, co-occurrence, patients and follow-ups."""

from __future__ import annotations

from dataclasses import dataclass, field

from cxrdx.errors import ConfigError
from cxrdx.labels import FINDINGS, canonical

# NIH's ordering of frequencies, compressed so the rarest finding still has ~4%
# positives (a 1,000-image set keeps ~40 of each) and ~45% of images are normal.
DEFAULT_PREVALENCE: dict[str, float] = {
    "Atelectasis": 0.075,
    "Cardiomegaly": 0.04,
    "Consolidation": 0.045,
    "Edema": 0.04,
    "Effusion": 0.085,
    "Emphysema": 0.04,
    "Fibrosis": 0.04,
    "Hernia": 0.04,
    "Infiltration": 0.11,
    "Mass": 0.05,
    "Nodule": 0.055,
    "Pleural_Thickening": 0.04,
    "Pneumonia": 0.04,
    "Pneumothorax": 0.05,
}

# (given, then): when `given` is drawn, `then` is added with this probability.
# Mirrors NIH's common pairs; it raises the marginal prevalence of `then` a little.
DEFAULT_CO_OCCURRENCE: dict[tuple[str, str], float] = {
    ("Effusion", "Atelectasis"): 0.15,
    ("Edema", "Cardiomegaly"): 0.2,
    ("Pneumonia", "Infiltration"): 0.15,
    ("Mass", "Nodule"): 0.1,
}

# Findings that mostly persist across a patient's follow-ups (the rest are redrawn).
CHRONIC = frozenset(
    {"Cardiomegaly", "Emphysema", "Fibrosis", "Hernia", "Mass", "Nodule", "Pleural_Thickening"}
)


@dataclass
class PhantomConfig:
    """What a phantom dataset contains (prevalence, co-occurrence, patients)."""

    prevalence: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PREVALENCE))
    prevalence_scale: float = 1.0
    co_occurrence: dict[tuple[str, str], float] = field(default_factory=lambda: dict(DEFAULT_CO_OCCURRENCE))
    # P(1, 2, 3, 4 images) for a patient.
    followups: tuple[float, ...] = (0.45, 0.25, 0.17, 0.13)
    # Chance that a follow-up keeps the patient's state of a chronic finding.
    persistence: float = 0.8
    # Fraction of lesions drawn small and faint.
    subtle_fraction: float = 0.2
    # Fraction of images labelled AP in the table (metadata only; drawn the same).
    ap_fraction: float = 0.2

    def __post_init__(self) -> None:
        try:
            prevalence = {canonical(k): float(v) for k, v in self.prevalence.items()}
            pairs = {(canonical(a), canonical(b)): float(p) for (a, b), p in self.co_occurrence.items()}
        except Exception as exc:
            raise ConfigError(f"PhantomConfig: {exc}") from exc
        if not self.prevalence_scale > 0:
            raise ConfigError(f"PhantomConfig: prevalence_scale must be > 0, got {self.prevalence_scale}")
        bad = {k: v for k, v in prevalence.items() if not 0.0 <= v <= 1.0}
        bad |= {f"{a}->{b}": p for (a, b), p in pairs.items() if not 0.0 <= p <= 1.0}
        if bad:
            raise ConfigError(f"PhantomConfig: probabilities must lie in [0, 1]; got {bad}")
        if not self.followups or any(p < 0 for p in self.followups) or sum(self.followups) <= 0:
            raise ConfigError(f"PhantomConfig: followups must be non-negative weights, got {self.followups}")
        for name in ("persistence", "subtle_fraction", "ap_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"PhantomConfig: {name} must lie in [0, 1], got {value}")
        self.prevalence = prevalence
        self.co_occurrence = pairs

    def effective_prevalence(self) -> dict[str, float]:
        """Per-finding draw probability after ``prevalence_scale`` (before co-occurrence)."""
        return {f: min(0.95, self.prevalence.get(f, 0.0) * self.prevalence_scale) for f in FINDINGS}
