"""Peak RSS of `cxrdx predict` after 200 and after 2,000 images: streamed output keeps memory flat.

Each count runs as its own subprocess (``python -m cxrdx predict``, the real CLI) on a
folder of that many small PNGs; the peak is the kernel's ``ru_maxrss`` (wait4) and the
sampled VmHWM. The target (issue 16): streamed formats (csv, jsonl) peak within 10 % at
2,000 images of the peak at 200. ``--format json`` (one array, built at the end) is shown
beside them for contrast. The network does not matter for the *growth*, so the default is
the tiny test network at 64 px (``--arch densenet121 --size 320`` for the real one); the
ONNX export is made once before the timed runs, so no run pays for it.

Run:  .venv/bin/python benchmarks/predict_memory.py
      .venv/bin/python benchmarks/predict_memory.py --counts 200 2000 20000 --formats csv
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MemoryWatch, cxrdx_cmd, load_average, machine_line, print_table, say  # noqa: E402


def _checkpoint(tmp: Path, arch: str, size: int) -> Path:
    import torch

    from cxrdx.imaging.preprocessing import Preprocessing
    from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
    from cxrdx.model.networks import build_model

    torch.manual_seed(0)
    path = tmp / f"{arch}-{size}.safetensors"
    save_checkpoint(
        path, build_model(arch), CheckpointMeta(architecture=arch, preprocessing=Preprocessing(size=size))
    )
    return path


def _folder(root: Path, n: int, px: int) -> Path:
    """``n`` gray PNGs of ``px`` x ``px`` (smooth noise), written once per count."""
    import numpy as np
    from PIL import Image

    folder = root / f"images-{n}"
    folder.mkdir()
    rng = np.random.default_rng(n)
    base = rng.integers(0, 255, (px, px), dtype=np.uint8)
    for i in range(n):
        img = np.roll(base, i % px, axis=i % 2)
        Image.fromarray(img).save(folder / f"img{i:06d}.png")
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", type=int, nargs="+", default=[200, 2000])
    p.add_argument("--formats", nargs="+", default=["csv", "jsonl", "json"])
    p.add_argument("--arch", default="densenet-tiny")
    p.add_argument("--size", type=int, default=64, help="network input size")
    p.add_argument("--image-px", type=int, default=64, help="size of the PNGs written")
    p.add_argument("--backend", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--setup", metavar="DIR", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.setup:
        _checkpoint(Path(args.setup), args.arch, args.size)
        for n in args.counts:
            _folder(Path(args.setup), n, args.image_px)
        return 0

    say(machine_line())
    with tempfile.TemporaryDirectory(prefix="cxrdx-predict-memory-") as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "CXRDX_CACHE": str(tmp / "cache")}
        # The setup (torch, the images) runs in a child: Linux carries a process's peak RSS across
        # fork + exec, so a heavy parent would hide the smaller peaks of the runs it starts.
        setup = [sys.executable, __file__, "--setup", str(tmp), "--arch", args.arch, "--size", str(args.size)]
        setup += ["--image-px", str(args.image_px), "--counts", *map(str, args.counts)]
        subprocess.run(setup, check=True)
        weights = tmp / f"{args.arch}-{args.size}.safetensors"
        folders = {n: tmp / f"images-{n}" for n in args.counts}
        warm = cxrdx_cmd(
            "predict", "--weights", str(weights), str(next(iter(folders.values())) / "img000000.png")
        )
        MemoryWatch([*warm, "--backend", args.backend], env=env).wait(
            timeout=args.timeout
        )  # the one-off export
        rows = []
        for fmt in args.formats:
            first = None
            for n, folder in folders.items():
                out = tmp / f"out-{n}.{fmt}"
                cmd = cxrdx_cmd(
                    "predict", "--weights", str(weights), str(folder), "--format", fmt, "--out", str(out),
                    "--backend", args.backend, "--batch-size", str(args.batch_size),
                )  # fmt: skip
                load = load_average()
                result = MemoryWatch(cmd, env=env).wait(timeout=args.timeout)
                first = result.peak_rss_mb if first is None else first
                growth = 100 * (result.peak_rss_mb / first - 1)
                verdict = "" if fmt == "json" or n == args.counts[0] else ("ok" if growth <= 10 else "> 10 %")
                rows.append(
                    [fmt, n, f"{result.seconds:.1f}", f"{result.peak_rss_mb:.0f}", f"{growth:+.1f} %", verdict,
                     f"exit {result.rc}", load]
                )  # fmt: skip
                say(
                    f"{fmt} {n}: peak {result.peak_rss_mb:.0f} MiB in {result.seconds:.0f} s (exit {result.rc})"
                )
        print(
            f"\n{args.arch} at {args.size} px, {args.image_px} px PNGs, backend {args.backend}, batch {args.batch_size}"
        )
        print_table(
            [
                "format",
                "images",
                "seconds",
                "peak RSS MiB",
                "vs first count",
                "<= +10 %",
                "exit",
                "load at start",
            ],
            rows,
        )
    print(f"load average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
