"""End-to-end prediction throughput on CPU: decode 1024x1024 PNG -> preprocess -> DenseNet121.

One run, the same images for every configuration:

- ``torch eager bs1``: the naive loop (decode, then the network on one image, no overlap);
- ``torch channels_last``: batched, channels_last memory format, decoding in a thread pool;
- ``onnx``: ONNX Runtime (what ``--backend auto`` picks on CPU), batched, decoding in a thread pool;
- ``onnx, no overlap``: ONNX Runtime batched, decoding inline (shows what the pool buys);

plus the decode+preprocess rate alone and model-only rates, so a slow configuration can
be attributed. Weights are random (speed does not depend on them). Numbers depend on
what else runs on the machine: report them with the core count and the load.

    python benchmarks/predict_throughput.py [--images DIR] [--n 32] [--sizes 224 320]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
NIH_IMAGES = REPO.parent / "shared" / "data" / "nih" / "images"


def find_inputs(folder: str | None, n: int, workdir: Path) -> tuple[list[Path], str]:
    """``n`` 1024x1024 PNGs: the given folder, the real NIH sample when present, else phantoms."""
    if folder or NIH_IMAGES.is_dir():
        src = Path(folder) if folder else NIH_IMAGES
        files = sorted(src.glob("*.png"))[:n]
        if len(files) < n:
            sys.exit(f"{src}: only {len(files)} PNGs, need --n {n}")
        return files, f"{src} (real)"
    from cxrdx.phantom import write_dataset

    out = write_dataset(workdir / "phantoms", n=n, size=1024, seed=0)
    return sorted((Path(out) / "images").glob("*.png"))[:n], "phantoms written at 1024 px"


def make_checkpoint(path: Path, arch: str, size: int) -> Path:
    from cxrdx.model import CheckpointMeta, build_model, save_checkpoint
    from cxrdx.preprocess import Preprocessing

    torch.manual_seed(0)
    save_checkpoint(
        path, build_model(arch), CheckpointMeta(architecture=arch, preprocessing=Preprocessing(size=size))
    )
    return path


def timed(fn, n_images: int, repeats: int = 1) -> float:
    """Images per second of ``fn()`` (best of ``repeats``, after the caller's warm-up)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n_images / best


def bench_size(files: list[Path], arch: str, size: int, batch: int, workdir: Path) -> list[tuple[str, float]]:
    from cxrdx.model import load_checkpoint
    from cxrdx.predict import Predictor

    ckpt = make_checkpoint(workdir / f"{arch}-{size}.safetensors", arch, size)
    n = len(files)
    rows: list[tuple[str, float]] = []

    probe = Predictor.load(ckpt, backend="torch")
    rows.append(("decode+preprocess only (pool)", timed(lambda: _decode_all(probe, files, pool=True), n)))

    model, meta = load_checkpoint(ckpt)
    eager = Predictor(model, meta, channels_last=False)
    eager.predict(files[:1], batch_size=1, workers=0)  # warm-up
    rows.append(
        ("torch eager bs1 (no overlap)", timed(lambda: eager.predict(files, batch_size=1, workers=0), n))
    )

    cl = Predictor.load(ckpt, backend="torch")
    cl.predict(files[:batch], batch_size=batch)
    rows.append(
        (f"torch channels_last bs{batch} + pool", timed(lambda: cl.predict(files, batch_size=batch), n))
    )

    ox = Predictor.load(ckpt, backend="onnx")
    ox.predict(files[:batch], batch_size=batch)
    rows.append((f"onnx bs{batch} + pool", timed(lambda: ox.predict(files, batch_size=batch), n)))
    rows.append(
        (f"onnx bs{batch}, no overlap", timed(lambda: ox.predict(files, batch_size=batch, workers=0), n))
    )

    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    rows.append(
        (
            "model only: torch eager bs1",
            timed(lambda: [eager.probabilities(x[i : i + 1]) for i in range(batch)], batch),
        )
    )
    rows.append((f"model only: torch channels_last bs{batch}", timed(lambda: cl.probabilities(x), batch, 2)))
    rows.append((f"model only: onnx bs{batch}", timed(lambda: ox.probabilities(x), batch, 2)))
    return rows


def _decode_all(predictor, files, pool: bool) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from cxrdx.predict import default_workers

    def one(f):
        return predictor.prepare(predictor.read(f)[0])[0]

    if pool:
        with ThreadPoolExecutor(default_workers()) as ex:
            list(ex.map(one, files))
    else:
        [one(f) for f in files]


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
    args = parser.parse_args()

    from cxrdx.export import available_threads

    threads = available_threads()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CXRDX_CACHE_DIR"] = str(Path(tmp) / "cache")  # time a fresh export, not a stale cache
        files, origin = find_inputs(args.images, args.n, Path(tmp))
        import onnxruntime

        print(
            f"{args.arch}, {len(files)} images from {origin}; {threads} CPU threads (os.cpu_count={os.cpu_count()}, "
            f"load avg {os.getloadavg()[0]:.2f}); torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
        )
        for size in args.sizes:
            rows = bench_size(files, args.arch, size, args.batch_size, Path(tmp))
            base = dict(rows)["torch eager bs1 (no overlap)"]
            print(f"\n{size} px               configuration   img/s   x eager bs1")
            for name, rate in rows:
                print(f"{name:>40} {rate:7.2f}   {rate / base:5.2f}")
            end_to_end = [(r, n) for n, r in rows if "model only" not in n and "decode" not in n]
            best_rate, best_name = max(end_to_end)
            print(f"{'best end-to-end':>40} {best_rate:7.2f}   ({best_name})")


if __name__ == "__main__":
    main()
