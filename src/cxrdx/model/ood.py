"""Out-of-distribution score: Mahalanobis distance of an image's pooled features to the training images'.

A CheXNet-style classifier gives confident findings for anything it is shown (a
lateral film, an inverted image, a photo). This module says how far an input is from
what the network was trained on, in the network's own feature space:

- **Features**: the globally average-pooled ReLU(norm5) vector the classifier reads
  (``cxrdx.model.networks.FEATURES_LAYER``, 1024 numbers for DenseNet121), computed in
  the same forward pass as the findings (``features_and_logits``), so the score costs
  no extra inference.
- **Reference**: the mean and a *shrunk* covariance of training images' features
  (Lee et al. 2018, "A simple unified framework for detecting out-of-distribution
  samples", use a class-conditional Gaussian on penultimate features; with 14
  overlapping multi-label findings there are no exclusive classes, so one Gaussian
  over all training images).
- **Why shrinkage (Ledoit-Wolf)**: the sample covariance of 1024-d features from at
  most ``MAX_TRAIN`` images is singular when there are fewer images than features and
  badly conditioned otherwise (dead ReLU channels have zero variance), so its inverse
  amplifies noise in the directions it knows least. Ledoit & Wolf (2004) shrink it
  towards ``mu * I`` (mu = mean variance) with the intensity that minimises the
  expected Frobenius error, in closed form from the data: no tuning knob, always
  invertible, and the standard choice for this (the same formula as scikit-learn's
  ``LedoitWolf``, here in numpy so inference needs no scikit-learn).
- **Score**: the Mahalanobis distance ``sqrt((f - mean)^T P (f - mean))``, P the
  inverse of the shrunk covariance. **Threshold**: the 99th percentile of the scores of
  *validation* images (not training images, whose distances are optimistically small
  because they shaped the mean and covariance), so about 1 % of in-distribution
  images are flagged by design.

- **Several depths** (``DepthOod``, method ``"mahalanobis-depths"``, what ``fit_ood_for`` writes):
  the final features of a weak network (a 1-epoch model) barely tell a real film from a
  phantom, while early layers show low-level differences (noise, inversion, texture, other
  modalities). So, as in Lee et al.'s (2018) *feature ensemble*, one Gaussian is fitted per
  depth, on the global average of the stem's and the first three dense blocks' outputs and
  on the final features (``cxrdx.model.networks.depth_features_and_logits``: the same single
  forward pass; 64 + 256 + 512 + 1024 + 1024 numbers for DenseNet121). Lee et al. weight the
  per-depth distances with a logistic regression fitted on *out-of-distribution* validation
  data, which a user does not have; instead each distance is divided by its mean on the
  in-distribution validation images and the quotients are summed (the normalised total
  deviation of Sastry & Oore 2020, "Detecting out-of-distribution examples with Gram
  matrices", ICML): each depth counts alike, with no tuning on foreign inputs. On a 1-epoch
  densenet-tiny this took every benchmark kind to AUROC 1.000 (README, benchmarks/ood.py).

Stored in the checkpoint as ``CheckpointMeta.ood`` = {"method": "mahalanobis-depths",
"layers": [{"name", "features", "shrinkage", "scale"}, ...], "mean": [...], "threshold":
float, "fitted_on": {...}, ...}; each depth's (F_l, F_l) precision is a safetensors tensor
``ood.precision_<l>`` beside the weights (in memory ``meta.ood["precision_<l>"]``, a numpy
array). A reference of the first format (method ``"mahalanobis"``: the final features only,
tensor ``ood.precision``) still loads and scores the trailing (final) columns of the features;
``cxrdx calibrate`` refits it. Scoring is numpy only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrdx.errors import DataError

if TYPE_CHECKING:
    import torch

    from cxrdx.imaging.preprocessing import Preprocessing

METHOD = "mahalanobis"  # first format: the final pooled features only
DEPTHS_METHOD = "mahalanobis-depths"  # several depths, normalised and summed (DepthOod)
QUANTILE = 99.0  # percentile of validation scores above which an image is out of distribution
MAX_TRAIN = 2000  # training images whose features make the reference (evenly spaced sample)
MAX_VAL = 2000  # validation images whose scores set the threshold
RIDGE = 1e-6  # x mean variance added to the diagonal, in case the shrinkage intensity comes out 0
MIN_SCALE = 1e-3  # floor of a depth's mean validation distance (the divisor of its distances)


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """(Shrunk covariance (F, F), shrinkage intensity in [0, 1]) of samples ``x`` (N, F).

    Ledoit & Wolf (2004): (1 - s) * S + s * mu * I, S the (1/N) sample covariance, mu
    = trace(S) / F, s = min(beta, delta) / delta with delta = ||S - mu I||^2 / F and beta
    = the estimated variance of S's entries, sum_k ||x_k x_k^T - S||^2 / (N^2 F).
    Matches ``sklearn.covariance.LedoitWolf().fit(x)`` (tests check it).
    """
    x = np.asarray(x, dtype=np.float64)
    n, p = x.shape
    z = x - x.mean(axis=0)
    cov = z.T @ z / n
    mu = float(np.trace(cov)) / p
    z2 = z * z
    beta_sum = float(np.sum(z2.T @ z2))  # sum_k ||z_k||^4 summed entry-wise: sum_{k,i,j} z_ki^2 z_kj^2
    delta_sum = float(np.sum(cov * cov))  # ||S||_F^2
    beta = (beta_sum / n - delta_sum) / (p * n)
    delta = (delta_sum - 2.0 * mu * np.trace(cov) + p * mu * mu) / p
    beta = min(beta, delta)
    shrinkage = 0.0 if beta <= 0 or delta <= 0 else beta / delta
    shrunk = (1.0 - shrinkage) * cov
    shrunk[np.diag_indices(p)] += shrinkage * mu
    return shrunk, float(shrinkage)


@dataclass(frozen=True)
class OodStats:
    """The reference distribution: feature mean, precision (inverse shrunk covariance), threshold."""

    mean: np.ndarray  # (F,)
    precision: np.ndarray  # (F, F)
    shrinkage: float
    threshold: float | None = None  # None until set from validation scores
    trailing: bool = False  # a first-format reference: score the trailing (final) columns of wider features

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def score(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` (N, F) -> (N,) float64.

        Computed in the precision's dtype: float64 while fitting, float32 as stored in the
        checkpoint (1024 features, batch 32, busy 2-core CPU: 1.7 -> 1.0 ms per image, against
        ~7 ms for the network itself at 64 px; the distance moves by ~3e-7 relative).
        """
        dtype = self.precision.dtype
        f = np.asarray(features, dtype=dtype)
        if self.trailing and f.ndim == 2 and f.shape[1] > self.dim:  # several depths end with the final ones
            f = f[:, -self.dim :]
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise DataError(
                f"out-of-distribution statistics are for {self.dim} features, got an array of shape {f.shape}"
            )
        z = f - self.mean.astype(dtype, copy=False)
        d2 = np.einsum("ij,ij->i", z @ self.precision, z).astype(np.float64)
        return np.sqrt(np.maximum(d2, 0.0))

    def in_distribution(self, scores: np.ndarray) -> np.ndarray | None:
        """True where a score is at most the threshold; None when there is no threshold."""
        if self.threshold is None:
            return None
        return np.asarray(scores) <= self.threshold

    def verdict(self, score: float) -> tuple[float, bool | None]:
        """(score, in distribution or None without a threshold) for one image."""
        return float(score), None if self.threshold is None else bool(score <= self.threshold)

    def with_threshold(self, val_scores: np.ndarray, quantile: float = QUANTILE) -> OodStats:
        scores = np.asarray(val_scores, dtype=np.float64)
        if scores.size == 0:
            raise DataError("cannot set the out-of-distribution threshold without validation images")
        return OodStats(self.mean, self.precision, self.shrinkage, float(np.percentile(scores, quantile)))

    def to_meta(self, **extra: Any) -> dict:
        """The checkpoint's ``ood`` record; ``precision`` stays an array (saved as tensor ``ood.precision``)."""
        return {
            "method": METHOD,
            "features": self.dim,
            "layer": "class_layers.flatten (global average pool of ReLU(norm5))",
            "covariance": "ledoit-wolf",
            "mean": [float(v) for v in self.mean],
            "shrinkage": self.shrinkage,
            "threshold": self.threshold,
            "quantile": QUANTILE,
            **extra,
            "precision": np.asarray(self.precision, dtype=np.float32),
        }

    @classmethod
    def from_meta(cls, ood: dict | None) -> OodStats | None:
        """The stats of a checkpoint's ``ood`` record, or None when absent or incomplete."""
        if not isinstance(ood, dict) or ood.get("method") != METHOD:
            return None
        precision, mean = ood.get("precision"), ood.get("mean")
        if precision is None or mean is None:
            return None
        precision = np.asarray(precision)
        precision = precision if precision.dtype in (np.float32, np.float64) else precision.astype(np.float64)
        mean = np.asarray(mean, dtype=precision.dtype)
        if precision.shape != (len(mean), len(mean)):
            return None
        threshold = ood.get("threshold")
        return cls(
            mean, precision, float(ood.get("shrinkage", 0.0)), None if threshold is None else float(threshold)
        )


