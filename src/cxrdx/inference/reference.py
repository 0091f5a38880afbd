"""A checkpoint's reference images and their fp32 outputs, and the check a reduced precision must pass.

Beside each cached export (``<export>.onnx``) lies ``<export>.reference.npz``: ``REFERENCE_IMAGES``
phantom films (cxrdx.phantom, drawn at the network's input size with their ground-truth findings)
as uint8 squares, and the export's fp32 outputs (raw sigmoid scores) on them, computed by ONNX
Runtime fp32 when the reference is first made. About 1-2 MB at 320 px (compressed).

Before ``cxrdx predict`` picks a reduced precision (OpenVINO bf16, int8) it runs these images
through it and compares with the stored fp32 outputs, after the checkpoint's calibration: the
largest |p - p fp32|, the share of (image, finding) calls that flip at the stored thresholds and,
for the findings the images have both with and without, the mean AUROC against the phantoms'
labels. The tolerances are ``settings.REDUCED_MAX_*``. Phantoms, not the training data's validation
split: the export cache does not know where that split is, and a check of numerical agreement
needs images that exercise the network, not its accuracy. (``cxrdx quantize`` checks int8's AUROC
on the real validation split as well.)
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrdx.settings import (
    REDUCED_MAX_ABS_DIFF,
    REDUCED_MAX_AUROC_DIFF,
    REDUCED_MAX_CALLS_FLIPPED,
    REDUCED_MAX_OOD_FLIPPED,
    REFERENCE_IMAGES,
)

SEED = 31  # the phantoms' seed: the same films for every checkpoint of a size
BATCH = 8


@dataclass
class Reference:
    images: np.ndarray  # (N, S, S) uint8 gray films at the network's input size
    outputs: np.ndarray  # (N, L) float32 raw sigmoid scores of the fp32 export, labels' order
    labels: np.ndarray  # (N, L) float32 ground truth (1/0), NaN where the phantom has no such finding
    names: list[str]  # the outputs' labels
    features: np.ndarray | None = None  # (N, F) float32 fp32 pooled features (the OOD score's input)


@dataclass
class Check:
    """How a backend/precision's outputs on the reference images compare with the stored fp32 ones."""

    n_images: int
    max_abs_diff: float  # largest |p - p fp32|, calibrated probabilities
    calls_flipped: float | None  # share of (image, finding) calls that differ; None without thresholds
    auroc_diff: float | None  # mean AUROC - mean AUROC fp32 (phantom labels); None without both classes
    passed: bool
    reason: str = ""  # why it failed
    ood_flipped: float | None = None  # share of out-of-distribution verdicts that differ (None: no gate)

    def line(self) -> str:
        calls = "" if self.calls_flipped is None else f", calls flipped {self.calls_flipped:.2%}"
        auroc = "" if self.auroc_diff is None else f", AUROC {self.auroc_diff:+.4f}"
        auroc += "" if self.ood_flipped is None else f", OOD verdicts flipped {self.ood_flipped:.2%}"
        verdict = "passed" if self.passed else f"REJECTED ({self.reason})"
        return f"{self.n_images} reference images: max |dp| {self.max_abs_diff:.4f}{calls}{auroc}: {verdict}"

    def to_dict(self) -> dict:
        return asdict(self)


def reference_path(export_path: str | os.PathLike) -> Path:
    return Path(export_path).with_suffix(".reference.npz")


def phantom_films(
    size: int, names: Sequence[str], n: int = REFERENCE_IMAGES
) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size) uint8 phantoms and their (N, L) labels for ``names`` (NaN: not a phantom finding)."""
    from cxrdx.labels import FINDINGS, canonical
    from cxrdx.phantom.config import PhantomConfig
    from cxrdx.phantom.dataset import plan_dataset
    from cxrdx.phantom.render import make_phantom

    specs = plan_dataset(n, SEED, PhantomConfig())
    images = np.stack(
        [make_phantom(np.random.default_rng([SEED, 3, s.index]), size, s.findings)[0] for s in specs]
    ).astype(np.uint8)
    labels = np.full((n, len(names)), np.nan, dtype=np.float32)
    for j, name in enumerate(names):
        try:
            known = canonical(name)
        except Exception:  # noqa: BLE001 - a label outside the NIH 14: no ground truth
            continue
        if known in FINDINGS:
            labels[:, j] = [known in s.findings for s in specs]
    return images, labels


def inputs(images: np.ndarray, prepare: Callable[[np.ndarray], tuple[np.ndarray, object]]) -> np.ndarray:
    """The network inputs (N, C, S, S) of the stored films, made by the checkpoint's recipe."""
    return np.stack([prepare(im)[0] for im in images]).astype(np.float32)


