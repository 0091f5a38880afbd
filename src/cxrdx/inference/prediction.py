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
    # scores, not probabilities; cxrdx.metrics.calibration)
    calibration: str = "none"
    # Mahalanobis distance of the image's pooled features to the training images' (cxrdx.model.ood), and
    # whether it is within the checkpoint's threshold; both None when the checkpoint has no reference
    ood_score: float | None = None
    in_distribution: bool | None = None

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
            "ood_score": self.ood_score,
            "in_distribution": self.in_distribution,
        }