@dataclass(frozen=True)
class DepthOod:
    """One Gaussian per depth; score = sum over depths of (distance / its mean on validation images)."""

    names: tuple[str, ...]
    parts: tuple[OodStats, ...]  # per depth, in the order of the feature columns
    scales: tuple[float, ...]  # mean validation distance per depth
    threshold: float | None = None

    @property
    def dim(self) -> int:
        return sum(p.dim for p in self.parts)

    def depth_scores(self, features: np.ndarray) -> np.ndarray:
        """(N, depths) Mahalanobis distances, each depth on its own columns."""
        f = np.asarray(features)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise DataError(
                f"out-of-distribution statistics are for {self.dim} features of {len(self.parts)} depths, got an "
                f"array of shape {f.shape} (an ONNX file exported before 2026-12? export the checkpoint again)"
            )
        out, start = [], 0
        for part in self.parts:
            out.append(part.score(f[:, start : start + part.dim]))
            start += part.dim
        return np.stack(out, axis=1)

    def score(self, features: np.ndarray) -> np.ndarray:
        return (self.depth_scores(features) / np.asarray(self.scales)).sum(axis=1)

    in_distribution = OodStats.in_distribution
    verdict = OodStats.verdict

    def to_meta(self, **extra: Any) -> dict:
        record: dict[str, Any] = {
            "method": DEPTHS_METHOD,
            "features": self.dim,
            "layers": [
                {"name": n, "features": p.dim, "shrinkage": p.shrinkage, "scale": s}
                for n, p, s in zip(self.names, self.parts, self.scales, strict=True)
            ],
            "layer": "global average of each depth's output (cxrdx.model.networks.depth_features_and_logits)",
            "covariance": "ledoit-wolf per depth",
            "combination": "sum of the depths' distances, each divided by its mean on validation images",
            "mean": [float(v) for p in self.parts for v in p.mean],
            "threshold": self.threshold,
            "quantile": QUANTILE,
            **extra,
        }
        for i, p in enumerate(self.parts):
            record[f"precision_{i}"] = np.asarray(p.precision, dtype=np.float32)
        return record

    @classmethod
    def from_meta(cls, ood: dict) -> DepthOod | None:
        layers = ood.get("layers")
        mean = ood.get("mean")
        if not isinstance(layers, list) or not layers or mean is None:
            return None
        parts, start = [], 0
        for i, layer in enumerate(layers):
            precision, width = ood.get(f"precision_{i}"), int(layer.get("features", 0))
            if precision is None or np.shape(precision) != (width, width):
                return None
            precision = np.asarray(precision)
            precision = (
                precision if precision.dtype in (np.float32, np.float64) else precision.astype(np.float64)
            )
            m = np.asarray(mean[start : start + width], dtype=precision.dtype)
            if len(m) != width:
                return None
            parts.append(OodStats(m, precision, float(layer.get("shrinkage", 0.0))))
            start += width
        threshold = ood.get("threshold")
        return cls(
            tuple(str(layer.get("name", i)) for i, layer in enumerate(layers)),
            tuple(parts),
            tuple(float(layer.get("scale", 1.0)) for layer in layers),
            None if threshold is None else float(threshold),
        )


