"""`cxrdx calibrate`: fit a checkpoint's calibration on labelled validation data, into a new checkpoint.

What is fitted (``cxrdx.metrics.calibration``): method ``"prior+temperature"``, one
temperature per finding on top of the training prior shift log(w_pos / w_neg). The
prior comes from the checkpoint (``train`` stores it), else from the training
prevalence of the dataset its provenance names (older cxrdx checkpoints), else it is
fitted together with the temperature (Platt scaling: imported checkpoints, whose
training loss is unknown).

Decisions (why):

- Validation data only: calibrating on the test split would make the test
  calibration optimistic, so a cache's ``test`` split is refused.
- Existing thresholds (chosen by ``evaluate``, or an import's operating points) are
  moved onto the new scale (``map_thresholds``): the transform is monotone, so every
  call stays exactly the same (up to the TTA average when they were chosen with TTA).
- The input file is never rewritten unless ``--out`` names it.
- The rows are chosen as ``evaluate`` chooses them (``--views``, frontal by default, and
  ``--uncertain``), so a temperature is never fitted on films the model is not scored on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxrdx.data.cache import is_cache
from cxrdx.errors import ConfigError
from cxrdx.evaluation.config import CalibrateConfig
from cxrdx.evaluation.eval_set import load_eval_set, run_views
from cxrdx.evaluation.metrics_record import CalibrationRow, CalibrationSummary
from cxrdx.metrics.calibration import (
    ECE_BINS,
    calibration_table,
    combine_views,
    fit_calibration,
    map_thresholds,
    prevalence_calibration,
)

if TYPE_CHECKING:
    from cxrdx.inference.predictor import Predictor
    from cxrdx.model.checkpoint import CheckpointMeta


def _training_prevalence(meta: CheckpointMeta) -> dict | None:
    """Method "prior" from the training split of the cache a cxrdx checkpoint's provenance names, if readable."""
    from cxrdx.data.cache import open_cache
    from cxrdx.errors import CxrdxError

    prov = meta.provenance or {}
    dataset, split = prov.get("dataset"), (prov.get("config") or {}).get("train_split", "train")
    if not dataset or not is_cache(Path(dataset)):
        return None
    try:
        index = open_cache(Path(dataset)).index
    except (CxrdxError, OSError):
        return None
    rows = index[index["split"] == split] if "split" in index.columns else index.iloc[:0]
    if rows.empty or any(n not in rows.columns for n in meta.labels):
        return None
    prevalence = {n: float(np.nanmean(rows[n].to_numpy(dtype=np.float64))) for n in meta.labels}
    return prevalence_calibration(
        meta.labels, prevalence, f"training prevalence of {dataset} (split {split})"
    )


def known_prior(predictor: Predictor) -> dict | None:
    """A prior shift known from training (stored, or recomputed from the training data), else None."""
    cal = predictor.calibration
    if cal["method"] != "none" and not str(cal.get("fitted_on", {}).get("prior", "")).startswith("fitted"):
        return cal
    return _training_prevalence(predictor.meta)


def fit_for(predictor: Predictor, views: np.ndarray, y: np.ndarray, description: str, by: str) -> dict:
    """prior+temperature fitted on (V, N, L) raw validation outputs (every view a sample) and (N, L) labels."""
    n_views, n, n_labels = views.shape
    fitted_on = {"by": by, "data": description, "n_images": int(n), "tta": n_views > 1}
    return fit_calibration(
        np.tile(y, (n_views, 1)),
        views.reshape(-1, n_labels),
        predictor.labels,
        known_prior(predictor),
        fitted_on,
    )


