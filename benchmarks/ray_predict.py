"""``cxrdx predict --engine ray`` against the single-process ``cxrdx predict``, on this machine.

Both run the same job, DenseNet121 (random weights: speed does not depend on them) on ONNX
Runtime, the same 1024 px NIH PNGs (or phantoms), ``--format csv --out``, in alternation
(which goes first alternates) so a shared machine's load falls on both alike. The Ray runs
use a local Ray started (and warmed by a 4-film job) before them: a cluster is started once,
not per job. Each engine gets two figures: the whole job, and the rate after its first rows
reach the output (without the start-up: Ray's actor loading the model, the first batch), which
is what an archive of millions of films sees. Then the paper estimate: what N nodes would take
for 1 and 10 million films at the measured rate.

    python benchmarks/ray_predict.py [--n 64] [--size 224] [--repeats 2] [--cpus 2]
"""

from __future__ import annotations

import cxrdx  # noqa: F401 - first: it sets OMP_WAIT_POLICY=PASSIVE before torch loads

# isort: split

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402
from predict_throughput import find_inputs, make_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--n", type=int, default=64, help="films per run (the PNGs repeated under new names if fewer)"
    )
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs given to the local Ray")
    ap.add_argument("--images", help="a folder of PNGs (default: the real NIH sample, else phantoms)")
    args = ap.parse_args()
    if args.repeats < 1 or args.n < 1:
        ap.error("--n and --repeats must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="cxrdx-ray-bench-"))
    os.environ["CXRDX_CACHE"] = str(work / "cache")
    have = len(list(Path(args.images).glob("*.png"))) if args.images else args.n
    files, what = find_inputs(args.images, min(args.n, have), work)
    folder = work / "films"
    folder.mkdir()
    for i in range(args.n):  # more films than PNGs: each one again under another name
        src, dest = files[i % len(files)].resolve(), folder / f"{i:06d}_{files[i % len(files)].name}"
        try:
            os.link(src, dest)  # a hard link: its own path (cxrdx predict counts a symlink's target once)
        except OSError:
            shutil.copyfile(src, dest)
    files = sorted(folder.iterdir())
    ckpt = make_checkpoint(work / "densenet121.safetensors", "densenet121", args.size)

    import ray

    from cxrdx.inference.predictor import Predictor
    from cxrdx.jobs.predict import Config as PredictJobConfig
    from cxrdx.jobs.predict_batch import predict_job
    from cxrdx.jobs.predict_ray import predict_on_ray

    Predictor.load(ckpt, backend="onnx")  # the ONNX export, made once, outside the timings
    print(f"# {machine_line()}")
    print(f"# {len(files)} films, {what}; DenseNet121 at {args.size} px, ONNX Runtime, csv --out, autotuned")

    def config(out: Path, n: int | None = None) -> PredictJobConfig:
        paths = [str(f) for f in sorted(folder.iterdir())[:n]] if n else [str(folder)]
        return PredictJobConfig(weights=str(ckpt), paths=paths, format="csv", out=str(out), backend="onnx")

    predict_job(config(work / "warm.csv"))  # autotune measured once: both engines use it
    t0 = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=args.cpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"CXRDX_CACHE": os.environ["CXRDX_CACHE"]}},
    )
    print(f"# local Ray started in {time.perf_counter() - t0:.1f} s ({args.cpus} CPUs; not in the figures)")
    predict_on_ray(config(work / "warm-ray.csv", 4))  # Ray's workers started, as on a live cluster

    def local(out: Path) -> tuple[float, float, int]:
        first = _watch(out)
        t0 = time.perf_counter()
        predict_job(config(out))
        end = time.perf_counter()
        return end - t0, first[0] - t0 if first else float("nan"), first[1] if first else 0

    def on_ray(out: Path) -> tuple[float, float, int]:
        first: list = []
        t0 = time.perf_counter()
        predict_on_ray(config(out), on_batch=lambda rows: first or first.extend([time.perf_counter(), rows]))
        end = time.perf_counter()
        return end - t0, first[0] - t0 if first else float("nan"), first[1] if first else 0

    engines = {"local": local, "ray": on_ray}
    whole: dict[str, list[float]] = {e: [] for e in engines}
    steady: dict[str, list[float]] = {e: [] for e in engines}
    n = len(files)
    for r in range(args.repeats):
        for engine in sorted(engines, reverse=r % 2 == 1):  # alternate which goes first
            total, first_s, first_rows = engines[engine](work / f"{engine}{r}.csv")
            whole[engine].append(n / total)
            if first_rows < n and total > first_s:
                steady[engine].append((n - first_rows) / (total - first_s))
            print(
                f"  repeat {r + 1} {engine:>5}: {total:.1f} s, first {first_rows} rows at {first_s:.1f} s; "
                f"load {os.getloadavg()[0]:.2f}"
            )
    ray.shutdown()
    rate = {}
    for engine in engines:
        rate[engine] = statistics.median(steady[engine]) if steady[engine] else float("nan")
        print(
            f"{engine:>5}: whole job {statistics.median(whole[engine]):.2f} img/s; "
            f"after its first rows {rate[engine]:.2f} img/s"
        )
    lo, ra = statistics.median(whole["local"]), statistics.median(whole["ray"])
    print(
        f"Ray overhead: whole job {100 * (1 - ra / lo):+.0f} %, after the first rows "
        f"{100 * (1 - rate['ray'] / rate['local']):+.0f} %"
    )
    print(f"# {machine_line()}")
    # the whole job's rate: after the first rows Ray is flattered (its decode tasks ran ahead while the
    # actor was starting), and on a loaded machine more processes also win a larger share of the CPUs
    estimate(ra, os.cpu_count() or 2)


def _watch(out: Path) -> list:
    """[time, rows] when ``out`` first holds a data row (a CSV streamed by cxrdx predict), from a thread."""
    import threading

    first: list = []

    def poll() -> None:
        while not first:
            try:
                rows = out.read_bytes().count(b"\n") - 1
            except OSError:
                rows = 0
            if rows > 0:
                first.extend([time.perf_counter(), rows])
                return
            time.sleep(0.02)

    threading.Thread(target=poll, daemon=True).start()
    return first


def estimate(rate: float, cores: int) -> None:
    """On paper, from a per-node rate: nodes like this one, and 16-core nodes (assumptions: docs/performance.md)."""
    per_core = rate / cores
    print(f"\npaper estimate from {rate:.2f} img/s per {cores}-core node ({per_core:.2f} img/s per core):")
    print(f"| films | nodes | hours, {cores}-core nodes | hours, 16-core nodes (80 % per-core scaling) |")
    print("|---|---|---|---|")
    for films in (1_000_000, 10_000_000):
        for nodes in (1, 10, 100):
            small = films / (nodes * rate) / 3600
            big = films / (nodes * 16 * per_core * 0.8) / 3600
            print(f"| {films:,} | {nodes} | {small:,.1f} | {big:,.1f} |")


if __name__ == "__main__":
    main()
