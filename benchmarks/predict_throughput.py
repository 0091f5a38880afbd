"""End-to-end ``cxrdx predict`` throughput on CPU: 1024 px PNG -> decode -> letterbox -> DenseNet121.

One run, the same images for every configuration, at each size:

- ``torch eager bs1, float decode, no overlap``: what the peers do (decode one image to
  float, resize in float, run the network on it, next). The baseline of every ratio;
- ``torch channels_last bs8 + pool``: ``Predictor`` with the torch backend;
- ``onnx bs1/bs8 + pool``: ``Predictor`` with ONNX Runtime (what ``--backend auto`` picks);
- ``onnx bs8, no overlap``: decoding inline (shows what the decode thread pool buys);
- ``openvino bs8 + pool``: the optional OpenVINO backend (bf16 where the CPU has it),
  when OpenVINO is installed;

plus decode+preprocess alone (the float path and the uint8 path ``Predictor`` uses),
the network alone per backend, and a large fp32 matmul: the compute limit is
matmul GFLOP/s / (DenseNet121 GFLOP per image).

Every row prints wall-clock img/s *and* img per CPU-second of this process. On a
shared machine wall img/s falls with other people's load; CPU-seconds per image
hardly move, so ``x cores`` times img/CPU-s estimates what an otherwise idle machine
gives (an upper bound: it assumes both cores stay busy). The end-to-end rows time
``Predictor.iter_predict``, the loop ``cxrdx predict`` runs (process start-up and
output formatting excluded). Weights are random (speed does not depend on them).

    python benchmarks/predict_throughput.py [--images DIR] [--n 32] [--sizes 224 320] [--repeats 3]
"""

from __future__ import annotations

import cxrdx  # noqa: F401 - first: it sets OMP_WAIT_POLICY=PASSIVE before torch loads

# isort: split

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine_line, print_table, say  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NIH_IMAGES = REPO.parent / "shared" / "data" / "nih" / "images"
GFLOP_PER_IMAGE = {224: 5.67, 320: 11.56}  # DenseNet121, 14 outputs, forward (from the issue)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(fn: Callable[[], object], n_items: int, repeats: int) -> tuple[float, float, float]:
    """(median wall img/s, best wall img/s, img per CPU-second) over ``repeats`` timed calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = cpu_seconds(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu_seconds() - c0)
    return n_items / statistics.median(walls), n_items / min(walls), n_items / statistics.median(cpus)


def find_inputs(folder: str | None, n: int, workdir: Path) -> tuple[list[Path], str]:
    """``n`` 1024x1024 PNGs: the given folder, the real NIH sample when present, else phantoms."""
    if folder or NIH_IMAGES.is_dir():
        src = Path(folder) if folder else NIH_IMAGES
        files = sorted(src.glob("*.png"))[:n]
        if len(files) < n:
            sys.exit(f"{src}: only {len(files)} PNGs, need --n {n}")
        return files, f"{src} (real NIH PNGs)"
    from cxrdx.phantom.dataset import write_dataset

    out = write_dataset(workdir / "phantoms", n=n, size=1024, seed=0)
    return sorted((Path(out) / "images").glob("*.png"))[:n], "phantoms written at 1024 px"


def make_checkpoint(path: Path, arch: str, size: int) -> Path:
    from cxrdx.imaging.preprocessing import Preprocessing
    from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
    from cxrdx.model.networks import build_model

    torch.manual_seed(0)
    save_checkpoint(
        path, build_model(arch), CheckpointMeta(architecture=arch, preprocessing=Preprocessing(size=size))
    )
    return path


def matmul_gflops(threads: int, repeats: int) -> tuple[float, float]:
    """(wall GFLOP/s, GFLOP per CPU-second) of a 2048^3 fp32 matmul: the compute ceiling."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    wall, _, per_cpu = measure(lambda: [torch.mm(a, b) for _ in range(4)], 4, repeats)
    flop = 2 * n**3 / 1e9
    return wall * flop, per_cpu * flop