def reference(ood: dict | None) -> OodStats | DepthOod | None:
    """The scorer of a checkpoint's ``ood`` record (either format), or None when absent or incomplete."""
    if isinstance(ood, dict) and ood.get("method") == DEPTHS_METHOD:
        return DepthOod.from_meta(ood)
    stats = OodStats.from_meta(ood)
    return None if stats is None else replace(stats, trailing=True)


def fit_depths(
    train: np.ndarray,
    val: np.ndarray,
    widths: Sequence[int],
    names: Sequence[str],
    quantile: float = QUANTILE,
) -> DepthOod:
    """Per-depth references on training features, their scales and the threshold on validation features."""
    parts, start = [], 0
    for width in widths:
        parts.append(fit(np.asarray(train)[:, start : start + width]))
        start += width
    if start != np.shape(train)[1]:
        raise DataError(f"depth widths {list(widths)} do not add up to the {np.shape(train)[1]} features")
    unscaled = DepthOod(tuple(names), tuple(parts), tuple(1.0 for _ in parts))
    per_depth = unscaled.depth_scores(val)
    if len(per_depth) == 0:
        raise DataError("cannot set the out-of-distribution threshold without validation images")
    # a depth whose features never vary (distances ~0) carries nothing: a floor keeps its float noise small
    scales = tuple(float(max(v, MIN_SCALE)) for v in per_depth.mean(axis=0))
    scaled = DepthOod(tuple(names), tuple(parts), scales)
    return DepthOod(scaled.names, scaled.parts, scales, float(np.percentile(scaled.score(val), quantile)))


