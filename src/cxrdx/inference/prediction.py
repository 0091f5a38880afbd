"""One image's result, every finding by name: what ``Predictor.predict`` returns and the output formats write."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Prediction:
    """One image's result; ``error`` is set (and the rest empty) when it could not be read."""

    image: str  # the file (or "array[i]"): the same name as the "image" of --format json/csv and label tables
    probabilities: dict[str, float] = field(default_factory=dict)
    positive: dict[str, bool] | None = None  # None when the checkpoint has no thresholds
    uncertainty: dict[str, float] | None = None  # spread over test-time-augmentation views
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    # the calibration applied: "prior+temperature", "prior", or "none" (then the numbers are uncalibrated
    # scores, not probabilities; cxrdx.metrics.calibration); the record-wide method, the strongest any
    # finding got: per finding see ``calibration_by_finding``
    calibration: str = "none"
    # Mahalanobis distance of the image's pooled features to the training images' (cxrdx.model.ood), and
    # whether it is within the checkpoint's threshold; both None when the checkpoint has no reference
    ood_score: float | None = None
    in_distribution: bool | None = None
    # per finding the calibration it really got (a finding not fitted is "none": a score); None: every
    # finding has ``calibration``
    calibration_by_finding: dict[str, str] | None = None

    def finding_calibration(self, name: str) -> str:
        """The calibration of one finding's number: "prior+temperature", "prior" or "none" (a score)."""
        if self.calibration_by_finding is not None:
            return self.calibration_by_finding.get(name, "none")
        return self.calibration

    def is_probability(self, name: str) -> bool:
        return self.finding_calibration(name) != "none"

    def value_word(self, name: str) -> str:
        """What one finding's number is: "probability" or "score (uncalibrated)"."""
        return "probability" if self.is_probability(name) else "score (uncalibrated)"

    @property
    def uncalibrated(self) -> list[str]:
        """The findings whose numbers are scores (uncalibrated), not probabilities."""
        return [n for n in self.probabilities if not self.is_probability(n)]

    @property
    def calibration_text(self) -> str:
        """One line: the method, and the findings that are scores when only some are."""
        raw = self.uncalibrated
        if self.calibration == "none" or (raw and len(raw) == len(self.probabilities)):
            return "none: score (uncalibrated)"
        if not raw:
            return self.calibration
        return f"{self.calibration}; score (uncalibrated, not fitted): {', '.join(raw)}"

    @property
    def source(self) -> str:
        """The former name of ``image`` (the API called it ``source``, the files ``image``); kept for old code."""
        return self.image

    @source.setter
    def source(self, value: str) -> None:
        self.image = value

    @property
    def ok(self) -> bool:
        return self.error is None

    def ranked(self) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record with every finding by name (what ``--format json`` writes)."""
        return {
            "image": self.image,
            "probabilities": dict(self.probabilities) if self.ok else None,
            "positive": None if self.positive is None else dict(self.positive),
            "uncertainty": None if self.uncertainty is None else dict(self.uncertainty),
            "warnings": list(self.warnings),
            "error": self.error,
            "calibration": self.calibration,
            "calibration_by_finding": {n: self.finding_calibration(n) for n in self.probabilities}
            if self.ok
            else None,
            "ood_score": self.ood_score,
            "in_distribution": self.in_distribution,
        }
