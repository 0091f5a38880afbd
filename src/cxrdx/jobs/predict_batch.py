"""The work of the predict job (``cxrdx.jobs.predict``): findings for many images, streamed, sharded, resumable.

It collects the images, takes this process's shard, loads a Predictor (ONNX where it can: on
that path neither torch nor MONAI is imported), measures batch size and threads once per
machine and model (autotune), skips what ``--resume`` finds done, streams csv/jsonl rows per
batch, merges the shards' parts when the last one finishes and returns a PredictSummary for
the CLI to print. The dicom/fhir result folder (cxrdx.interop) is passed in by the job.
Heavy at import: ``cxrdx.jobs.predict`` holds the light Config and imports this inside ``run``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrdx.device import available_threads, choose_device
from cxrdx.errors import ConfigError, CxrdxError
from cxrdx.files import atomic_write_text
from cxrdx.inference import choose, shards
from cxrdx.inference.formats import (
    NO_THRESHOLDS_NOTE,
    PARTLY_CALIBRATED_NOTE,
    UNCALIBRATED_NOTE,
    collect_images,
    format_csv,
    format_json,
    format_table,
    unique_stems,
    write_heatmaps,
)
from cxrdx.inference.prediction import Prediction
from cxrdx.inference.predictor import Predictor
from cxrdx.inference.stream import STREAM_FORMATS, ResultStream, read_done
from cxrdx.model.card import banners
from cxrdx.reporter import Reporter, reporter_or_default
from cxrdx.settings import BATCH_SIZE as DEFAULT_BATCH

FOLDER_FORMATS = ("dicom", "fhir")  # cxrdx.interop.result_files.FOLDER_FORMATS
MAX_FAILURES_SHOWN = 20  # with --out, failures are also listed on stderr, up to this many
PROGRESS_MIN_IMAGES = 6  # a progress bar for more than a handful of images
AUTOTUNE_MIN_IMAGES = 64  # fewer images than this do not pay for measuring (cached settings are still used)
# --backend auto with a checkpoint not yet exported to ONNX: up to this many images run on PyTorch
# while the export is made in the background (it costs more than they do); more wait for it
FIRST_CALL_TORCH_MAX = 16


@dataclass
class PredictSummary:
    """What the job did, for the CLI to print."""

    ok: int
    failed: int
    ood: int  # images out of distribution
    failures: list[Prediction]  # the first MAX_FAILURES_SHOWN failed images
    target: str | None  # the file written (this shard's part with several shards)
    n_shards: int
    merged: bool  # the last shard to finish merged all parts into --out
    backend: str
    heat_dir: Path | None
    backend_record: str | None = None  # how the backend was chosen and, for bf16/int8, its reference check
    text: str | None = None  # table/json/csv without --out: the output, for stdout
    written: list[Path] | None = None  # dicom/fhir: the files written
    warnings: list[str] = field(default_factory=list)  # the model card's banners (not in a table)
    notes: list[str] = field(default_factory=list)  # no thresholds, uncalibrated (not in a table)


def wants_torch(config) -> bool:
    """--heatmaps runs Grad-CAM on the PyTorch network."""
    return bool(config.heatmaps) or config.format == "dicom"  # dicom: secondary captures


def predict_job(
    config,
    reporter: Reporter | None = None,
    result_folder: Callable[[str, str, Predictor, str], Any] | None = None,
    check_inputs: Callable[[Sequence[Path]], None] | None = None,
) -> PredictSummary:
    """Run ``cxrdx predict``; the output is written (--out) or returned in ``text``.

    ``reporter`` gets the lines to show while it runs (threshold warnings, autotune, --resume).
    ``result_folder(out, format, predictor, weights)`` makes the dicom/fhir writer
    (cxrdx.interop.result_files.ResultFolder) and ``check_inputs(files)`` checks the inputs
    of --format dicom before any work.
    """
    reporter = reporter_or_default(reporter, "predict")
    log = reporter.note
    if config.workers is not None and config.workers < 0:
        raise ConfigError(f"`workers` must be 0 or more, got {config.workers}")
    folder_out = config.format in FOLDER_FORMATS
    if folder_out and not config.out:
        raise ConfigError(
            f"`format` {config.format} writes files: give `out` DIR, the folder to write them in"
        )
    if config.out and Path(config.out).is_dir() and not folder_out:
        raise ConfigError(f"`out` {config.out}: is a folder; give a file name")
    if config.out and not folder_out:  # fail before the work, not after it
        try:
            Path(config.out).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"`out` {config.out}: its folder cannot be created ({exc.strerror or exc})"
            ) from None
    if folder_out and result_folder is None:
        raise ValueError(f"--format {config.format}: predict_job needs result_folder")
    shard, n_shards = shards.parse_shard(config.shard) if config.shard else shards.shard_from_env()
    streamed = config.format in STREAM_FORMATS
    if (config.resume or n_shards > 1) and not (streamed and config.out):
        what = "`resume`" if config.resume else f"shard {shard}/{n_shards}"
        raise ConfigError(f"{what} needs `out` FILE and `format` csv or jsonl")
    files, errors = collect_images(config.paths, config.recursive)
    if config.format == "dicom" and check_inputs is not None:
        check_inputs(files)  # PNG/JPEG have no study to put DICOM results in: say so up front
    if n_shards > 1:  # a slice of the sorted list; file names for heatmaps are made over all of it
        ordered = sorted(files, key=str)
        stems = dict(zip(ordered, unique_stems([str(f) for f in ordered]), strict=True))
        files = shards.share(ordered, shard, n_shards)
        errors = errors if shard == 0 else []
    else:
        stems = dict(zip(files, unique_stems([str(f) for f in files]), strict=True))
    # torchrun starts LOCAL_WORLD_SIZE processes on this machine: they share its cores
    local = 1 if config.shard else max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    threads = max(1, available_threads() // local)
    workers = config.workers if config.workers is not None or local == 1 else max(1, threads - 1)
    device = "cpu" if config.device == "cpu" else choose_device(config.device)
    backend = config.backend
    fp32 = config.precision in ("auto", "fp32")
    if fp32 and backend == "auto" and str(device) == "cpu" and len(files) <= FIRST_CALL_TORCH_MAX:
        from cxrdx.inference import export

        if Path(config.weights).is_file() and not export.is_exported(config.weights):
            # a new checkpoint and a few images: PyTorch now, the ONNX export in the background
            backend = "torch"
            export.export_in_background(config.weights)
    precision = config.precision
    if config.autotune and str(device) == "cpu":  # the choice cached for this machine, opened at once
        backend, precision = choose.load_args(config.weights, backend, precision, threads, len(files))
    predictor = Predictor.load(
        config.weights, device=device, backend=backend, threads=threads, precision=precision
    )
    for note in predictor.threshold_notes(config.tta):  # e.g. thresholds chosen with TTA, applied without
        reporter.warn(note)
    if predictor.session is None or wants_torch(config):
        import torch

        torch.set_num_threads(threads)
    heat_dir = Path(config.heatmaps) if config.heatmaps else None
    if heat_dir is not None:
        heat_dir.mkdir(parents=True, exist_ok=True)
    batch_size = DEFAULT_BATCH if config.batch_size is None else config.batch_size
    tuned = None
    if predictor.session is not None and config.autotune:
        tuned = _autotune(predictor, config, files, threads, log)
        if tuned is not None:
            batch_size = tuned.batch_size if config.batch_size is None else batch_size
            workers = tuned.workers if config.workers is None else workers
    if predictor.precision.startswith("int8"):
        log(_int8_line(predictor))
    if heat_dir is not None:  # after autotune, which may have replaced the session
        from cxrdx.inference.heatmaps import capture_maps

        capture_maps(predictor)  # the heatmaps come from the predictions' own passes
    target = shards.part_path(config.out, shard, n_shards) if n_shards > 1 else config.out
    stream = None
    if streamed:
        stream = ResultStream(
            target, config.format, predictor.labels, predictor.thresholds, config.tta, resume=config.resume
        )
    done = set(stream.done) if stream else set()
    if n_shards > 1:
        shards.clear_done(Path(target))
        if config.resume and Path(config.out).is_file():  # an earlier merge: its rows are kept
            done |= read_done(Path(config.out), config.format, stream.columns)[0]
    todo = [f for f in files if str(f) not in done]
    errors = [e for e in errors if e.source not in done]
    results: list[Prediction] = []  # table and json only: csv and jsonl keep nothing
    failures: list[Prediction] = []  # the first few, for stderr
    counts = {"ok": 0, "failed": 0, "ood": 0}
    folder = result_folder(config.out, config.format, predictor, config.weights) if folder_out else None

    def emit(pred: Prediction) -> None:
        if folder is not None:
            folder.add(pred)  # a result that cannot be made turns the row into an error
        counts["ok" if pred.ok else "failed"] += 1
        counts["ood"] += pred.in_distribution is False
        if not pred.ok and len(failures) < MAX_FAILURES_SHOWN:
            failures.append(pred)
        if stream is not None:
            stream.add(pred)
        else:
            results.append(pred)

    if done:
        log(f"--resume: {len(files) - len(todo)} image(s) already in {target}")
    from tqdm import tqdm

    bar = tqdm(
        total=len(todo),
        desc="predict" if n_shards == 1 else f"predict {shard}/{n_shards}",
        unit="img",
        file=sys.stderr,
        disable=not reporter.bars or len(todo) < PROGRESS_MIN_IMAGES or (not config.shard and shard > 0),
    )
    with bar, stream or contextlib.nullcontext():
        for pred in errors:
            emit(pred)
        it = predictor.iter_predict(todo, batch_size=batch_size, tta=config.tta, workers=workers)
        for k, pred in enumerate(it):
            if heat_dir is not None and pred.ok:
                try:
                    write_heatmaps(predictor, pred, todo[k], heat_dir, stems[todo[k]])
                except CxrdxError as exc:
                    pred.warnings.append(f"heatmaps not written: {exc}")
            emit(pred)
            if stream is not None and (k + 1) % batch_size == 0:
                stream.flush()  # one batch: written, flushed, fsync'ed
            bar.update(1)
    merged = False
    if n_shards > 1:
        shards.mark_done(Path(target), counts["ok"] + counts["failed"], resumed_from_out=config.resume)
        merged = shards.merge_if_complete(config.out, n_shards, config.format)
    summary = PredictSummary(
        ok=counts["ok"],
        failed=counts["failed"],
        ood=counts["ood"],
        failures=failures,
        target=target,
        n_shards=n_shards,
        merged=merged,
        backend=predictor.backend,
        heat_dir=heat_dir,
        backend_record=choose.record(tuned),
    )
    if folder is not None:
        summary.written = list(folder.written)
    elif not streamed:
        if config.format == "json":
            text = format_json(results)
        elif config.format == "csv":
            text = format_csv(results, predictor.labels, predictor.thresholds)
        else:
            text = format_table(
                results,
                predictor.thresholds,
                predictor.ood and predictor.ood.threshold,
                banners=banners(predictor.meta),
            )
        if config.out:
            atomic_write_text(config.out, text)
        else:
            summary.text = text
    if config.format != "table":  # the table carries them; csv/json/jsonl stay machine-readable on stdout
        summary.warnings = list(banners(predictor.meta))
        if not predictor.thresholds:
            summary.notes.append(NO_THRESHOLDS_NOTE)
        if not predictor.calibrated:
            summary.notes.append(UNCALIBRATED_NOTE)
        raw = [n for n, m in predictor.calibration["per_finding"].items() if m == "none"]
        if predictor.calibrated and raw:  # some findings could not be calibrated: scores, per finding
            summary.notes.append(PARTLY_CALIBRATED_NOTE.format(names=", ".join(raw)))
    return summary


def _int8_line(predictor: Predictor) -> str:
    """What the int8 model was checked on (its record from cxrdx quantize), for the log."""
    from cxrdx.inference.int8 import int8_record

    r = int8_record(predictor.session) or {}
    if "drop" not in r:
        return f"{predictor.precision} model (no record of its check)"
    calls = "" if r.get("calls_changed") is None else f", calls changed {r['calls_changed']:.2%}"
    ood = r.get("ood") or {}
    if ood.get("threshold_int8") is not None:  # the OOD threshold refitted for int8's features (quantize.py)
        calls += (
            f"; OOD scores {ood['median_ratio_minus_1']:+.1%} vs fp32, threshold refitted "
            f"{ood['threshold_fp32']:.3f} -> {ood['threshold_int8']:.3f} (verdicts changed {ood['verdicts_changed']:.2%})"
        )
    return (
        f"{predictor.precision} model: checked on {r['n_check']} validation images, mean AUROC "
        f"{r['mean_fp32']:.4f} (fp32) -> {r['mean_int8']:.4f}, largest |p - p fp32| {r['max_abs_diff']:.4f}{calls}"
    )


def _autotune(predictor: Predictor, config, files: list, cores: int, log: Callable[[str], None]):
    """Backend, precision and batch size measured for this machine and model (cxrdx.inference.autotune,
    cxrdx.inference.choose), applied to ``predictor``; None to keep the defaults."""
    try:
        return choose.for_job(
            predictor,
            config.weights,
            files,
            cores,
            config.backend,
            config.precision,
            measure_now=len(files) >= AUTOTUNE_MIN_IMAGES,
            log=log,
            n_images=len(files),
        )
    except Exception:  # noqa: BLE001 - an unreadable image, a runtime that fails to compile...: the defaults do
        return None
