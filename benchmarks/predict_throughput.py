"""End-to-end ``cxrdx predict`` throughput on CPU: 1024 px PNG -> decode -> letterbox -> DenseNet121.

One run, the same images for every configuration, at each size:

- ``torch eager bs1, float decode, no overlap``: what the peers do (decode one image to
  float, resize in float, run the network on it, next). The baseline of every ratio;
- ``torch channels_last bs8 + pool``: ``Predictor`` with the torch backend;
- ``onnx bs1/bs8 + pool``: ``Predictor`` with ONNX Runtime (what ``--backend auto`` picks);
- ``onnx bs8, no overlap``: decoding inline (shows what the decode thread pool buys);
- ``autotuned ... = predict default``: the backend, precision and batch size ``cxrdx predict``
  chooses (cxrdx.inference.choose: measured on the reference images, reduced precision checked);
- ``openvino bs8 + pool``: OpenVINO (bf16 where the CPU has it);

and first (``cxrdx predict`` itself, unless ``--no-cli``): the command end to end in a fresh cache,
after the checkpoint was written as ``cxrdx train``/``import`` write it (export + the backend
measured): the first folder job against warm jobs, a 1-image job (start-up), ``--precision fp32``
and ``bf16`` by name, and the first job when the export was written without the measurement;
beside the peers' loop at the same size. ``--cli-only`` runs only that part.

plus decode+preprocess alone (the float path and the uint8 path ``Predictor`` uses),
the network alone per backend, and a large fp32 matmul: the compute limit is
matmul GFLOP/s / (DenseNet121 GFLOP per image).

Every row prints wall-clock img/s *and* img per CPU-second of this process. On a
shared machine wall img/s falls with other people's load; CPU-seconds per image
hardly move, so ``x cores`` times img/CPU-s estimates what an otherwise idle machine
gives (an upper bound: it assumes both cores stay busy). The end-to-end rows time
``Predictor.iter_predict``, the loop ``cxrdx predict`` runs (process start-up and
output formatting excluded). Weights are random unless ``--weights`` gives a trained checkpoint: speed
does not depend on them, but which precision passes the reference check does (a random network scores
every film about the same, so bf16's rounding reorders them and its AUROC check can fail).

    python benchmarks/predict_throughput.py [--images DIR] [--n 32] [--sizes 224 320] [--repeats 3] [--cli-only]
        [--weights CKPT]
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


WEIGHTS: Path | None = None  # --weights: a trained checkpoint, run at each size, instead of random weights


def make_checkpoint(path: Path, arch: str, size: int) -> Path:
    """Random ``arch`` weights at ``size`` px; with ``--weights``, that checkpoint with its recipe at ``size``
    (a trained network's outputs spread over the reference images, random ones barely do)."""
    from dataclasses import replace

    from cxrdx.imaging.preprocessing import Preprocessing
    from cxrdx.model.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
    from cxrdx.model.networks import build_model

    if WEIGHTS is not None:
        model, meta = load_checkpoint(WEIGHTS)
        save_checkpoint(path, model, replace(meta, preprocessing=replace(meta.preprocessing, size=size)))
        return path
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


def peer_loop(args, files: list[Path], size: int, workdir: Path) -> tuple[float, float]:
    """(img/s, img per CPU-s) of the peers' loop (torch eager, batch 1, float decode, no overlap)."""
    from cxrdx.model.checkpoint import load_checkpoint

    model, meta = load_checkpoint(make_checkpoint(workdir / f"peer-{size}.safetensors", args.arch, size))
    model.eval()
    float_peer_loop(model, meta, files[:2])
    wall, _best, per_cpu = measure(lambda: float_peer_loop(model, meta, files), len(files), args.repeats)
    return wall, per_cpu


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
    # what `cxrdx predict` runs by default: backend, precision and batch size measured on this machine
    # (cxrdx.inference.choose / autotune, on the checkpoint's reference images)
    from cxrdx.files import file_sha256
    from cxrdx.inference import autotune, choose

    sha = file_sha256(ckpt)
    tx = Predictor.load(ckpt, backend="onnx")
    tuned, _fresh, session = choose.tune(tx, sha, choose.candidates(sha), cores)
    choose.apply(tx, tuned, session, sha, cores)
    tuned.decode_ms = autotune.decode_ms(
        [lambda f=f: probe.prepare(probe.read(f, uint8_ok=True)[0]) for f in files[:: max(1, n // 4)][:4]]
    )
    tuned.workers = autotune.workers_for(tuned.decode_ms, tuned.net_img_per_s, cores)
    say(f"  {size} px {autotune.describe(tuned, True)}")
    add(
        f"autotuned {tuned.candidate} (bs{tuned.batch_size}, {tuned.threads}+{tuned.workers} threads) = predict default",
        lambda: tx.predict(files, batch_size=tuned.batch_size, workers=tuned.workers),
    )
    ov = None
    if openvino_available() and not args.no_openvino:
        ov = Predictor.load(ckpt, backend="openvino", precision="bf16" if choose.bf16_native() else "fp32")
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
        f"model only: autotuned {tuned.candidate} (bs{tb}, {tuned.threads} threads)",
        lambda: [tx.probabilities(x[i : i + tb]) for i in range(0, bs, tb)],
        bs,
    )
    if ov is not None:
        add(f"model only: openvino ({ov.session.precision}) bs{bs}", lambda: ov.probabilities(x), bs)
        ov32 = Predictor.load(ckpt, backend="openvino", precision="fp32")
        add(f"model only: openvino (f32) bs{bs}", lambda: ov32.probabilities(x), bs)

    by_name = dict(results)
    fp32_nets = [(v[0], k) for k, v in results if k.startswith("model only: ") and "bf16" not in k]
    fastest = max(fp32_nets)
    e2e = next(v[0] for k, v in results if k.startswith("autotuned"))
    say(
        f"  {size} px: end to end with the default (autotuned) settings = {100 * e2e / fastest[0]:.0f} % of the "
        f"fastest fp32 network alone ({fastest[1]}: {fastest[0]:.2f} img/s); target >= 85 % on a CPU without bf16"
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


def bench_cli(args, files: list[Path], size: int, workdir: Path) -> list[list[object]]:
    """``cxrdx predict`` itself, end to end (process start, export cache, autotune, decode, network, CSV).

    A fresh cache: the checkpoint is written and ``prepare_export_note`` runs as ``cxrdx train`` /
    ``import`` would (export + the backend measured); then the first folder job, then warm jobs.
    Also the first job when the checkpoint was exported without the measurement (it tunes then).
    """
    import subprocess

    from common import cxrdx_cmd

    from cxrdx.inference.on_write import prepare_export_note

    rows = []
    folder = workdir / "cli-images"
    if not folder.is_dir():
        folder.mkdir()
        for f in files:
            (folder / f.name).symlink_to(f.resolve())
    n = len(files)
    for f in files:  # in the page cache before the first job, as for every later one
        f.read_bytes()

    def job(
        ckpt: Path, env: dict, label: str, images: Path = folder, count: int = n, extra: tuple = ()
    ) -> float:
        out = workdir / "cli-out.csv"
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(
            cxrdx_cmd(
                "predict", "--weights", str(ckpt), str(images), "--format", "csv", "--out", str(out), *extra
            ),
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)  # robust to other people's load
        if done.returncode:
            sys.exit(f"cxrdx predict failed: {done.stderr[-2000:]}")
        lines = [ln for ln in done.stderr.splitlines() if "autotune:" in ln or "backend" in ln]
        say(
            f"  {size} px cli {label}: {wall:.2f} s, {count / wall:.1f} img/s, {cpu:.2f} CPU-s "
            f"(load {load_average()})"
        )
        for ln in lines:
            say(f"      {ln.strip()}")
        rows.append([f"cxrdx predict: {label}", wall, count / wall, cpu])
        return wall

    for mode in ("tuned on write", "exported on write, not tuned"):
        cache = workdir / f"cli-cache-{size}-{mode.split()[0]}"
        env = {**os.environ, "CXRDX_CACHE": str(cache)}
        if mode != "tuned on write":
            env["CXRDX_AUTOTUNE_ON_WRITE"] = "0"
        ckpt = make_checkpoint(workdir / f"cli-{size}-{mode.split()[0]}.safetensors", args.arch, size)
        os.environ.update({k: env[k] for k in ("CXRDX_CACHE", "CXRDX_AUTOTUNE_ON_WRITE") if k in env})
        t0 = time.perf_counter()
        prepare_export_note("benchmark", ckpt)
        say(
            f"  {size} px checkpoint written ({mode}): export{' + tune' if 'not' not in mode else ''} "
            f"{time.perf_counter() - t0:.1f} s"
        )
        os.environ.pop("CXRDX_AUTOTUNE_ON_WRITE", None)
        first = job(ckpt, env, f"first folder job ({mode})")
        warm = [job(ckpt, env, f"warm job {k + 1} ({mode})") for k in range(args.repeats)]
        say(
            f"  {size} px cli ({mode}): first job {first:.2f} s vs warm {min(warm):.2f} s: "
            f"+{first - min(warm):.2f} s (target <= 2 s)"
        )
        if mode == "tuned on write":
            one = workdir / "cli-one"
            one.mkdir(exist_ok=True)
            if not (one / files[0].name).exists():
                (one / files[0].name).symlink_to(files[0].resolve())
            start = min(job(ckpt, env, "one image (start-up)", one, 1) for _ in range(2))
            say(
                f"  {size} px cli warm without start-up: {n / (min(warm) - start):.1f} img/s "
                f"({n} images in {min(warm):.2f} s - {start:.2f} s for a 1-image job)"
            )
            rows.append(
                ["cxrdx predict: warm, minus a 1-image job", min(warm) - start, n / (min(warm) - start), ""]
            )
            from cxrdx.inference.choose import bf16_native

            # the precisions by name (the default above is whatever passed the check for these weights)
            for prec in ("fp32", "bf16") if bf16_native() else ("fp32",):
                extra = ("--precision", prec)
                job(ckpt, env, f"--precision {prec}, first", extra=extra)  # its own tune (64+ images)
                forced = min(
                    job(ckpt, env, f"--precision {prec}, warm", extra=extra) for _ in range(args.repeats)
                )
                rows.append(
                    [
                        f"cxrdx predict --precision {prec}: warm, minus a 1-image job",
                        forced - start,
                        n / (forced - start),
                        "",
                    ]
                )
    os.environ.pop("CXRDX_CACHE", None)
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
    parser.add_argument(
        "--weights",
        help="a trained checkpoint (e.g. make demo's demo/run/best.safetensors), run at each size",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per configuration (median)")
    parser.add_argument("--no-openvino", action="store_true", help="skip OpenVINO even when installed")
    parser.add_argument(
        "--cli-only", action="store_true", help="only time `cxrdx predict` itself (and the peers' loop)"
    )
    parser.add_argument("--no-cli", action="store_true", help="skip timing `cxrdx predict` itself")
    args = parser.parse_args()

    from cxrdx.device import available_threads

    global WEIGHTS
    WEIGHTS = Path(args.weights) if args.weights else None

    cores = available_threads()
    torch.set_num_threads(cores)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CXRDX_CACHE"] = str(Path(tmp) / "cache")  # a fresh export, not a stale cache
        files, origin = find_inputs(args.images, args.n, Path(tmp))
        import onnxruntime

        print(f"# predict throughput, {time.strftime('%Y-%m-%d %H:%M %Z')}")
        print(f"machine: {machine_line()}; onnxruntime {onnxruntime.__version__}")
        what = f"{args.weights} (trained) at each size" if args.weights else f"{args.arch}, random weights"
        print(f"{what}, {len(files)} images from {origin}; {cores} usable CPUs; repeats {args.repeats}")
        wall, per_cpu = matmul_gflops(cores, args.repeats)
        print(
            f"fp32 2048^3 matmul: {wall:.0f} GFLOP/s wall, {per_cpu:.0f} GFLOP per CPU-s "
            f"(x {cores} = {per_cpu * cores:.0f} GFLOP/s on an idle machine)"
        )
        cache = os.environ["CXRDX_CACHE"]
        for size in args.sizes:
            gflop = GFLOP_PER_IMAGE.get(size)
            if not args.no_cli:
                cli_rows = bench_cli(args, files, size, Path(tmp))
                os.environ["CXRDX_CACHE"] = cache
                peers, peers_cpu = peer_loop(args, files, size, Path(tmp))
                print(f"\n## `cxrdx predict` end to end, {size} px (load average now {load_average()})")
                print(
                    f"peers' loop (torch eager bs1, float decode, no overlap): {peers:.2f} img/s, "
                    f"{peers_cpu:.2f} img per CPU-s"
                )
                print_table(
                    ["run", "wall s", "img/s", "CPU-s", "x peers' loop (wall)", "img/CPU-s"],
                    [
                        [*r, f"{r[2] / peers:.2f}x", f"{r[2] * r[1] / r[3]:.2f}" if r[3] else ""]
                        for r in cli_rows
                    ],
                )
            if args.cli_only:
                continue
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
