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
  They are chosen on the calibrated scale (the checkpoint's calibration, or one fitted
  here with ``--calibrate``), and recorded with how they were chosen (split, TTA,
  calibration, positives per finding).
- **The input checkpoint is not rewritten** unless asked: ``--write-thresholds``
  (in place) or ``--out-weights NEW`` (a new file, same tensors). Otherwise the
  thresholds go to ``thresholds.json`` only, so imported operating points (xrv) stay.
- **Calibration**: ECE (10 equal-width bins per class) and mean predicted probability
  vs prevalence, before (raw scores) and after calibration (``cxrdx.metrics.calibration``).
- **CheXNet column**: Rajpurkar et al. 2017 per-class AUROCs, labelled as a
  random-split reference (their split differs from the official patient-wise one).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxrdx.data.cache import is_cache
from cxrdx.data.leakage import check_patient_overlap
from cxrdx.data.origin import Origin
from cxrdx.errors import ConfigError, DataError
from cxrdx.evaluation.calibrate import calibration_summary, fit_for
from cxrdx.evaluation.chexnet import CHEXNET_AUROC, CHEXNET_LABEL
from cxrdx.evaluation.config import EvaluateConfig
from cxrdx.evaluation.eval_set import EvalSet, combine, load_eval_set, run_views
from cxrdx.evaluation.external import at_thresholds, labelled_summary, threshold_shift
from cxrdx.evaluation.metrics_record import (
    AtThreshold,
    Bootstrap,
    ChexnetReference,
    DatasetInfo,
    FindingMetrics,
    LabelPolicy,
    MetricsRecord,
    ModelCard,
    ModelInfo,
    SourceThresholds,
    Thresholds,
)
from cxrdx.evaluation.report import write_outputs, write_plots
from cxrdx.metrics.auroc import auroc_with_ci, mean_auroc, mean_auroc_ci
from cxrdx.metrics.calibration import expected_calibration_error
from cxrdx.metrics.degenerate import class_flags
from cxrdx.metrics.thresholds import binary_metrics, choose_thresholds
from cxrdx.model.card import has_evaluation, training_card
from cxrdx.reporter import Reporter, reporter_or_default


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
) -> MetricsRecord:
    """Per-finding figures (None for undefined) and the mean AUROC over defined findings: the record's
    ``classes`` and mean row; ``evaluate`` fills in the rest."""
    from cxrdx.metrics.curves import average_precision

    aucs = auroc_with_ci(y_true, probs, patients, names, n_boot=n_boot, seed=seed)
    used = [k for k, r in aucs.items() if r.defined]
    left_out = [k for k, r in aucs.items() if not r.defined]
    mean = mean_auroc({k: r.auroc for k, r in aucs.items()})
    classes: dict[str, FindingMetrics] = {}
    for c, name in enumerate(names):
        labelled = ~np.isnan(np.asarray(y_true[:, c], dtype=np.float64))  # NaN = unlabelled: left out
        y, s, r = np.asarray(y_true[labelled, c]).astype(np.int64), probs[labelled, c], aucs[name]
        t = (thresholds or {}).get(name)
        at = None
        if t is not None:
            at = AtThreshold(
                **{k: (_nz(v) if isinstance(v, float) else v) for k, v in binary_metrics(y, s, t).items()}
            )
        classes[name] = FindingMetrics(
            n=int(len(y)),
            n_pos=r.n_pos,
            n_neg=r.n_neg,
            prevalence=_nz(r.n_pos / len(y)) if len(y) else None,
            auroc=_nz(r.auroc),
            auroc_ci=(_nz(r.ci_low), _nz(r.ci_high)) if r.defined else None,
            n_boot_valid=r.n_boot_valid,
            average_precision=_nz(average_precision(y, s)) if r.n_pos else None,
            ece=_nz(expected_calibration_error(y, s)),
            chexnet_auroc=CHEXNET_AUROC.get(name),
            threshold=None if t is None else _nz(t, 8),
            at_threshold=at,
        )
    ref = [CHEXNET_AUROC[k] for k in used if k in CHEXNET_AUROC]
    return MetricsRecord(
        classes=classes,
        mean_auroc=_nz(mean),
        mean_auroc_ci=tuple(_nz(v) for v in mean_auroc_ci(aucs)) if n_boot else None,
        mean_auroc_classes=tuple(used),
        undefined_classes=tuple(left_out),
        chexnet_mean_same_classes=_nz(float(np.mean(ref))) if ref else None,
    )


