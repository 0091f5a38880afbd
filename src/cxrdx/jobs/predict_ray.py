"""``cxrdx predict --engine ray``: the same job on a Ray cluster, through Ray Data.

The images (files and folders walked here, manifests of paths, local or behind a URI) become
a dataset; ``DecodeImages`` runs as CPU tasks and ``PredictBatch`` in a pool of actors (one per
node on CPUs, one per GPU with ``--device cuda``), each loading the checkpoint once. Ray retries
the batch of an actor that dies, and delivers each batch's result once.

This process streams the results, one fsync'ed write per batch, into its own part
``OUT.parts/run-NNNN.jsonl`` (cxrdx.inference.stream: a crash loses at most a batch), so
nothing but the cluster's work runs on the workers and ``--out`` may be a local file. At the
end the parts are merged into ``OUT`` (csv, jsonl or parquet; the columns and values of a
single-process run, every image once) and removed. ``--resume`` skips the images in ``OUT`` and
in the parts left by an interrupted run; the merge keeps them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cxrdx.errors import ConfigError, CxrdxError
from cxrdx.inference.formats import NO_THRESHOLDS_NOTE, UNCALIBRATED_NOTE, collect_images
from cxrdx.inference.prediction import Prediction
from cxrdx.inference.stream import ResultStream
from cxrdx.integrations.merge import merge_parts, parts_done, read_out_done
from cxrdx.integrations.ray import PredictBatch, decode_images, is_uri, predictions_of, worker_env
from cxrdx.jobs.predict_batch import (
    AUTOTUNE_MIN_IMAGES,
    MAX_FAILURES_SHOWN,
    PROGRESS_MIN_IMAGES,
    PredictSummary,
)

RAY_FORMATS = ("csv", "jsonl", "parquet")
MANIFEST_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
MANIFEST_COLUMNS = ("path", "image", "Image Index")  # the paths column, else the first column
DECODE_BATCH = 8
BLOCK_MAX = 32  # images per block of the dataset
DECODE_MEMORY = 256 << 20  # bytes a decode task may need: a 1024 px film and its copies, with room
PREDICT_BATCH_MAX = 32  # rows per actor call (the network runs them in autotuned batches)
INSTALL = "--engine ray needs Ray: pip install 'cxrdx[ray]'"


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def check_config(config: Any) -> None:
    """What --engine ray refuses, before any work."""
    if config.format not in RAY_FORMATS or not config.out:
        raise ConfigError(
            f"--engine ray writes a file: give --out FILE and --format {' | '.join(RAY_FORMATS)} "
            f"(not {config.format})"
        )
    if Path(config.out).is_dir():
        raise ConfigError(f"--out {config.out}: is a folder; give a file name")
    if config.shard:
        raise ConfigError("--shard and --engine ray: Ray shares the work itself; drop --shard")
    if config.heatmaps:
        raise ConfigError("--heatmaps runs Grad-CAM per image on one machine; use --engine local for them")
    if not ray_available():
        raise ConfigError(INSTALL)


def is_manifest(path: str) -> bool:
    return str(path).lower().endswith(MANIFEST_SUFFIXES)


def read_manifest(path: str) -> list[str]:
    """The image paths a CSV or Parquet manifest lists (local or a URI; relative paths: beside it)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq
    from pyarrow import fs

    try:
        filesystem, inner = fs.FileSystem.from_uri(path) if is_uri(path) else (fs.LocalFileSystem(), path)
        if str(path).lower().endswith((".parquet", ".pq")):
            table = pq.read_table(inner, filesystem=filesystem)
        else:
            with filesystem.open_input_stream(inner, compression="detect") as fh:
                table = pcsv.read_csv(fh)
    except (OSError, ValueError) as exc:  # pyarrow's errors are OSError / ArrowInvalid (a ValueError)
        raise ConfigError(f"{path}: cannot read it as a manifest of image paths ({exc})") from None
    if table.num_columns == 0:
        raise ConfigError(f"{path}: the manifest has no columns")
    name = next((c for c in MANIFEST_COLUMNS if c in table.column_names), table.column_names[0])
    values = [str(v) for v in table.column(name).to_pylist() if v is not None and str(v) != ""]
    if is_uri(path):
        base = str(path).rsplit("/", 1)[0]
        return [v if is_uri(v) or v.startswith("/") else f"{base}/{v}" for v in values]
    folder = Path(path).parent
    return [v if is_uri(v) or Path(v).is_absolute() else str(folder / v) for v in values]