def fit(features_train: np.ndarray) -> OodStats:
    """Mean and Ledoit-Wolf precision of training features (N, F); no threshold yet."""
    f = np.asarray(features_train, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise DataError(
            f"out-of-distribution statistics need the features of at least 2 training images, got {f.shape}"
        )
    cov, shrinkage = ledoit_wolf(f)
    mu = float(np.trace(cov)) / cov.shape[0]
    cov[np.diag_indices_from(cov)] += RIDGE * (mu if mu > 0 else 1.0)
    precision = np.linalg.inv(cov)
    return OodStats(f.mean(axis=0), (precision + precision.T) / 2.0, shrinkage)


def score(stats: OodStats, features: np.ndarray) -> np.ndarray:
    """Mahalanobis distances of ``features`` (N, F) to the reference (see ``OodStats.score``)."""
    return stats.score(features)


# --------------------------------------------------------------------------- features of images


def _positions(n: int, cap: int) -> np.ndarray:
    """Up to ``cap`` evenly spaced positions of ``n`` (deterministic, every part of the split)."""
    return (
        np.unique(np.linspace(0, n - 1, num=min(n, cap)).round().astype(np.int64)) if n else np.zeros(0, int)
    )


def _input_batches(
    images: Any, pre: Preprocessing, cap: int, batch: int
) -> Iterator[tuple[np.ndarray | torch.Tensor, int]]:
    """(network input batch, images skipped) from a batch source, a preprocessed array or paths/arrays.

    ``images``: an object with ``squares(positions)`` and ``len`` (training's cache or
    file batches: uint8 letterboxed squares); a float (N, C, S, S) array already
    preprocessed; or a sequence of image paths / 2-D [0, 1] arrays (unreadable ones skipped).
    """
    if hasattr(images, "squares"):
        import torch

        pos = _positions(len(images), cap)
        for i in range(0, len(pos), batch):
            squares = np.asarray(images.squares(pos[i : i + batch]))
            if squares.shape[-1] != pre.size:  # a cache of another size: letterbox (resize) each square
                yield np.stack([pre(sq)[0] for sq in squares]), 0
            else:
                yield pre.to_input(torch.from_numpy(squares)), 0
        return
    if isinstance(images, np.ndarray) and images.ndim == 4:
        pos = _positions(len(images), cap)
        for i in range(0, len(pos), batch):
            yield np.ascontiguousarray(images[pos[i : i + batch]], dtype=np.float32), 0
        return
    from cxrdx.errors import CxrdxError
    from cxrdx.imaging.read import read_image

    items: Sequence = [images] if isinstance(images, (str, os.PathLike, np.ndarray)) else list(images)
    pos = _positions(len(items), cap)
    for i in range(0, len(pos), batch):
        xs, skipped = [], 0
        for k in pos[i : i + batch]:
            try:
                image, _ = read_image(items[k])
            except CxrdxError:
                skipped += 1
                continue
            xs.append(pre(image)[0])
        yield (np.stack(xs) if xs else np.zeros((0, pre.channels, pre.size, pre.size), np.float32)), skipped


def image_features(
    model: torch.nn.Module,
    images: Any,
    preprocessing: Preprocessing,
    *,
    cap: int,
    device: str | torch.device = "cpu",
    batch: int = 32,
) -> tuple[np.ndarray, int, list[int]]:
    """Features of several depths (N, F) of up to ``cap`` images (see ``_input_batches``), how many were
    skipped, and each depth's width (``cxrdx.model.networks.depth_features_and_logits``)."""
    import torch

    from cxrdx.model.networks import depth_features_and_logits, depth_parts

    was_training = model.training
    model.eval()
    out, skipped = [], 0
    try:
        with torch.inference_mode():
            probe = torch.zeros(1, preprocessing.channels, 32, 32, device=device)
            widths = [int(p.shape[1]) for p in depth_parts(model, probe)[0]]
            for x, missed in _input_batches(images, preprocessing, cap, batch):
                skipped += missed
                if len(x):
                    t = torch.as_tensor(x).to(device, dtype=torch.float32)
                    out.append(depth_features_and_logits(model, t)[0].float().cpu().numpy())
    finally:
        model.train(was_training)
    return (np.concatenate(out) if out else np.zeros((0, sum(widths)), np.float32)), skipped, widths


def fit_ood_for(
    predictor_or_model: Any,
    train_images: Any,
    val_images: Any,
    *,
    preprocessing: Preprocessing | None = None,
    device: str | torch.device | None = None,
    max_train: int = MAX_TRAIN,
    max_val: int = MAX_VAL,
    fitted_on: dict | None = None,
) -> dict:
    """Fit the reference on training images and the threshold on validation images -> ``meta.ood``.

    ``predictor_or_model``: a Predictor (or anything with ``.model`` and ``.meta``), or a
    (model, CheckpointMeta) pair, or a network with ``preprocessing`` given. Images: see
    ``_input_batches``. Store the result with ``meta.ood = result`` and ``save_checkpoint``,
    or ``store_ood(path, result)``.
    """
    obj = predictor_or_model
    if isinstance(obj, tuple):
        model, meta = obj
        preprocessing = preprocessing or meta.preprocessing
    elif hasattr(obj, "meta") and hasattr(obj, "model"):
        model, preprocessing = obj.model, preprocessing or obj.meta.preprocessing
        device = device if device is not None else getattr(obj, "device", None)
    else:
        model = obj
    if preprocessing is None:
        raise TypeError("fit_ood_for: pass a Predictor, a (model, meta) pair, or preprocessing=")
    if device is None:
        device = next(model.parameters()).device
    from cxrdx.model.networks import depth_names

    train_f, train_skipped, widths = image_features(
        model, train_images, preprocessing, cap=max_train, device=device
    )
    val_f, val_skipped, _ = image_features(model, val_images, preprocessing, cap=max_val, device=device)
    if len(val_f) == 0:
        raise DataError("cannot set the out-of-distribution threshold: no readable validation images")
    if len(train_f) < 2:
        raise DataError(
            f"out-of-distribution statistics need the features of at least 2 training images, got {len(train_f)}"
        )
    stats = fit_depths(train_f, val_f, widths, depth_names())
    val_scores = stats.score(val_f)
    record = {
        **(fitted_on or {}),
        "train_images": len(train_f),
        "val_images": len(val_f),
        "skipped": train_skipped + val_skipped,
        "val_score_median": float(np.median(val_scores)),
    }
    return stats.to_meta(fitted_on=record)


def store_ood(path: str | os.PathLike, ood: dict) -> None:
    """Write an ``ood`` record (from ``fit_ood_for``) into a checkpoint file, atomically."""
    from cxrdx.model.checkpoint import update_checkpoint_meta

    def change(meta: Any) -> None:
        meta.ood = ood

    update_checkpoint_meta(path, change)


def fit_ood_into_checkpoint(
    path: str | os.PathLike,
    train_images: Any,
    val_images: Any,
    *,
    device: str | torch.device = "cpu",
    fitted_on: dict | None = None,
) -> dict:
    """Load a checkpoint's network, fit its OOD reference and threshold, write them into the file."""
    from cxrdx.model.checkpoint import load_checkpoint

    model, meta = load_checkpoint(path, device=device)
    ood = fit_ood_for((model, meta), train_images, val_images, device=device, fitted_on=fitted_on)
    store_ood(path, ood)
    return ood