def _predictions_frame(es: EvalSet, pos: np.ndarray, probs: np.ndarray, spread: np.ndarray | None, names):
    import pandas as pd

    from cxrdx.spreadsheet import safe_cell

    # ids and patients are text from the label table: a spreadsheet must not run them as formulas
    frame = pd.DataFrame({"image": [safe_cell(x) for x in es.table["image"].astype(str).to_numpy()[pos]]})
    for c, name in enumerate(names):
        frame[name] = np.round(probs[:, c], 6)
    if spread is not None:
        for c, name in enumerate(names):
            frame[f"{name}_spread"] = np.round(spread[:, c], 6)
    frame["patient"] = [safe_cell(x) for x in es.table["patient"].astype(str).to_numpy()[pos]]
    return frame


def evaluate(config: EvaluateConfig, reporter: Reporter | None = None) -> MetricsRecord:
    """Run the whole evaluation; returns the record that is also written to ``metrics.json``."""
    from cxrdx.device import choose_device
    from cxrdx.inference.predictor import Predictor

    if config.n_boot < 0:
        raise ConfigError(f"--n-boot must be >= 0, got {config.n_boot}")
    if config.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {config.batch_size}")
    method = "youden" if config.target_sensitivity is None else "sensitivity"
    if method == "sensitivity" and not 0 < config.target_sensitivity <= 1:  # type: ignore[operator]
        raise ConfigError(f"--target-sensitivity must be in (0, 1], got {config.target_sensitivity}")
    if config.ensemble and (config.calibrate or config.write_thresholds or config.out_weights):
        raise ConfigError(
            "--calibrate, --write-thresholds and --out-weights work on one checkpoint, not an --ensemble "
            "(its thresholds are written to thresholds.json)"
        )
    device = choose_device(config.device)
    predictors = [Predictor.load(w, device=device) for w in [config.weights, *config.ensemble]]
    names = predictors[0].labels
    for w, p in zip(config.ensemble, predictors[1:], strict=True):
        if p.labels != names:
            raise ConfigError(f"--ensemble {w}: outputs {p.labels}, but {config.weights} outputs {names}")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    labels_how = {
        "views": config.views,
        "uncertain": config.uncertain,
        "blank": config.blank,
        "dataset": config.dataset,
    }
    test = load_eval_set(
        config.data, config.split if is_cache(Path(config.data)) else None, config.images, names, **labels_how
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
                **labels_how,
            )
        except DataError as exc:
            if config.val:  # asked for explicitly: a problem is an error
                raise
            reporter_or_default(reporter, "evaluate").note(
                f"no validation data ({exc}); thresholds will not be chosen"
            )

    leakage = None  # refused before any inference unless allowed
    if val is not None:
        leakage = check_patient_overlap(
            {"validation": val.table, "test": test.table},
            allow=config.allow_patient_overlap,
            source=f"{val.description} / {test.description}",
        )
    views, pos = run_views(predictors, test, config.tta, config.batch_size, config.progress)
    v_views = v_pos = None
    if val is not None:
        v_views, v_pos = run_views(predictors, val, config.tta, config.batch_size, config.progress)
    cals, fitted = _calibrations(config, predictors, val, v_views, v_pos, names)
    probs, spread = combine(predictors, views, cals)
    raw = combine(predictors, views, [None] * len(predictors))[0]  # before calibration
    # partial labels: score only the outputs the test set labels (the rest: the record's ``skipped``, external.py)
    keep = [c for c, n in enumerate(names) if n not in test.skipped]
    probs, raw = probs[:, keep], raw[:, keep]
    spread = None if spread is None else spread[:, keep]
    names = [names[c] for c in keep]
    y_true = test.table.loc[pos, names].to_numpy(dtype=np.float64)  # 1 / 0 / NaN (unlabelled)
    patients = test.table["patient"].astype(str).to_numpy()[pos]
    _predictions_frame(test, pos, probs, spread, names).to_csv(
        out / "predictions.csv", index=False, quoting=csv.QUOTE_NONNUMERIC
    )
    spread_kind = ""
    if spread is not None:
        spread_kind = (
            f"std across {len(predictors)} checkpoints"
            if len(predictors) > 1
            else "std across 2 TTA views (identity, flip)"
        )

    notes = list(test.notes[:20])
    dropped = test.views_dropped
    if dropped:
        shown = ", ".join(f"{n} {v or '(none)'}" for v, n in dropped.items())
        notes.append(f"views not evaluated (--views {config.views}): {shown}")
    thresholds: dict[str, float | None] | None = None
    val_classes = None
    th_info = Thresholds(
        note=(
            "Thresholds were not chosen: no validation data was given (--val VAL_CSV, or a cache with a "
            f"'{config.val_split}' split). They are never chosen on the test data."
        )
    )
    val_at: dict = {}
    if val is not None:
        v_probs, v_spread = combine(predictors, v_views, cals)
        v_probs, v_spread = v_probs[:, keep], (None if v_spread is None else v_spread[:, keep])
        v_true = val.table.loc[v_pos, names].to_numpy(dtype=np.float64)  # NaN where val does not label
        _predictions_frame(val, v_pos, v_probs, v_spread, names).to_csv(
            out / "val_predictions.csv",
            index=False,
            quoting=csv.QUOTE_NONNUMERIC,  # text quoted: a \r stays in its cell
        )
        thresholds = choose_thresholds(v_true, v_probs, names, method, config.target_sensitivity or 0.9)
        method_text = (
            "Youden's J (max sensitivity + specificity \u2212 1)"
            if method == "youden"
            else f"the highest threshold with sensitivity \u2265 {config.target_sensitivity}"
        )
        val_at = at_thresholds(v_true, v_probs, names, thresholds)
        th_info = Thresholds(
            values=thresholds,
            method=method if method == "youden" else f"sensitivity>={config.target_sensitivity}",
            method_text=method_text,
            chosen_on=val.description,
            n_val_images=int(len(v_pos)),
            undefined=tuple(k for k, v in thresholds.items() if v is None),
            # how they were chosen (stored as the checkpoint's threshold_info; predict checks tta/calibration)
            split=val.description,
            tta=bool(config.tta),
            calibration=cals[0]["method"] if cals[0] else "none",
            positives={n: int((v_true[:, c] == 1).sum()) for c, n in enumerate(names)},
            negatives={n: int((v_true[:, c] == 0).sum()) for c, n in enumerate(names)},
            val_at_threshold={n: AtThreshold(**row) for n, row in val_at.items()},
            chosen_by="cxrdx evaluate",
        )
        val_classes = {
            n: {
                "prevalence": float(np.nanmean(v_true[:, c])) if (~np.isnan(v_true[:, c])).any() else None,
                "n_pos": int((v_true[:, c] == 1).sum()),
            }
            for c, n in enumerate(names)
        }
        if leakage:
            notes.append(f"WARNING: {leakage}; the thresholds and test metrics are not independent")
        notes += val.notes[:20]

    found = compute_metrics(y_true, probs, patients, names, thresholds, config.n_boot, config.seed)
    calibration = calibration_summary(y_true, raw, probs, names, cals, fitted)
    classes = {  # the calibration's figures beside each finding's
        name: dataclasses.replace(
            c,
            ece_uncalibrated=_nz(row.ece_before),
            mean_predicted=_nz(row.mean_predicted_after),
            mean_predicted_uncalibrated=_nz(row.mean_predicted_before),
        )
        if (row := calibration.per_finding.get(name)) is not None
        else c
        for name, c in found.classes.items()
    }
    shift = source = None
    if thresholds is not None:  # the validation set's thresholds moved to this one: sens/spec shift
        shift = threshold_shift(val_at, at_thresholds(y_true, probs, names, thresholds))
    elif predictors[0].meta.thresholds:  # no validation here: the checkpoint's (source) thresholds
        src = predictors[0].meta
        source = SourceThresholds(
            thresholds={n: t for n, t in src.thresholds.items() if n in names},
            method=src.threshold_method,
            chosen_on=(src.threshold_info or {}).get("split"),
            shift=threshold_shift(
                (src.threshold_info or {}).get("val_at_threshold") or {},
                at_thresholds(y_true, probs, names, src.thresholds),
            ),
        )
    # numbers that mean nothing, flagged (metrics/degenerate.py): the report shows them, the checkpoint keeps them
    flags = class_flags({n: c.to_json() for n, c in classes.items()}, cals[0])
    metrics = dataclasses.replace(
        found,
        model=ModelInfo(
            weights=str(config.weights),
            architecture=predictors[0].meta.architecture,
            ensemble=(str(config.weights), *map(str, config.ensemble)),
            tta=bool(config.tta),
            uncertainty=spread_kind or None,
            card=ModelCard.from_json(
                training_card(predictors[0].meta)
            ),  # what it was trained on (model.card)
            evaluated_before=has_evaluation(predictors[0].meta),
        ),
        dataset=DatasetInfo(
            description=test.description,
            n_images=int(len(pos)),
            n_patients=int(len(set(patients))),
            n_unreadable=int(len(test.table) - len(pos)),
            origin=test.origin or Origin(test.description, "unknown"),
            label_policy=LabelPolicy(**labels_how),  # how the labels were read
        ),
        classes=classes,
        skipped=dict(test.skipped),  # model outputs this dataset does not label, and why
        labelled=labelled_summary(y_true, names),
        thresholds=th_info,
        bootstrap=Bootstrap(unit="patient", n_boot=config.n_boot, level=0.95, seed=config.seed),
        calibration=calibration,
        chexnet_reference=ChexnetReference(label=CHEXNET_LABEL, auroc=dict(CHEXNET_AUROC)),
        threshold_shift=shift,
        source_thresholds=source,
        flags={n: tuple(reasons) for n, reasons in flags.items()},
    )
    if thresholds is not None:
        chosen = {k: v for k, v in thresholds.items() if v is not None}
        sidecar = {
            "thresholds": chosen,
            "threshold_method": th_info.method,
            "chosen_on": th_info.chosen_on,
        }
        (out / "thresholds.json").write_text(json.dumps(sidecar, indent=2) + "\n")
        if config.write_thresholds or config.out_weights:
            dest, replaced = _write_checkpoint(
                config, predictors[0], metrics, chosen, val_at, cals[0] if fitted else None, test, pos
            )
            metrics = dataclasses.replace(
                metrics, thresholds=dataclasses.replace(th_info, written_to=str(dest))
            )
            if replaced:
                notes.append(f"The checkpoint's previous thresholds ({replaced}) were replaced in {dest}.")
        elif len(predictors) > 1:
            notes.append(
                "Ensemble thresholds apply to the ensemble's mean probability; they were written only to "
                "thresholds.json, not into any single checkpoint."
            )
        else:
            notes.append(
                "The thresholds"
                + (" and the calibration fitted here" if fitted else "")
                + " were not stored in the checkpoint (thresholds.json only): pass --out-weights NEW.safetensors "
                "(or --write-thresholds to update --weights in place) to use them in predict."
            )
    elif config.write_thresholds or config.out_weights:
        notes.append("Nothing was written into a checkpoint: no thresholds were chosen.")
    metrics = dataclasses.replace(metrics, notes=tuple(notes))
    plots = write_plots(out, metrics, y_true, probs, names, spread, spread_kind, val_classes, raw=raw)
    metrics = dataclasses.replace(metrics, plots=tuple(plots))
    write_outputs(out, metrics)
    return metrics


