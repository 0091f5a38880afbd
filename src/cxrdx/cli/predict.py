"""``cxrdx predict``: findings for chest X-ray images (PNG, JPEG, DICOM; files or folders)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The same values as cxrdx.inference (predictor.BACKENDS, formats.HEATMAP_TOP_K), spelled here so
# --help loads no torch.
BACKENDS = ("auto", "torch", "onnx", "openvino")
HEATMAP_TOP_K = 3
MAX_FAILURES_SHOWN = 20  # with --out, failures are also listed on stderr, up to this many
PROGRESS_MIN_IMAGES = 6  # a progress bar for more than a handful of images


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Predict the 14 findings for each image. A file that cannot be read gets an error row "
        "and the exit code is 1; 0 means every image was read."
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="cxrdx .safetensors checkpoint")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders")
    p.add_argument("--recursive", "-r", action="store_true", help="also search subfolders of folders")
    p.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="output format (table)"
    )
    p.add_argument("--out", metavar="FILE", help="write the output here instead of stdout")
    p.add_argument(
        "--heatmaps", metavar="DIR", help=f"write Grad-CAM overlays of the top {HEATMAP_TOP_K} findings"
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto = onnx on CPU when installed; openvino is optional (bf16 where the CPU has it)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (torch backend only)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--workers", type=int, default=None, help="image decoding threads (default: CPUs - 1, at least 1)"
    )
    p.add_argument(
        "--tta", action="store_true", help="average over the image and its mirror; report the spread"
    )


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from cxrdx.device import available_threads, choose_device
    from cxrdx.errors import ConfigError, CxrdxError
    from cxrdx.inference.formats import (
        NO_THRESHOLDS_NOTE,
        collect_images,
        format_csv,
        format_json,
        format_table,
        unique_stems,
        write_heatmaps,
    )
    from cxrdx.inference.predictor import Prediction, Predictor

    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers must be 0 or more, got {args.workers}")
    if args.out and Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: is a folder; give a file name")
    if args.out:  # fail before the work, not after it
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"--out {args.out}: its folder cannot be created ({exc.strerror or exc})"
            ) from None
    files, errors = collect_images(args.paths, args.recursive)
    device = choose_device(args.device)
    torch.set_num_threads(available_threads())
    predictor = Predictor.load(args.weights, device=device, backend=args.backend)
    heat_dir = Path(args.heatmaps) if args.heatmaps else None
    if heat_dir is not None:
        heat_dir.mkdir(parents=True, exist_ok=True)
    stems = unique_stems([str(f) for f in files])
    results: list[Prediction] = []
    bar = tqdm(
        total=len(files),
        desc="predict",
        unit="img",
        file=sys.stderr,
        disable=len(files) < PROGRESS_MIN_IMAGES,
    )
    with bar:
        it = predictor.iter_predict(files, batch_size=args.batch_size, tta=args.tta, workers=args.workers)
        for k, pred in enumerate(it):
            if heat_dir is not None and pred.ok:
                try:
                    write_heatmaps(predictor, pred, files[k], heat_dir, stems[k])
                except CxrdxError as exc:
                    pred.warnings.append(f"heatmaps not written: {exc}")
            results.append(pred)
            bar.update(1)
    results = errors + results
    if args.format == "json":
        text = format_json(results)
    elif args.format == "csv":
        text = format_csv(results, predictor.labels, predictor.thresholds)
    else:
        text = format_table(results, predictor.thresholds)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    failed = sum(not p.ok for p in results)
    where = f" -> {args.out}" if args.out else ""
    heat = f"; heatmaps in {heat_dir}" if heat_dir else ""
    print(
        f"cxrdx predict: {len(results) - failed} image(s) predicted, {failed} failed "
        f"(backend {predictor.backend}){where}{heat}",
        file=sys.stderr,
    )
    if args.out and failed:  # the error rows are in FILE; say which images failed and why here too
        _print_failures([p for p in results if not p.ok], args.out)
    if args.format != "table" and not predictor.thresholds:
        print(f"cxrdx predict: note: {NO_THRESHOLDS_NOTE}", file=sys.stderr)
    return 1 if failed else 0


def _print_failures(failures: list, out: str) -> None:
    """List the first MAX_FAILURES_SHOWN failed images with their reasons on stderr."""
    for pred in failures[:MAX_FAILURES_SHOWN]:
        reason = str(pred.error)
        line = reason if reason.startswith(pred.source) else f"{pred.source}: {reason}"
        print(f"cxrdx predict: failed: {line}", file=sys.stderr)
    more = len(failures) - MAX_FAILURES_SHOWN
    if more > 0:
        print(f"cxrdx predict: ... and {more} more (see {out})", file=sys.stderr)
