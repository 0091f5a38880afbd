"""Where the time of ``cxrdx predict`` goes: per-stage timings, then a py-spy sampling profile.

1. Stages, one image at a time (no overlap), median wall ms and CPU ms per image over
   ``--n`` real 1024 px NIH PNGs (or phantoms): the PNG chunk CRC walk that cxrdx.imaging.png
   does itself, Pillow's decode, ``read_image`` whole (float and uint8), the letterbox
   (float and uint8), normalisation, and the network (ONNX Runtime, batch 8, per image).
2. ``py-spy record`` (when installed; ``pip install py-spy``) of a child process that runs
   ``Predictor.predict`` with the default backend on the same images, repeated, with
   native frames: the leaf functions with the most samples (self time), grouped.

    python benchmarks/profile_predict.py [--size 320] [--n 16] [--seconds 40]
"""

from __future__ import annotations

import cxrdx  # noqa: F401 - first: it sets OMP_WAIT_POLICY=PASSIVE before torch loads

# isort: split

import argparse
import collections
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine_line, print_table, say  # noqa: E402
from predict_throughput import find_inputs, make_checkpoint  # noqa: E402


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def stage(items, fn) -> tuple[float, float]:
    """(median wall ms, median CPU ms) of fn(item) over items."""
    walls, cpus = [], []
    for it in items:
        c0, t0 = cpu_seconds(), time.perf_counter()
        fn(it)
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu_seconds() - c0)
    return statistics.median(walls) * 1000, statistics.median(cpus) * 1000


def child(ckpt: str, files: list[str], seconds: float) -> None:
    """The profiled workload: the predict loop, over and over, for ``seconds``."""
    from cxrdx.inference.predictor import Predictor

    p = Predictor.load(ckpt)
    p.predict(files[:8])
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        p.predict(files)


def group(frame: str) -> str:
    """A coarse bucket for a leaf frame, so the summary reads as 'network / decode / ...'."""
    f = frame.lower()
    rules = [
        ("onnxruntime", "network (ONNX Runtime kernels)"),
        ("mlas", "network (ONNX Runtime kernels)"),
        ("libgomp", "thread pool spin/wait"),
        ("inflate", "PNG inflate (zlib)"),
        ("zlib", "PNG inflate (zlib)"),
        ("unpack", "Pillow unpack/filter"),
        ("png", "Pillow unpack/filter"),
        ("resample", "Pillow resize"),
        ("imaging", "Pillow (other)"),
        ("numpy", "numpy"),
        ("multiarray", "numpy"),
        ("umath", "numpy"),
        ("crc32", "zlib crc32 (cxrdx.imaging.png chunk check)"),
        ("futex", "waiting (locks, idle threads)"),
        ("pthread_cond", "waiting (locks, idle threads)"),
        ("sem_", "waiting (locks, idle threads)"),
        ("epoll", "waiting (locks, idle threads)"),
        ("wait", "waiting (locks, idle threads)"),
    ]
    for key, name in rules:
        if key in f:
            return name
    if frame.startswith("0x"):  # a native frame without a symbol: its library
        return "native, no symbol: " + frame.partition(" (")[2].rstrip(")")[:60]
    return "other: " + frame.split(" (")[0][:60]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=40.0, help="py-spy sampling time")
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1:], args.seconds)
        return

    import torch
    from PIL import Image

    from cxrdx.device import available_threads
    from cxrdx.imaging.letterbox import letterbox
    from cxrdx.imaging.png import check_png_chunks as _check_png_chunks
    from cxrdx.imaging.read import read_image
    from cxrdx.inference.predictor import Predictor

    torch.set_num_threads(available_threads())
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CXRDX_CACHE"] = str(Path(tmp) / "cache")
        files, origin = find_inputs(None, args.n, Path(tmp))
        ckpt = make_checkpoint(Path(tmp) / "model.safetensors", args.arch, args.size)
        p = Predictor.load(ckpt)
        pre = p.meta.preprocessing
        print(f"# predict profile, {time.strftime('%Y-%m-%d %H:%M %Z')}")
        print(f"machine: {machine_line()}")
        print(f"{args.arch} at {args.size} px, backend {p.backend}; {len(files)} images from {origin}")
        floats = [read_image(f)[0] for f in files]
        u8s = [read_image(f, uint8_ok=True)[0] for f in files]
        squares = [letterbox(u, args.size)[0] for u in u8s]
        x = np.stack([pre(u)[0] for u in u8s[:8]])
        p.probabilities(x)

        def decode_only(f: Path) -> None:
            with Image.open(f) as im:
                im.load()

        rows = [
            ["PNG chunk CRC walk (cxrdx.imaging.png.check_png_chunks)", *stage(files, _check_png_chunks)],
            ["Pillow open + decode (im.load)", *stage(files, decode_only)],
            ["read_image -> float32 [0, 1]", *stage(files, read_image)],
            ["read_image(uint8_ok=True) -> uint8", *stage(files, lambda f: read_image(f, uint8_ok=True))],
            [f"letterbox float -> {args.size}", *stage(floats, lambda a: letterbox(a, args.size))],
            [f"letterbox uint8 -> {args.size}", *stage(u8s, lambda a: letterbox(a, args.size))],
            [
                "normalise (uint8 square -> C x S x S float32)",
                *stage(squares, lambda s: pre.to_input(s[None])),
            ],
        ]
        wall, cpu = stage([x] * 3, p.probabilities)
        rows.append([f"network, {p.backend} batch 8 (per image)", wall / 8, cpu / 8])
        total = rows[3][1] + rows[5][1] + rows[6][1] + rows[7][1]
        for r in rows:
            r.append(f"{100 * r[1] / total:.0f}%" if r in (rows[3], rows[5], rows[6], rows[7]) else "")
        print(f"\n## stages, one at a time (median over {len(files)} images; load {load_average()})")
        print_table(["stage", "wall ms/image", "CPU ms/image", "share of the predict path"], rows)

        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(spy).exists():
            print("\npy-spy is not installed (pip install py-spy): sampling profile skipped")
            return
        raw = Path(tmp) / "profile.txt"
        cmd = [spy, "record", "--native", "--idle", "-r", "50", "--format", "raw", "-o", str(raw), "--"]
        cmd += [
            sys.executable,
            __file__,
            "--seconds",
            str(args.seconds),
            "--child",
            str(ckpt),
            *map(str, files),
        ]
        say("py-spy: " + " ".join(cmd[:9]) + " ...")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not raw.exists():
            print(f"\npy-spy failed (exit {done.returncode}): {done.stderr.strip()[-400:]}")
            return
        leaf: collections.Counter[str] = collections.Counter()
        grouped: collections.Counter[str] = collections.Counter()
        total_samples = 0
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frame = stack.split(";")[-1]
            leaf[frame] += n
            grouped[group(frame)] += n
            total_samples += n
        print(
            f"\n## py-spy (--native --idle, 50 Hz, {args.seconds:.0f} s of Predictor.predict on {len(files)} "
            f"images, every thread; load {load_average()}): {total_samples} samples"
        )
        print_table(
            ["where (leaf frame, grouped)", "share of samples"],
            [[k, f"{100 * v / total_samples:.1f}%"] for k, v in grouped.most_common(12)],
        )
        print_table(
            ["top leaf frames", "share of samples"],
            [[k[:100], f"{100 * v / total_samples:.1f}%"] for k, v in leaf.most_common(12)],
        )


if __name__ == "__main__":
    main()
