"""``cxrdx predict``: findings for chest X-ray images (PNG, JPEG, DICOM; files or folders)."""

from __future__ import annotations

import argparse
import sys

# The same values as cxrdx.inference (predictor.BACKENDS, formats.HEATMAP_TOP_K), spelled here so
# --help loads no torch. The job itself is cxrdx.inference.predict_job.
BACKENDS = ("auto", "torch", "onnx", "openvino")
PRECISIONS = ("fp32", "int8")  # = cxrdx.inference.quantize.PRECISIONS
HEATMAP_TOP_K = 3
ENGINES = ("local", "ray")  # ray: cxrdx.integrations.ray_job
DEFAULT_BATCH = 8  # = cxrdx.inference.predict_job.DEFAULT_BATCH, for the help text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Predict the 14 findings for each image. A file that cannot be read gets an error row "
        "and the exit code is 1; 0 means every image was read."
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="cxrdx .safetensors checkpoint")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders")
    p.add_argument("--recursive", "-r", action="store_true", help="also search subfolders of folders")
    p.add_argument(
        "--format",
        choices=("table", "json", "csv", "jsonl", "dicom", "fhir", "parquet"),
        default="table",
        help="output format (table); jsonl = JSON Lines, one image per line; dicom = a TID 1500 SR and "
        "Grad-CAM secondary captures in each DICOM input's study; fhir = an R4 DiagnosticReport bundle "
        "per image (PNG/JPEG too). dicom and fhir need --out DIR; parquet: --engine ray only",
    )
    p.add_argument(
        "--out", metavar="FILE", help="write the output here instead of stdout (a folder for dicom/fhir)"
    )
    p.add_argument(
        "--allow-demo-model",
        action="store_true",
        help="dicom/fhir: write the results of a checkpoint trained on synthetic phantoms or never "
        "evaluated (refused otherwise), stamped DEMO MODEL in every object",
    )
    p.add_argument(
        "--send-ood-findings",
        action="store_true",
        help="dicom/fhir: report an out-of-distribution image's findings and heatmaps anyway, marked "
        "(default: its SR/FHIR say it was not evaluated, and no heatmaps are written)",
    )
    p.add_argument(
        "--heatmaps", metavar="DIR", help=f"write Grad-CAM overlays of the top {HEATMAP_TOP_K} findings"
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto = onnx on CPU when installed; openvino is optional (bf16 where the CPU has it)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="int8: the model `cxrdx quantize` made and checked on validation for this checkpoint "
        "(ONNX Runtime, CPU; heatmaps stay fp32; see docs/performance.md for its speed here)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (torch backend only)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"images per network call (default: measured on this machine, see --no-autotune; else {DEFAULT_BATCH})",
    )
    p.add_argument(
        "--no-autotune",
        action="store_true",
        help="do not measure batch size and threads at first use (a few seconds, then cached per "
        "machine and model); use the defaults",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="image decoding threads (default: CPUs - 1, at least 1)"
    )
    p.add_argument(
        "--tta", action="store_true", help="average over the image and its mirror; report the spread"
    )
    archive = p.add_argument_group(
        "archives",
        "csv and jsonl stream to --out as they are made (one fsync per batch: a crash loses at most "
        "that batch). Many processes: each takes a slice of the sorted file list and writes "
        "OUT.part-I-of-N; the last one to finish merges the parts into OUT.",
    )
    archive.add_argument(
        "--resume", action="store_true", help="skip the images already in --out (csv/jsonl), append the rest"
    )
    archive.add_argument(
        "--shard",
        metavar="I/N",
        help="be shard I (0 to N-1) of N, e.g. $SLURM_ARRAY_TASK_ID/N; torchrun's RANK/WORLD_SIZE "
        "are used when this is not given",
    )
    archive.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local: this process; ray: Ray Data on a Ray cluster (pip install 'cxrdx[ray]'): decoding "
        "as tasks, the network in one actor per node (per GPU with --device cuda), a dead worker's batch "
        "retried; needs --out and csv, jsonl or parquet; PATHs may also be CSV/Parquet manifests of "
        "paths and s3:// gs:// URIs",
    )
    archive.add_argument(
        "--address",
        metavar="ADDR",
        help="with --engine ray: the cluster to join (auto, or ray://HEAD:10001); default: a local Ray",
    )