def list_uri_folder(uri: str, recursive: bool) -> list[str]:
    """Image files under an object-storage prefix (pyarrow's filesystems)."""
    from pyarrow import fs

    from cxrdx.imaging.sniff import IMAGE_SUFFIXES

    filesystem, inner = fs.FileSystem.from_uri(uri)
    info = filesystem.get_file_info(inner)
    if info.type == fs.FileType.File:
        return [uri]
    scheme = uri.split("://", 1)[0]
    found = filesystem.get_file_info(fs.FileSelector(inner, recursive=recursive, allow_not_found=True))
    return sorted(
        f"{scheme}://{f.path}"
        for f in found
        if f.type == fs.FileType.File and f.path.lower().endswith(IMAGE_SUFFIXES)
    )


def collect_sources(paths: list[str], recursive: bool) -> tuple[list[str], list[Prediction]]:
    """The images to predict (as ``cxrdx predict`` names them) and error rows for missing paths."""
    local = [p for p in paths if not is_uri(p) and not is_manifest(p)]
    sources: list[str] = []
    errors: list[Prediction] = []
    if local:
        files, errors = collect_images(local, recursive)
        sources = [str(f) for f in files]
    for p in paths:
        if is_manifest(p):
            sources += read_manifest(p)
        elif is_uri(p):
            sources += list_uri_folder(p, recursive)
    return list(dict.fromkeys(sources)), errors


def parts_dir(out: str) -> Path:
    out_path = Path(out)
    return out_path.with_name(out_path.name + ".parts")


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (or start a local Ray); True when this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address is None:  # a local Ray: its workers share this machine's cxrdx cache
        kwargs["runtime_env"] = {"env_vars": worker_env()}
    try:
        ray.init(address=address or "local", **kwargs)  # never another user's cluster by accident
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"--address {address}: cannot join the Ray cluster ({exc})") from None
    return True