def run_all(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """``run`` over ``x`` in batches: (N, L + F), the outputs then the features."""
    return np.concatenate(
        [np.asarray(run(x[i : i + batch]), dtype=np.float32) for i in range(0, len(x), batch)]
    )


def make_reference(
    run: Callable[[np.ndarray], np.ndarray],
    prepare: Callable[[np.ndarray], tuple[np.ndarray, object]],
    size: int,
    names: Sequence[str],
    n: int = REFERENCE_IMAGES,
) -> Reference:
    """Draw the phantoms and record ``run``'s (the fp32 export's) raw outputs and features on them.
    ``run(x)`` returns (N, L + F): the L outputs, then the features."""
    images, labels = phantom_films(size, names, n)
    both = run_all(run, inputs(images, prepare))
    return Reference(images, both[:, : len(names)], labels, list(names), both[:, len(names) :])


def save(ref: Reference, path: str | os.PathLike) -> None:
    """Written atomically; a read-only cache folder keeps it in memory only."""
    from cxrdx.errors import CxrdxError
    from cxrdx.files import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            feats = ref.features if ref.features is not None else np.zeros((len(ref.images), 0), np.float32)
            np.savez_compressed(
                f,
                images=ref.images,
                outputs=ref.outputs,
                labels=ref.labels,
                names=np.array(ref.names),
                features=feats,
            )

    with contextlib.suppress(OSError, CxrdxError):
        atomic_write(path, write)


def load(path: str | os.PathLike) -> Reference | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            feats = z["features"] if "features" in z.files and z["features"].shape[1] else None
            return Reference(z["images"], z["outputs"], z["labels"], [str(s) for s in z["names"]], feats)
    except (OSError, ValueError, KeyError):
        return None


def ensure(
    export_path: str | os.PathLike,
    run_fp32: Callable[[np.ndarray], np.ndarray],
    prepare: Callable[[np.ndarray], tuple[np.ndarray, object]],
    size: int,
    names: Sequence[str],
) -> Reference:
    """The export's stored reference, made (and stored) first when there is none or it is for other labels."""
    path = reference_path(export_path)
    ref = load(path)
    stale = ref is None or ref.names != list(names) or ref.images.shape[1:] != (size, size)
    if stale or ref.features is None:
        ref = make_reference(run_fp32, prepare, size, names)
        save(ref, path)
    return ref


def prune(folder: str | os.PathLike) -> None:
    """Delete references whose export was pruned from the cache."""
    for p in Path(folder).glob("*.reference.npz"):
        if not p.with_name(p.name.replace(".reference.npz", ".onnx")).is_file():
            p.unlink(missing_ok=True)


def _mean_auroc(labels: np.ndarray, scores: np.ndarray) -> tuple[float | None, list[int]]:
    from cxrdx.metrics.auroc import per_finding_auroc

    names = [str(j) for j in range(labels.shape[1])]
    per = per_finding_auroc(labels, scores, names)
    cols = [int(k) for k, v in per.items() if v is not None and not math.isnan(v)]
    return (float(np.mean([per[str(c)] for c in cols])) if cols else None), cols


def check(
    ref: Reference,
    outputs: np.ndarray,
    calibrate: Callable[[np.ndarray], np.ndarray],
    thresholds: dict[str, float] | None,
    ood: Any = None,
) -> Check:
    """Compare a backend's raw ``outputs`` on the first ``len(outputs)`` of ``ref.images`` with the stored
    fp32 ones (both calibrated). ``outputs`` may carry the features after the L outputs: with ``ood``
    (the checkpoint's scorer, cxrdx.model.ood) the verdicts on both sets of features are compared."""
    n, width = len(outputs), len(ref.names)
    outputs = np.asarray(outputs)
    feats, outputs = outputs[:, width:], outputs[:, :width]
    ood_flipped = None
    if ood is not None and ood.threshold is not None and ref.features is not None and feats.shape[1]:
        v32 = ood.score(ref.features[:n]) <= ood.threshold
        ood_flipped = float(np.mean((ood.score(feats) <= ood.threshold) != v32))
    ref = Reference(ref.images[:n], ref.outputs[:n], ref.labels[:n], ref.names)
    p32 = np.asarray(calibrate(ref.outputs), dtype=np.float64)
    p = np.asarray(calibrate(np.asarray(outputs)), dtype=np.float64)
    diff = float(np.abs(p - p32).max())
    flipped = None
    cols = [j for j, n in enumerate(ref.names) if thresholds and n in thresholds]
    if cols:
        t = np.array([thresholds[ref.names[j]] for j in cols])
        flipped = float(np.mean((p[:, cols] >= t) != (p32[:, cols] >= t)))
    auroc_diff = None
    a32, used = _mean_auroc(ref.labels, p32)
    if a32 is not None:
        from cxrdx.metrics.auroc import per_finding_auroc

        per = per_finding_auroc(ref.labels[:, used], p[:, used], [str(c) for c in used])
        auroc_diff = float(np.mean(list(per.values()))) - a32
    reasons = []
    if not diff <= REDUCED_MAX_ABS_DIFF:
        reasons.append(f"max |dp| {diff:.4f} > {REDUCED_MAX_ABS_DIFF}")
    if flipped is not None and flipped > REDUCED_MAX_CALLS_FLIPPED:
        reasons.append(f"calls flipped {flipped:.2%} > {REDUCED_MAX_CALLS_FLIPPED:.0%}")
    if auroc_diff is not None and abs(auroc_diff) > REDUCED_MAX_AUROC_DIFF:
        reasons.append(f"|AUROC diff| {abs(auroc_diff):.4f} > {REDUCED_MAX_AUROC_DIFF}")
    if ood_flipped is not None and ood_flipped > REDUCED_MAX_OOD_FLIPPED:
        reasons.append(f"OOD verdicts flipped {ood_flipped:.2%} > {REDUCED_MAX_OOD_FLIPPED:.0%}")
    return Check(len(ref.images), diff, flipped, auroc_diff, not reasons, "; ".join(reasons), ood_flipped)
