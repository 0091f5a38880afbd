"""Evaluate a checkpoint: predictions, AUROC with patient-level bootstrap CIs, thresholds, calibration, report.

Decisions (why):

- **AUROC** and its patient-level (cluster) bootstrap CI: ``cxrdx.metrics.auroc``.
- **Undefined classes** (no positives or no negatives in the evaluated set) are
  reported as undefined (``null`` in JSON, an em dash in HTML) and left out of
  the mean AUROC, which names them; they never turn the mean into NaN.
- **Thresholds** are chosen on validation data only (Youden's J by default, or the
  highest threshold that reaches ``--target-sensitivity``) and then applied to the
  test set. Without validation data no threshold is chosen, and the report says
  so: choosing them on the test set would make the test metrics optimistic.
  A prediction is positive when ``p >= threshold`` (the rule ``Predictor`` uses).
- **Calibration**: expected calibration error with 10 equal-width bins per class.
- **CheXNet column**: Rajpurkar et al. 2017 per-class AUROCs, labelled as a
  random-split reference (their split differs from the official patient-wise one).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrdx.data.cache import is_cache
from cxrdx.errors import ConfigError, DataError
from cxrdx.evaluation.chexnet import CHEXNET_AUROC, CHEXNET_LABEL
from cxrdx.evaluation.eval_set import EvalSet, load_eval_set, run_inference
from cxrdx.evaluation.report import write_report
from cxrdx.metrics.auroc import auroc_with_ci, mean_auroc
from cxrdx.metrics.calibration import ECE_BINS, expected_calibration_error
from cxrdx.metrics.thresholds import binary_metrics, choose_thresholds


def _nz(v: float | None, digits: int = 6) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), digits)


def compute_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    patients: Sequence,
    names: Sequence[str],
    thresholds: dict[str, float | None] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Per-class metrics dict (JSON-ready, None for undefined) and the mean AUROC over defined classes."""
    from sklearn.metrics import average_precision_score

    aucs = auroc_with_ci(y_true, probs, patients, names, n_boot=n_boot, seed=seed)
    used = [k for k, r in aucs.items() if r.defined]
    left_out = [k for k, r in aucs.items() if not r.defined]
    mean = mean_auroc({k: r.auroc for k, r in aucs.items()})
    classes: dict[str, dict] = {}
    for c, name in enumerate(names):
        y, s, r = y_true[:, c], probs[:, c], aucs[name]
        entry = {
            "n": int(len(y)),
            "n_pos": r.n_pos,
            "n_neg": r.n_neg,
            "prevalence": _nz(r.n_pos / len(y)) if len(y) else None,
            "auroc": _nz(r.auroc),
            "auroc_ci": [_nz(r.ci_low), _nz(r.ci_high)] if r.defined else None,
            "n_boot_valid": r.n_boot_valid,
            "average_precision": _nz(float(average_precision_score(y, s))) if r.n_pos else None,
            "ece": _nz(expected_calibration_error(y, s)),
            "chexnet_auroc": CHEXNET_AUROC.get(name),
            "threshold": None,
        }
        t = (thresholds or {}).get(name)
        if t is not None:
            entry["threshold"] = _nz(t, 8)
            entry["at_threshold"] = {
                k: (_nz(v) if isinstance(v, float) else v) for k, v in binary_metrics(y, s, t).items()
            }
        classes[name] = entry
    ref = [CHEXNET_AUROC[k] for k in used if k in CHEXNET_AUROC]
    return {
        "classes": classes,
        "mean_auroc": _nz(mean),
        "mean_auroc_classes": used,
        "undefined_classes": left_out,
        "chexnet_mean_same_classes": _nz(float(np.mean(ref))) if ref else None,
    }


@dataclass
class EvaluateConfig:
    weights: str
    data: str
    out: str
    images: str | None = None
    split: str = "test"
    val: str | None = None
    val_split: str = "val"
    val_images: str | None = None
    target_sensitivity: float | None = None  # None -> Youden's J
    tta: bool = False
    ensemble: list[str] = field(default_factory=list)
    n_boot: int = 1000
    seed: int = 0
    batch_size: int = 32
    device: str = "auto"
    write_thresholds: bool = True
    progress: bool = True


def _predictions_frame(es: EvalSet, pos: np.ndarray, probs: np.ndarray, spread: np.ndarray | None, names):
    import pandas as pd

    frame = pd.DataFrame({"image": es.table["image"].astype(str).to_numpy()[pos]})
    for c, name in enumerate(names):
        frame[name] = np.round(probs[:, c], 6)
    if spread is not None:
        for c, name in enumerate(names):
            frame[f"{name}_spread"] = np.round(spread[:, c], 6)
    frame["patient"] = es.table["patient"].astype(str).to_numpy()[pos]
    return frame