def plan(device: str) -> dict[str, Any]:
    """Actors and resources: one actor per CPU node (or per GPU), the node's other CPUs decode."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    cpus = int(min((n["Resources"]["CPU"] for n in nodes), default=1))
    gpus = int(sum(n["Resources"].get("GPU", 0) for n in nodes))
    if device != "cpu":
        if gpus < 1:
            raise ConfigError(f"--device {device} --engine ray: the Ray cluster has no GPU")
        return {"actors": gpus, "num_cpus": 1, "num_gpus": 1, "threads": None, "device": "cuda"}
    decode_cpus = max(1, cpus // 4)  # decoding is about a seventh of the CPU time of an image
    return {
        "actors": max(1, len(nodes)),
        "num_cpus": max(1, cpus - decode_cpus),
        "num_gpus": 0,
        "threads": cpus,  # as cxrdx predict: the network's threads share the node with the decoders
        "device": "cpu",
    }


def predict_on_ray(
    config: Any,
    engine: str = "ray",
    address: str | None = None,
    log: Callable[[str], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> PredictSummary:
    """Run ``cxrdx predict`` on Ray (``config``: a ``cxrdx.jobs.predict.Config``, which imports this module);
    the result is merged into ``config.out``.

    ``on_batch(rows)`` is called after each batch is safely in this run's part (rows so far).
    """
    log = log or (lambda _line: None)
    if engine != "ray":
        what = "--format parquet" if config.format == "parquet" else "--address"
        raise ConfigError(f"{what} needs --engine ray")
    check_config(config)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sources, errors = collect_sources(config.paths, config.recursive)
    if not sources and not errors:
        raise ConfigError("nothing to predict: no images found in " + ", ".join(config.paths))

    from cxrdx.inference.predictor import Predictor

    # here first: the ONNX export is made once, before the actors load it from the cache
    predictor = Predictor.load(config.weights, backend=config.backend, precision=config.precision)
    labels, thresholds = predictor.labels, predictor.thresholds
    for note in predictor.threshold_notes(config.tta):
        log(f"warning: {note}")
    parts = parts_dir(config.out)
    done: set[str] = set()
    if config.resume:
        done = parts_done(parts) | read_out_done(out, config.format, labels, thresholds, config.tta)
    elif parts.exists():
        shutil.rmtree(parts)  # an earlier interrupted run's parts: this run starts afresh
    todo = [s for s in sources if s not in done]
    errors = [e for e in errors if e.source not in done]
    if done:
        log(f"--resume: {len(sources) - len(todo)} image(s) already in {out} or its parts")
    parts.mkdir(parents=True, exist_ok=True)
    part = parts / f"run-{len(list(parts.glob('run-*.jsonl'))):04d}.jsonl"
    counts = {"ok": 0, "failed": 0, "ood": 0}
    failures: list[Prediction] = []

    started = connect(address)
    try:
        with ResultStream(part, "jsonl", labels, thresholds, config.tta) as stream:
            seen: set[str] = set()  # a batch delivered twice (a retry after its output left) is written once

            def emit(pred: Prediction) -> None:
                if pred.source in seen:
                    return
                seen.add(pred.source)
                counts["ok" if pred.ok else "failed"] += 1
                counts["ood"] += pred.in_distribution is False
                if not pred.ok and len(failures) < MAX_FAILURES_SHOWN:
                    failures.append(pred)
                stream.add(pred)

            for pred in errors:
                emit(pred)
            stream.flush()
            bar = tqdm(
                total=len(todo),
                desc="predict (ray)",
                unit="img",
                file=sys.stderr,
                disable=len(todo) < PROGRESS_MIN_IMAGES,
            )
            with bar:
                for batch in _results(config, todo, config.device):
                    preds = predictions_of(batch)
                    for pred in preds:
                        emit(pred)
                    stream.flush()  # the batch is safe
                    bar.update(len(preds))
                    if on_batch is not None:
                        on_batch(counts["ok"] + counts["failed"])
    except Exception as exc:
        import ray.exceptions

        if not isinstance(exc, ray.exceptions.RayError):
            raise
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        said = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)] or lines
        raise CxrdxError(
            f"the Ray job failed ({(said[-1] if said else type(exc).__name__)[:300]}); the {counts['ok'] + counts['failed']} image(s) "
            f"done are kept in {parts}: fix the cause and rerun with --resume"
        ) from exc
    finally:
        if started:
            import ray

            ray.shutdown()
    merge_parts(parts, out, config.format, labels, thresholds, config.tta, keep_out=config.resume)
    summary = PredictSummary(
        ok=counts["ok"],
        failed=counts["failed"],
        ood=counts["ood"],
        failures=failures,
        target=str(out),
        n_shards=1,
        merged=True,
        backend=f"{predictor.backend} on ray",
        heat_dir=None,
    )
    from cxrdx.model.card import banners

    summary.warnings = list(banners(predictor.meta))
    if not thresholds:
        summary.notes.append(NO_THRESHOLDS_NOTE)
    if not predictor.calibrated:
        summary.notes.append(UNCALIBRATED_NOTE)
    return summary


def _results(config: Any, todo: list[str], device: str) -> Iterator[dict]:
    """The dataset of ``todo`` through decode tasks and the predict actors, one result batch at a time."""
    if not todo:
        return
    import pyarrow as pa
    import ray

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # not Ray Data's plan, timings and notes
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    with contextlib.suppress(AttributeError):
        ctx.print_on_execution_start = False
    p = plan(device)
    workers = p["actors"] * max(1, p["num_cpus"])
    readable = [s if is_uri(s) else str(Path(s).absolute()) for s in todo]  # workers' cwd is not ours
    # small blocks, so results stream back (and a lost block is little work), at least 4 per worker
    per_block = max(1, min(BLOCK_MAX, math.ceil(len(todo) / (4 * workers))))
    ds = ray.data.from_arrow(
        pa.table({"path": readable, "image": todo}), override_num_blocks=math.ceil(len(todo) / per_block)
    )
    # a function: Ray runs it as tasks on the nodes' free CPUs; its memory request also keeps Ray from
    # fusing it into the actors, so decoding overlaps the network as cxrdx predict's decode threads do
    ds = ds.map_batches(
        decode_images,
        fn_kwargs={"column": "path"},
        batch_size=min(DECODE_BATCH, per_block),
        num_cpus=1,
        memory=DECODE_MEMORY,
    )
    ds = ds.map_batches(
        PredictBatch,
        fn_constructor_kwargs={
            "weights": str(Path(config.weights).absolute())
            if Path(config.weights).exists()
            else config.weights,
            "column": "path",
            "id_column": "image",
            "backend": config.backend,
            "precision": config.precision,
            "tta": config.tta,
            "threads": p["threads"],
            "batch_size": config.batch_size,
            "autotune": config.autotune and len(todo) >= AUTOTUNE_MIN_IMAGES,
            "device": p["device"],
            "record": True,
        },
        batch_size=min(PREDICT_BATCH_MAX, per_block),
        num_cpus=p["num_cpus"],
        num_gpus=p["num_gpus"],
        compute=ray.data.ActorPoolStrategy(size=p["actors"]),
    )
    yield from ds.select_columns(["record"]).iter_batches(batch_size=None, batch_format="numpy")