def run(args: argparse.Namespace) -> int:
    # torch and MONAI are not imported here: with an exported checkpoint the ONNX path needs neither
    from cxrdx.inference.predict_job import FOLDER_FORMATS, PredictJobConfig, predict_job

    config = PredictJobConfig(
        weights=args.weights,
        paths=list(args.paths),
        recursive=args.recursive,
        format=args.format,
        out=args.out,
        heatmaps=args.heatmaps,
        backend=args.backend,
        precision=args.precision,
        device=args.device,
        batch_size=args.batch_size,
        autotune=not args.no_autotune,
        workers=args.workers,
        tta=args.tta,
        resume=args.resume,
        shard=args.shard,
    )
    result_folder = check_inputs = None
    if args.format in FOLDER_FORMATS:
        import functools

        from cxrdx.interop.result_files import ResultFolder, check_dicom_inputs

        result_folder = functools.partial(
            ResultFolder, allow_demo=args.allow_demo_model, send_ood_findings=args.send_ood_findings
        )
        check_inputs = check_dicom_inputs
    log = lambda line: print(f"cxrdx predict: {line}", file=sys.stderr)  # noqa: E731
    if args.engine == "ray" or args.format == "parquet" or args.address:
        from cxrdx.integrations.ray_job import predict_on_ray  # refuses parquet/--address without ray

        summary = predict_on_ray(config, engine=args.engine, address=args.address, log=log)
    else:
        summary = predict_job(config, log=log, result_folder=result_folder, check_inputs=check_inputs)
    if summary.written is not None:
        sys.stdout.write("".join(f"{p}\n" for p in summary.written))
    elif summary.text is not None:
        sys.stdout.write(summary.text)
    failed = summary.failed
    where = f" -> {summary.target}" if args.out else ""
    if summary.n_shards > 1:
        where += (
            f"; all {summary.n_shards} parts merged into {args.out}"
            if summary.merged
            else (f"; {args.out} is written when the last of the {summary.n_shards} shards finishes")
        )
    heat = f"; heatmaps in {summary.heat_dir}" if summary.heat_dir else ""
    print(
        f"cxrdx predict: {summary.ok} image(s) predicted, {failed} failed (backend {summary.backend}){where}{heat}",
        file=sys.stderr,
    )
    if args.out and failed:  # the error rows are in FILE; say which images failed and why here too
        _print_failures(summary.failures, failed, str(summary.target))
    if summary.ood:
        print(
            f"cxrdx predict: warning: {summary.ood} image(s) OUT OF DISTRIBUTION (unlike the images the "
            'model was trained on, "in_distribution": false): their findings and calls are unreliable',
            file=sys.stderr,
        )
    for b in summary.warnings:  # the model card's banners; a table carries them itself
        print(f"cxrdx predict: WARNING: {b}", file=sys.stderr)
    for note in summary.notes:
        print(f"cxrdx predict: note: {note}", file=sys.stderr)
    return 1 if failed else 0


def _print_failures(failures: list, total: int, out: str) -> None:
    """List the failed images the job kept (its first MAX_FAILURES_SHOWN) with their reasons on stderr."""
    for pred in failures:
        reason = str(pred.error)
        line = reason if reason.startswith(pred.source) else f"{pred.source}: {reason}"
        print(f"cxrdx predict: failed: {line}", file=sys.stderr)
    more = total - len(failures)
    if more > 0:
        print(f"cxrdx predict: ... and {more} more (see {out})", file=sys.stderr)