def calibration_summary(
    y: np.ndarray,
    raw: np.ndarray,
    probs: np.ndarray,
    names: Sequence[str],
    cals: Sequence[dict],
    fitted: bool,
) -> CalibrationSummary:
    """metrics.json's "calibration": per finding ECE and mean predicted vs prevalence, before and after."""
    table = calibration_table(y, raw, probs, names)
    rows = [r for r in table.values() if r["prevalence"] is not None]

    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows if r[key] is not None]
        return float(np.mean(vals)) if vals else None

    gap = {
        when: float(np.mean([abs(r[f"mean_predicted_{when}"] - r["prevalence"]) for r in rows]))
        if rows
        else None
        for when in ("before", "after")
    }
    return CalibrationSummary(
        bins=ECE_BINS,
        binning="equal-width on [0, 1]",
        method=cals[0]["method"] if len(cals) == 1 else tuple(c["method"] for c in cals),
        fitted_here=bool(fitted),
        # per finding the calibration applied ("none": a score, not fitted); the first checkpoint's
        per_finding_method=dict(cals[0].get("per_finding") or {}) if cals and cals[0] else {},
        fitted_on=cals[0].get("fitted_on", {}) if len(cals) == 1 else None,
        before="raw network scores (sigmoid of the logits), no calibration",
        per_finding={n: CalibrationRow(**r) for n, r in table.items()},
        mean_ece_before=mean("ece_before"),
        mean_ece_after=mean("ece_after"),
        mean_abs_gap_before=gap["before"],
        mean_abs_gap_after=gap["after"],
    )


def calibrate(config: CalibrateConfig) -> dict:
    """Fit, move the thresholds, write ``config.out``; returns what was done and the (in-sample) figures."""
    from cxrdx.device import choose_device
    from cxrdx.inference.predictor import Predictor
    from cxrdx.model.checkpoint import update_checkpoint_meta

    if config.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {config.batch_size}")
    if not str(config.out).endswith(".safetensors"):
        raise ConfigError(f"--out {config.out}: the new checkpoint's name must end in .safetensors")
    cache = is_cache(Path(config.data))
    if cache and config.split == "test":
        raise ConfigError("--split test: calibrate on validation data; the test split must stay unseen")
    predictor = Predictor.load(config.weights, device=choose_device(config.device))
    names = predictor.labels
    views = None if config.views in (None, "all") else config.views
    es = load_eval_set(
        config.data,
        config.split if cache else None,
        config.images,
        names,
        views=views,
        uncertain=config.uncertain,
    )
    views, pos = run_views([predictor], es, config.tta, config.batch_size, config.progress)
    y = es.table.loc[pos].reindex(columns=names).to_numpy(dtype=np.float64)  # NaN: unlabelled
    old = predictor.calibration
    new = fit_for(predictor, views[0], y, es.description, "cxrdx calibrate")
    before = views[0].mean(0)
    after = combine_views(views[0], new, names)[0]
    summary = calibration_summary(y, before, after, names, [new], True)
    ood = None
    # an import (no reference), or a first-format one (final features only, model/ood.py): fit it on this data
    if predictor.ood is None or getattr(predictor.ood, "trailing", False):
        from cxrdx.evaluation.ood_reference import fit_ood_reference

        ood = fit_ood_reference(predictor, es, config.data, config.split if cache else None, views)
    meta = predictor.meta
    mapped = None
    if meta.thresholds:
        mapped = map_thresholds(meta.thresholds, old, new, names)

    def change(m: CheckpointMeta) -> None:
        m.calibration = new
        if ood is not None:
            m.ood = ood
        if mapped is not None:
            m.thresholds = mapped
            m.threshold_info = {
                **(m.threshold_info or {}),
                "calibration": new["method"],
                "mapped": f"moved from the {old['method']!r} scale by cxrdx calibrate (same calls)",
            }

    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    update_checkpoint_meta(config.weights, change, out=config.out)
    return {
        "out": str(config.out),
        "data": es.description,
        "n_images": int(len(pos)),
        "views_dropped": dict(es.views_dropped),
        "previous": old["method"],
        "calibration": new,
        "summary": summary,
        "thresholds_mapped": mapped is not None,
        "ood": None if ood is None else {"threshold": ood["threshold"], "fitted_on": ood["fitted_on"]},
        "thresholds_chosen_with_tta": bool((meta.threshold_info or {}).get("tta")),
    }