def _calibrations(config, predictors, val, v_views, v_pos, names) -> tuple[list[dict], bool]:
    """Each predictor's calibration; with ``--calibrate`` the first one's is fitted on validation here."""
    cals = [p.calibration for p in predictors]
    if not config.calibrate:
        return cals, False
    if val is None:
        raise ConfigError("--calibrate needs validation data (--val VAL_CSV, or a cache with a val split)")
    v_true = val.table.loc[v_pos].reindex(columns=names).to_numpy(dtype=np.float64)  # NaN: unlabelled
    return [fit_for(predictors[0], v_views[0], v_true, val.description, "cxrdx evaluate --calibrate")], True


def _write_checkpoint(
    config, predictor, metrics: MetricsRecord, chosen, val_at, calibration, test, pos
) -> tuple[str, str | None]:
    """Thresholds (+ provenance, + a calibration fitted here) into --out-weights NEW, or --weights in place;
    returns where, and the method of the thresholds it replaced (None: it had none)."""
    from cxrdx.model.checkpoint import update_checkpoint_meta

    dest = config.out_weights or config.weights
    th = metrics.thresholds
    assert th is not None
    evaluation = {
        "auroc": {k: v.auroc for k, v in metrics.classes.items()},
        "mean_auroc": metrics.mean_auroc,
        "auroc_ci": {k: None if v.auroc_ci is None else list(v.auroc_ci) for k, v in metrics.classes.items()},
        "mean_auroc_ci": None if metrics.mean_auroc_ci is None else list(metrics.mean_auroc_ci),
        "flags": {k: list(v) for k, v in metrics.flags.items()},  # degenerate results, shown by the app
        "dataset": test.description,
        "n": int(len(pos)),
        "tta": bool(config.tta),
    }
    info = {
        "method": th.method,
        "split": th.split,
        "tta": th.tta,
        "calibration": th.calibration,
        "positives": th.positives,
        "negatives": th.negatives,
        "chosen_by": th.chosen_by,
        "val_at_threshold": val_at,
    }
    replaced = predictor.meta.thresholds and predictor.meta.threshold_method

    def change(meta) -> None:
        meta.thresholds = chosen
        meta.threshold_method = th.method
        meta.threshold_info = {**info, "n_images": th.n_val_images}
        meta.evaluation = evaluation
        if calibration is not None:
            meta.calibration = calibration

    update_checkpoint_meta(config.weights, change, out=dest)
    return str(dest), replaced or None
