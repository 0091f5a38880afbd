"""Batch 1 against batch 8, end to end (``Predictor.predict``: decode thread + network + per-batch work), per backend.

Why it exists: the autotuner once chose batch 1 when the network *alone* ran >= 10 % faster at batch 1;
this prints what each batch size gives through the whole predict loop on the same films, wall img/s and
images per CPU-second of this process (the figure other people's load moves least).

    python benchmarks/predict_batch_size.py --weights CKPT [--n 64] [--repeats 2] [--workers 1]
"""

from __future__ import annotations

import cxrdx  # noqa: F401 - first: it sets OMP_WAIT_POLICY=PASSIVE before torch loads

# isort: split

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine_line  # noqa: E402

NIH_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih" / "images"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", required=True, help="a checkpoint (its recipe's size is the network's)")
    parser.add_argument(
        "--images", default=str(NIH_IMAGES), help="a folder of PNGs (default: the NIH sample)"
    )
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="decode threads")
    args = parser.parse_args()

    from cxrdx.inference.backends import openvino_available
    from cxrdx.inference.choose import bf16_native
    from cxrdx.inference.predictor import Predictor

    files = sorted(Path(args.images).glob("*.png"))[: args.n]
    if len(files) < args.n:
        sys.exit(f"{args.images}: only {len(files)} PNGs, need --n {args.n}")
    backends = {"onnx fp32": Predictor.load(args.weights, backend="onnx")}
    if openvino_available():
        backends["openvino fp32"] = Predictor.load(args.weights, backend="openvino", precision="fp32")
        if bf16_native():
            backends["openvino bf16"] = Predictor.load(args.weights, backend="openvino", precision="bf16")
    size = backends["onnx fp32"].meta.preprocessing.size
    print(f"# batch size end to end, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"machine: {machine_line()}")
    print(
        f"{args.weights} at {size} px, {len(files)} films from {args.images}, {args.workers} decode thread(s)"
    )
    for p in backends.values():
        p.predict(files[:8], batch_size=8, workers=args.workers)  # warm-up
    best: dict[tuple[str, int], tuple[float, float]] = {}
    for _ in range(args.repeats):
        for name, p in backends.items():
            for bs in (1, 8):
                c0, t0 = cpu_seconds(), time.perf_counter()
                p.predict(files, batch_size=bs, workers=args.workers)
                wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
                rate, per_cpu = len(files) / wall, len(files) / cpu
                print(f"  {name} bs{bs}: {rate:.1f} img/s, {per_cpu:.1f} img/CPU-s (load {load_average()})")
                old = best.get((name, bs), (0.0, 0.0))
                best[(name, bs)] = (max(old[0], rate), max(old[1], per_cpu))
    print(f"\n| {size} px, best of {args.repeats} | bs1 img/s | bs8 img/s | bs1 img/CPU-s | bs8 img/CPU-s |")
    print("|---|---|---|---|---|")
    for name in backends:
        (w1, c1), (w8, c8) = best[(name, 1)], best[(name, 8)]
        print(f"| {name} | {w1:.1f} | {w8:.1f} | {c1:.1f} | {c8:.1f} |")


if __name__ == "__main__":
    main()