def float_peer_loop(model: torch.nn.Module, meta, files: list[Path]) -> None:
    """The peers' loop: decode to float, float letterbox, network on one image, no overlap."""
    from cxrdx.imaging.read import read_image

    with torch.inference_mode():
        for f in files:
            x = meta.preprocessing(read_image(f)[0])[0]
            torch.sigmoid(model(torch.from_numpy(x[None]))).numpy()


def bench_size(args, files: list[Path], size: int, workdir: Path, cores: int) -> list[list[object]]:
    from cxrdx.inference.backends import openvino_available
    from cxrdx.inference.predictor import Predictor, default_workers
    from cxrdx.model.checkpoint import load_checkpoint

    ckpt = make_checkpoint(workdir / f"{args.arch}-{size}.safetensors", args.arch, size)
    n, reps, bs = len(files), args.repeats, args.batch_size
    results: list[tuple[str, tuple[float, float, float]]] = []

    def add(name: str, fn: Callable[[], object], items: int = n) -> None:
        fn()  # warm-up (first-call allocations, ONNX Runtime / OpenVINO kernel selection)
        results.append((name, measure(fn, items, reps)))
        say(f"  {size} px {name}: {results[-1][1][0]:.2f} img/s (load {load_average()})")

    probe = Predictor.load(ckpt, backend="torch")
    pool_n = default_workers()

    def decode(uint8_ok: bool) -> None:
        from concurrent.futures import ThreadPoolExecutor

        def one(f: Path) -> None:
            probe.prepare(probe.read(f, uint8_ok=uint8_ok)[0])

        with ThreadPoolExecutor(pool_n) as ex:
            list(ex.map(one, files))

    add(f"decode+preprocess only, float path, {pool_n} threads", lambda: decode(False))
    add(f"decode+preprocess only, uint8 path, {pool_n} threads", lambda: decode(True))

    model, meta = load_checkpoint(ckpt)
    model.eval()
    add("torch eager bs1, float decode, no overlap", lambda: float_peer_loop(model, meta, files))
    cl = Predictor.load(ckpt, backend="torch")
    add(f"torch channels_last bs{bs} + pool", lambda: cl.predict(files, batch_size=bs))
    ox = Predictor.load(ckpt, backend="onnx")
    add("onnx bs1 + pool", lambda: ox.predict(files, batch_size=1))
    add(f"onnx bs{bs} + pool", lambda: ox.predict(files, batch_size=bs))
    add(f"onnx bs{bs} + 1 decode thread", lambda: ox.predict(files, batch_size=bs, workers=1))
    add(f"onnx bs{bs}, no overlap", lambda: ox.predict(files, batch_size=bs, workers=0))
    # what `cxrdx predict` runs by default: settings measured on this machine (cxrdx.inference.autotune)
    from cxrdx.files import file_sha256
    from cxrdx.inference import autotune, export
    from cxrdx.inference.backends import INPUT_NAME, OUTPUT_NAME, open_session

    cached = export.cached_export_path(file_sha256(ckpt))
    tuned = autotune.measure(
        lambda threads: open_session(cached, threads),
        lambda session, batch: session.run([OUTPUT_NAME], {INPUT_NAME: batch}),
        (meta.preprocessing.channels, size, size),
        lambda: probe.prepare(probe.read(files[0], uint8_ok=True)[0]),
        cores,
    )
    say(f"  {size} px {autotune.describe(tuned, True)}")
    tx = Predictor(None, ox.meta, session=open_session(cached, tuned.threads), checkpoint=ckpt)
    add(
        f"onnx autotuned (bs{tuned.batch_size}, {tuned.threads}+{tuned.workers} threads) = predict default",
        lambda: tx.predict(files, batch_size=tuned.batch_size, workers=tuned.workers),
    )
    ov = None
    if openvino_available() and not args.no_openvino:
        ov = Predictor.load(ckpt, backend="openvino")
        prec = ov.session.precision
        add(f"openvino ({prec}) bs{bs} + pool", lambda: ov.predict(files, batch_size=bs))

    x = np.random.default_rng(0).standard_normal((bs, 3, size, size)).astype(np.float32)
    with torch.inference_mode():
        add(
            "model only: torch eager bs1",
            lambda: [model(torch.from_numpy(x[i : i + 1])) for i in range(bs)],
            bs,
        )
    add(f"model only: torch channels_last bs{bs}", lambda: cl.probabilities(x), bs)
    add("model only: onnx bs1", lambda: [ox.probabilities(x[i : i + 1]) for i in range(bs)], bs)
    add(f"model only: onnx bs{bs}", lambda: ox.probabilities(x), bs)
    tb = tuned.batch_size
    add(
        f"model only: onnx autotuned (bs{tb}, {tuned.threads} threads)",
        lambda: [tx.probabilities(x[i : i + tb]) for i in range(0, bs, tb)],
        bs,
    )
    if ov is not None:
        add(f"model only: openvino ({ov.session.precision}) bs{bs}", lambda: ov.probabilities(x), bs)

    by_name = dict(results)
    fastest = max((v[0], k) for k, v in results if k.startswith("model only: onnx"))
    e2e = next(v[0] for k, v in results if k.startswith("onnx autotuned"))
    say(
        f"  {size} px: end to end with the default (autotuned) settings = {100 * e2e / fastest[0]:.0f} % of the "
        f"fastest ONNX network alone ({fastest[1]}: {fastest[0]:.2f} img/s); target >= 85 %"
    )
    base = by_name["torch eager bs1, float decode, no overlap"]
    rows = []
    for name, (wall, best, per_cpu) in results:
        rows.append(
            [
                name,
                wall,
                best,
                per_cpu,
                per_cpu * cores,
                f"{wall / base[0]:.2f}x",
                f"{per_cpu / base[2]:.2f}x",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--images", help="folder of 1024x1024 PNGs (default: ../shared/data/nih/images or phantoms)"
    )
    parser.add_argument("--n", type=int, default=32, help="images per configuration")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 320])
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per configuration (median)")
    parser.add_argument("--no-openvino", action="store_true", help="skip OpenVINO even when installed")
    args = parser.parse_args()

    from cxrdx.device import available_threads

    cores = available_threads()
    torch.set_num_threads(cores)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CXRDX_CACHE"] = str(Path(tmp) / "cache")  # a fresh export, not a stale cache
        files, origin = find_inputs(args.images, args.n, Path(tmp))
        import onnxruntime

        print(f"# predict throughput, {time.strftime('%Y-%m-%d %H:%M %Z')}")
        print(f"machine: {machine_line()}; onnxruntime {onnxruntime.__version__}")
        print(f"{args.arch}, {len(files)} images from {origin}; {cores} usable CPUs; repeats {args.repeats}")
        wall, per_cpu = matmul_gflops(cores, args.repeats)
        print(
            f"fp32 2048^3 matmul: {wall:.0f} GFLOP/s wall, {per_cpu:.0f} GFLOP per CPU-s "
            f"(x {cores} = {per_cpu * cores:.0f} GFLOP/s on an idle machine)"
        )
        for size in args.sizes:
            gflop = GFLOP_PER_IMAGE.get(size)
            rows = bench_size(args, files, size, Path(tmp), cores)
            print(f"\n## {size} px (load average now {load_average()})")
            if gflop:
                print(
                    f"compute limit at {gflop} GFLOP/image: {wall / gflop:.1f} img/s at this run's wall matmul "
                    f"rate, {per_cpu * cores / gflop:.1f} img/s idle-machine estimate"
                )
            print_table(
                [
                    "configuration",
                    "img/s (median)",
                    "img/s (best)",
                    "img/CPU-s",
                    f"idle est. ({cores} CPUs)",
                    "x eager bs1 (wall)",
                    "x eager bs1 (CPU)",
                ],
                rows,
            )
        print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
