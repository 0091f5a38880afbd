"""Wall time of `cxrdx explain` of 12 films (top 3 findings each), before and after heatmaps from the forward pass.

Issue 31: explaining 12 films took 30 s, since Grad-CAM ran a backward pass in PyTorch fp32. Now the
exported graph's third output ``cams`` gives every finding's class activation map from the
prediction's own pass (cxrdx.inference.heatmaps), which for DenseNet's average pool + linear
head is Grad-CAM (tests/explain/test_cam.py).

1. The real CLI, as a subprocess, on a DenseNet121 checkpoint at 320 px (random weights: the
   speed does not depend on them) and real NIH PNGs from ../shared/data (phantoms when absent),
   once per source tree given (``--src``; e.g. ``--src /work/main/src src`` for before / after),
   each with its own ONNX cache, warmed by one untimed run (which includes the export).
2. In one process, per film: predict + the top 3 heatmaps, by the backward pass (GradCam.many,
   what Predictor.explain ran before), by the PyTorch forward pass (ForwardCam) and from the ONNX
   session's captured ``cams`` (what `cxrdx explain` runs now).

Run:  .venv/bin/python benchmarks/explain_speed.py --src /work/main/src src
      .venv/bin/python benchmarks/explain_speed.py --arch densenet-tiny --size 64 --n 4   (smoke)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, cxrdx_cmd, machine_line, print_table, say  # noqa: E402

NIH_IMAGES = REPO.parent / "shared/data/nih/images"


def films(n: int, folder: Path) -> list[Path]:
    if NIH_IMAGES.is_dir():
        return sorted(NIH_IMAGES.glob("*.png"))[:n]
    from cxrdx.phantom.dataset import write_dataset

    out = write_dataset(folder / "phantoms", n=n, size=512, seed=0)
    return sorted((Path(out) / "images").glob("*.png"))[:n]


def checkpoint(arch: str, size: int, path: Path) -> Path:
    import torch

    from cxrdx.imaging.preprocessing import Preprocessing
    from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
    from cxrdx.model.networks import build_model

    torch.manual_seed(0)
    save_checkpoint(
        path, build_model(arch), CheckpointMeta(architecture=arch, preprocessing=Preprocessing(size=size))
    )
    return path


def cli_times(
    src: str, ckpt: Path, images: list[Path], work: Path, repeats: int
) -> tuple[float, list[float]]:
    env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()), CXRDX_CACHE=str(work / "cache"))
    env["CXRDX_EXPORT_ON_WRITE"] = "1"
    argv = cxrdx_cmd("explain", "--weights", str(ckpt), "--out", str(work / "out"), *map(str, images))
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{src}: cxrdx explain failed ({done.returncode}):\n{done.stderr[-2000:]}")
        say(f"{src}: run {i} {times[-1]:.1f} s{' (warm-up, exports)' if i == 0 else ''}")
    return times[0], times[1:]


def in_process(ckpt: Path, images: list[Path], top_k: int) -> list[tuple[str, float]]:
    """Seconds per film for predict + top_k heatmaps, three ways (the same films, the same checkpoint)."""
    import numpy as np
    import torch

    from cxrdx.explain.cam import ForwardCam
    from cxrdx.explain.gradcam import GradCam, to_source
    from cxrdx.inference.heatmaps import capture_maps
    from cxrdx.inference.predictor import Predictor

    onnx = Predictor.load(ckpt, backend="onnx")
    capture_maps(onnx)
    torch_net = Predictor.load(ckpt, backend="torch")
    arrays = [onnx.read(p)[0] for p in images]
    rows = []

    def per_film(fn) -> float:
        fn(arrays[0])  # warm-up
        start = time.perf_counter()
        for a in arrays:
            fn(a)
        return (time.perf_counter() - start) / len(arrays)

    def top(pred) -> list[int]:
        return list(np.argsort([-pred.probabilities[n] for n in onnx.labels])[:top_k])

    def with_maker(maker) -> object:
        def run(a):
            pred = onnx.predict([a], batch_size=1, workers=0)[0]
            x, box = torch_net.prepare(a)
            maps = maker.many(torch.from_numpy(x[None]), top(pred))
            return [to_source(m[0], box) for m in maps]

        return run

    rows.append(
        ("backward pass (GradCam.many, PyTorch fp32; before)", per_film(with_maker(GradCam(torch_net.model))))
    )
    rows.append(
        ("forward pass (ForwardCam, PyTorch fp32)", per_film(with_maker(ForwardCam(torch_net.model))))
    )

    def from_session(a):
        pred = onnx.predict([a], batch_size=1, workers=0)[0]
        return [onnx.explain(a, onnx.labels[i]) for i in top(pred)]

    rows.append(("ONNX session's cams, captured by the prediction (now)", per_film(from_session)))

    def predict_only(a):
        return onnx.predict([a], batch_size=1, workers=0)[0]

    rows.append(("(predict alone, ONNX Runtime)", per_film(predict_only)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", nargs="+", default=[str(REPO / "src")], help="source trees to time the CLI of")
    ap.add_argument("--arch", default="densenet121")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--n", type=int, default=12, help="films")
    ap.add_argument("--repeats", type=int, default=2, help="timed CLI runs per source tree, after a warm-up")
    ap.add_argument("--no-cli", action="store_true", help="only the in-process comparison")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = films(args.n, work)
        ckpt = checkpoint(args.arch, args.size, work / "model.safetensors")
        say(f"{len(images)} films, {args.arch} at {args.size} px")
        rows = []
        if not args.no_cli:
            for i, src in enumerate(args.src):
                warm, times = cli_times(src, ckpt, images, work / f"tree{i}", args.repeats)
                med = statistics.median(times)
                rows.append(
                    [
                        src,
                        f"{warm:.1f}",
                        " ".join(f"{t:.1f}" for t in times),
                        f"{med:.1f}",
                        f"{med / len(images):.2f}",
                    ]
                )
        os.environ["CXRDX_CACHE"] = str(work / "tree0" / "cache")
        inproc = in_process(ckpt, images, top_k=3)
        print(f"machine: {machine_line()}")
        print(
            f"`cxrdx explain` of {len(images)} films (top 3 each), {args.arch} at {args.size} px, CLI wall time:\n"
        )
        if rows:
            print_table(["source tree", "warm-up s (export)", "runs s", "median s", "s / film"], rows)
        print(f"\nin one process, per film: predict + 3 heatmaps (machine: {machine_line()})\n")
        print_table(["heatmaps from", "s / film"], [[name, f"{s:.3f}"] for name, s in inproc])


if __name__ == "__main__":
    main()
