"""``cxrdx predict --engine ray`` against the single-process ``cxrdx predict``, on this machine.

Both run the same job, DenseNet121 (random weights: speed does not depend on them) on ONNX
Runtime, the same 1024 px NIH PNGs (or phantoms), ``--format csv --out``, in alternation
(local, ray, local, ray ...) so a shared machine's load falls on both alike. The Ray runs use
a local Ray started once before them (a cluster is started once, not per job); each Ray figure
is split, from runs of N/4 and N films, into a rate per image and a fixed start-up (the
actor loading its model, the ONNX session, the first batch). Then the paper estimate: what N
nodes would take for 1 and 10 million films at the measured per-image rate.

    python benchmarks/ray_predict.py [--n 64] [--size 224] [--repeats 2] [--cpus 2]
"""

from __future__ import annotations

import cxrdx  # noqa: F401 - first: it sets OMP_WAIT_POLICY=PASSIVE before torch loads

# isort: split

import argparse
import os
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
    ap.add_argument("--n", type=int, default=64, help="films per run")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs given to the local Ray")
    ap.add_argument("--images", help="a folder of PNGs (default: the real NIH sample, else phantoms)")
    args = ap.parse_args()
    if args.repeats < 1 or args.n < 1:
        ap.error("--n and --repeats must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="cxrdx-ray-bench-"))
    os.environ["CXRDX_CACHE"] = str(work / "cache")
    files, what = find_inputs(args.images, args.n, work)
    small = max(1, args.n // 4)
    folders = {}
    for count in (small, args.n):
        folders[count] = work / f"films{count}"
        folders[count].mkdir()
        for f in files[:count]:
            (folders[count] / f.name).symlink_to(f.resolve())
    ckpt = make_checkpoint(work / "densenet121.safetensors", "densenet121", args.size)

    import ray

    from cxrdx.inference.predict_job import PredictJobConfig, predict_job
    from cxrdx.inference.predictor import Predictor
    from cxrdx.integrations.ray_job import predict_on_ray

    Predictor.load(ckpt, backend="onnx")  # the ONNX export, made once, outside the timings
    print(f"# {machine_line()}")
    print(f"# {what}; DenseNet121 at {args.size} px, ONNX Runtime, --format csv --out, autotuned")

    def config(count: int, out: Path) -> PredictJobConfig:
        return PredictJobConfig(
            weights=str(ckpt), paths=[str(folders[count])], format="csv", out=str(out), backend="onnx"
        )

    predict_job(config(args.n, work / "warm.csv"))  # autotune measured once: both engines use it
    t0 = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=args.cpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"CXRDX_CACHE": os.environ["CXRDX_CACHE"]}},
    )
    print(f"# local Ray started in {time.perf_counter() - t0:.1f} s ({args.cpus} CPUs; not in the figures)")
    predict_on_ray(
        config(small, work / "warm-ray.csv")
    )  # Ray's worker processes started, as on a live cluster
    engines = {"local": predict_job, "ray": predict_on_ray}
    seconds: dict[tuple[str, int], list[float]] = {(e, c): [] for e in engines for c in (small, args.n)}
    for r in range(args.repeats):
        for engine, run in sorted(engines.items(), reverse=r % 2 == 1):  # alternate which goes first
            for count in (small, args.n):
                t0 = time.perf_counter()
                run(config(count, work / f"{engine}{count}-{r}.csv"))
                seconds[engine, count].append(time.perf_counter() - t0)
        line = ", ".join(f"{e} {c}: {seconds[e, c][-1]:.1f} s" for e, c in seconds)
        print(f"  repeat {r + 1}: {line}; load {os.getloadavg()[0]:.2f}")
    ray.shutdown()
    rates = {}
    for engine in engines:
        t_small, t_n = (statistics.median(seconds[engine, c]) for c in (small, args.n))
        whole = args.n / t_n
        steady = (args.n - small) / (t_n - t_small) if t_n > t_small else float("nan")  # nan: load noise
        fixed = t_small - small / steady
        rates[engine] = steady
        print(
            f"{engine:>5}: whole job of {args.n}: {whole:.2f} img/s; per image ({small} -> {args.n} films): "
            f"{steady:.2f} img/s; fixed start-up {fixed:.1f} s"
        )
    print(f"Ray overhead per image: {100 * (1 - rates['ray'] / rates['local']):+.1f} %")
    print(f"# {machine_line()}")
    estimate(rates["ray"], os.cpu_count() or 2)


def estimate(rate: float, cores: int) -> None:
    """On paper: N nodes of 16 cores at the measured per-core rate (assumptions in docs/performance.md)."""
    per_core = rate / cores
    print(f"\npaper estimate from {rate:.2f} img/s on {cores} cores ({per_core:.2f} img/s per core):")
    print("| films | nodes x 16 cores (80 % per-core scaling) | hours |")
    print("|---|---|---|")
    for films in (1_000_000, 10_000_000):
        for nodes in (1, 10, 50):
            hours = films / (nodes * 16 * per_core * 0.8) / 3600
            print(f"| {films:,} | {nodes} | {hours:,.1f} |")


if __name__ == "__main__":
    main()