def evaluate(config: EvaluateConfig) -> dict:
    """Run the whole evaluation; returns the metrics dict that is also written to ``metrics.json``."""
    from cxrdx.device import choose_device
    from cxrdx.inference.predictor import Predictor
    from cxrdx.model.checkpoint import update_checkpoint_meta

    if config.n_boot < 0:
        raise ConfigError(f"--n-boot must be >= 0, got {config.n_boot}")
    if config.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {config.batch_size}")
    method = "youden" if config.target_sensitivity is None else "sensitivity"
    if method == "sensitivity" and not 0 < config.target_sensitivity <= 1:  # type: ignore[operator]
        raise ConfigError(f"--target-sensitivity must be in (0, 1], got {config.target_sensitivity}")
    device = choose_device(config.device)
    predictors = [Predictor.load(w, device=device) for w in [config.weights, *config.ensemble]]
    names = predictors[0].labels
    for w, p in zip(config.ensemble, predictors[1:], strict=True):
        if p.labels != names:
            raise ConfigError(f"--ensemble {w}: outputs {p.labels}, but {config.weights} outputs {names}")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    test = load_eval_set(
        config.data, config.split if is_cache(Path(config.data)) else None, config.images, names
    )
    val: EvalSet | None = None
    val_path = config.val or (config.data if is_cache(Path(config.data)) else None)
    if val_path is not None:
        val_is_cache = is_cache(Path(val_path))
        if val_is_cache and val_path == config.data and config.val_split == config.split:
            raise ConfigError(
                f"--val-split {config.val_split} is the test split: thresholds must not be chosen on the test data"
            )
        if not val_is_cache and config.val and Path(config.val).resolve() == Path(config.data).resolve():
            raise ConfigError(
                "--val is the same file as --data: thresholds must not be chosen on the test data"
            )
        try:
            val = load_eval_set(
                val_path,
                config.val_split if val_is_cache else None,
                config.val_images or config.images,
                names,
            )
        except DataError as exc:
            if config.val:  # asked for explicitly: a problem is an error
                raise
            print(
                f"cxrdx evaluate: no validation data ({exc}); thresholds will not be chosen", file=sys.stderr
            )

    probs, spread, pos = run_inference(predictors, test, config.tta, config.batch_size, config.progress)
    y_true = test.table.loc[pos, names].to_numpy().astype(np.int64)
    patients = test.table["patient"].astype(str).to_numpy()[pos]
    _predictions_frame(test, pos, probs, spread, names).to_csv(out / "predictions.csv", index=False)
    spread_kind = ""
    if spread is not None:
        spread_kind = (
            f"std across {len(predictors)} checkpoints"
            if len(predictors) > 1
            else "std across 2 TTA views (identity, flip)"
        )

    notes = list(test.notes[:20])
    thresholds: dict[str, float | None] | None = None
    val_classes = None
    th_info: dict = {"values": None, "method": None}
    if val is not None:
        v_probs, v_spread, v_pos = run_inference(
            predictors, val, config.tta, config.batch_size, config.progress
        )
        v_true = val.table.loc[v_pos, names].to_numpy().astype(np.int64)
        _predictions_frame(val, v_pos, v_probs, v_spread, names).to_csv(
            out / "val_predictions.csv", index=False
        )
        thresholds = choose_thresholds(v_true, v_probs, names, method, config.target_sensitivity or 0.9)
        method_text = (
            "Youden's J (max sensitivity + specificity \u2212 1)"
            if method == "youden"
            else f"the highest threshold with sensitivity \u2265 {config.target_sensitivity}"
        )
        th_info = {
            "values": thresholds,
            "method": method if method == "youden" else f"sensitivity>={config.target_sensitivity}",
            "method_text": method_text,
            "chosen_on": val.description,
            "n_val_images": int(len(v_pos)),
            "undefined": [k for k, v in thresholds.items() if v is None],
        }
        val_classes = {
            n: {
                "prevalence": float(v_true[:, c].mean()) if len(v_true) else None,
                "n_pos": int(v_true[:, c].sum()),
            }
            for c, n in enumerate(names)
        }
        shared = set(val.table["patient"].astype(str)) & set(patients)
        if shared:
            notes.append(
                f"{len(shared)} patient(s) appear in both the validation and the test data (patient leakage); "
                "the thresholds and test metrics are not independent"
            )
        notes += val.notes[:20]
    else:
        th_info["note"] = (
            "Thresholds were not chosen: no validation data was given (--val VAL_CSV, or a cache with a "
            f"'{config.val_split}' split). They are never chosen on the test data."
        )

    metrics = compute_metrics(y_true, probs, patients, names, thresholds, config.n_boot, config.seed)
    metrics = {
        "model": {
            "weights": str(config.weights),
            "architecture": predictors[0].meta.architecture,
            "ensemble": [str(config.weights), *map(str, config.ensemble)],
            "tta": bool(config.tta),
            "uncertainty": spread_kind or None,
        },
        "dataset": {
            "description": test.description,
            "n_images": int(len(pos)),
            "n_patients": int(len(set(patients))),
            "n_unreadable": int(len(test.table) - len(pos)),
        },
        **metrics,
        "thresholds": th_info,
        "bootstrap": {"unit": "patient", "n_boot": config.n_boot, "level": 0.95, "seed": config.seed},
        "calibration": {"bins": ECE_BINS, "binning": "equal-width on [0, 1]"},
        "chexnet_reference": {"label": CHEXNET_LABEL, "auroc": CHEXNET_AUROC},
        "notes": notes,
    }
    if thresholds is not None:
        chosen = {k: v for k, v in thresholds.items() if v is not None}
        sidecar = {
            "thresholds": chosen,
            "threshold_method": th_info["method"],
            "chosen_on": th_info["chosen_on"],
        }
        (out / "thresholds.json").write_text(json.dumps(sidecar, indent=2) + "\n")
        if config.write_thresholds and len(predictors) == 1:
            evaluation = {
                "auroc": {k: v["auroc"] for k, v in metrics["classes"].items()},
                "mean_auroc": metrics["mean_auroc"],
                "dataset": test.description,
                "n": int(len(pos)),
                "tta": bool(config.tta),
            }

            def change(meta) -> None:
                meta.thresholds = chosen
                meta.threshold_method = th_info["method"]
                meta.evaluation = evaluation

            update_checkpoint_meta(config.weights, change)
            metrics["thresholds"]["written_to"] = str(config.weights)
        elif len(predictors) > 1:
            metrics["notes"].append(
                "Ensemble thresholds apply to the ensemble's mean probability; they were written only to "
                "thresholds.json, not into any single checkpoint."
            )
    write_report(out, metrics, y_true, probs, names, spread, spread_kind, val_classes)
    return metrics
