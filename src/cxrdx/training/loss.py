"""The seed's class-weighted binary cross-entropy, computed stably from logits.

Per finding c, with f_c the fraction of *training* images positive for c:
``w_pos[c] = 1 - f_c`` (the frequency of negatives) and ``w_neg[c] = f_c``. The loss is

    L = -sum_c mean_n( w_pos*y*log(p + eps) + w_neg*(1 - y)*log(1 - p + eps) ),  eps = 1e-7

so in every finding the positives and the negatives carry the same total weight
(N*f*(1-f) each): rare findings are not drowned by their negatives. The weights
come from the training split only; validation and test reuse them.

Partial labels: a NaN target means "not labelled" (a finding the image's dataset does
not label, or an uncertain label under ``--uncertain ignore``). It is masked: it adds
nothing to the loss or its gradient, and ``f_c`` is the positive fraction among the
*labelled* training images of c. A finding no training image labels gets zero weights.

Stability: ``log(p + eps)`` is evaluated as ``logaddexp(logsigmoid(x), log(eps))``,
which is the same number mathematically but never forms ``sigmoid(x)`` (which
rounds to exactly 0 or 1 for large |x| in float32).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from cxrdx.errors import DataError

EPS = 1e-7


def class_weights(labels: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(w_pos, w_neg) per finding from an (N, C) training label matrix of 0 / 1 / NaN (unlabelled).

    ``w_pos`` = frequency of negatives, ``w_neg`` = frequency of positives, both among the
    images that label the finding. A finding with no positives gets w_neg = 0 (its
    negatives then carry no weight, as in the seed's formula): it simply does not train,
    rather than being pushed to 0; one that no image labels gets both weights 0.
    """
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] == 0:
        raise DataError(
            f"class weights need a non-empty (images, findings) label matrix, got shape {y.shape}"
        )
    labelled = ~np.isnan(y)
    if not np.isin(y[labelled], (0.0, 1.0)).all():
        raise DataError(
            "class weights need 0/1 (or NaN = unlabelled) labels; the label matrix has other values"
        )
    count = labelled.sum(axis=0)
    freq_pos = np.divide(
        np.where(labelled, y, 0.0).sum(axis=0), count, out=np.zeros(y.shape[1]), where=count > 0
    )
    w_pos = np.where(count > 0, 1.0 - freq_pos, 0.0)
    return w_pos.astype(np.float32), freq_pos.astype(np.float32)


def _log_plus_eps(log_p: torch.Tensor, eps: float) -> torch.Tensor:
    """log(p + eps) from log(p), without leaving log space."""
    return torch.logaddexp(log_p, torch.full_like(log_p, math.log(eps)))


class WeightedBCEWithLogits(nn.Module):
    """The seed's weighted BCE on logits. ``reduction``: "mean" (the loss) or "none" (per image).

    With "none" each image's value is its sum over findings, so the mean over images
    of the "none" output equals the "mean" loss (used to average validation loss
    exactly across batches and processes).
    """

    def __init__(
        self,
        w_pos: np.ndarray | torch.Tensor,
        w_neg: np.ndarray | torch.Tensor,
        eps: float = EPS,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        self.register_buffer("w_pos", torch.as_tensor(np.asarray(w_pos), dtype=torch.float32).reshape(-1))
        self.register_buffer("w_neg", torch.as_tensor(np.asarray(w_neg), dtype=torch.float32).reshape(-1))
        self.eps = float(eps)
        self.reduction = reduction

    @classmethod
    def from_labels(cls, labels: np.ndarray | torch.Tensor, **kwargs) -> WeightedBCEWithLogits:
        return cls(*class_weights(labels), **kwargs)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape != targets.shape or logits.shape[-1] != self.w_pos.numel():
            raise ValueError(
                f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be (N, {self.w_pos.numel()})"
            )
        # Under autocast the logits may be bf16/fp16: the loss is always at least fp32.
        x = logits if logits.dtype == torch.float64 else logits.float()
        y = targets.to(x.dtype)
        labelled = ~torch.isnan(y)
        y = torch.where(labelled, y, torch.zeros_like(y))
        w_pos, w_neg = self.w_pos.to(x.dtype), self.w_neg.to(x.dtype)
        log_p = _log_plus_eps(nn.functional.logsigmoid(x), self.eps)
        log_1mp = _log_plus_eps(nn.functional.logsigmoid(-x), self.eps)
        per = -(w_pos * y * log_p + w_neg * (1.0 - y) * log_1mp) * labelled  # (N, C); unlabelled: 0
        per_image = per.sum(dim=1)
        return per_image.mean() if self.reduction == "mean" else per_image

    def extra_repr(self) -> str:
        return f"classes={self.w_pos.numel()}, eps={self.eps}, reduction={self.reduction!r}"
