"""JPEG decode at a reduced DCT scale (``read_image(path, target=...)``) against the exact decode.

CheXpert and MIMIC-CXR-JPG ship ~2,500 px JPEGs. This script makes such files from the real
NIH PNGs in ../shared/data/nih/images: each film upscaled 1024 -> 2500 px (Pillow's Lanczos)
and saved at JPEG quality 95, plus the same films at their original 1024 px (quality 95).
For each network size it prints, full decode vs the reduced decode ``Preprocessing.decode_target``
asks for (the scale ``cxrdx.imaging.jpeg`` picks):

- decode CPU ms per film (``read_image`` alone) and decode + square CPU ms (what a predict worker
  does), the best of ``--repeats`` passes;
- the network squares' difference (uint8 levels: max and mean |delta|);
- the model's outputs: max |delta p| and max |delta logit| between the two decodes, and calls
  flipped at 0.5 (and at the checkpoint's own thresholds when it has them).

Models: ``--weights`` checkpoints (each at its own recipe's size, e.g. the ``make demo`` model,
64 px), and a random-init DenseNet121 (seed 0) for each ``--sizes`` entry. No public
(trained on real films) checkpoint is available offline here; a random network's outputs
move little with its input, so its delta p understates a trained model's: read the input
deltas and the trained checkpoint's rows first.

Run:  .venv/bin/python benchmarks/jpeg_decode.py --n 24 --sizes 224 320 --weights demo/run/model.safetensors
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_average, machine_line, print_table, say  # noqa: E402

NIH = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nih" / "images"


def make_jpegs(n: int, sides: list[int], workdir: Path) -> dict[str, list[Path]]:
    """The first n NIH films as JPEGs (quality 95) at each side: 1024 is the film itself, other sides
    are Lanczos resizes (an upscale adds no detail; a downscale keeps a full-band, native-like film)."""
    from PIL import Image

    pngs = sorted(NIH.glob("*.png"))[:n]
    if not pngs:
        raise SystemExit(f"no NIH PNGs in {NIH}")
    out: dict[str, list[Path]] = {f"{side} px": [] for side in sides}
    for png in pngs:
        with Image.open(png) as im:
            gray = im.convert("L")
        for side in sides:
            path = workdir / f"{png.stem}_{side}.jpg"
            sized = gray if gray.size == (side, side) else gray.resize((side, side), Image.Resampling.LANCZOS)
            sized.save(path, quality=95)
            out[f"{side} px"].append(path)
    return out


def timed(fn, files: list[Path], repeats: int) -> tuple[float, list]:
    """The best of the repeats' per-file mean CPU ms (this process's CPU time: decoding and resizing are
    single-threaded, and CPU time is not inflated by waiting for a core on a shared machine)."""
    passes, results = [], []
    for _ in range(repeats):
        t0 = time.process_time()
        results = [fn(f) for f in files]
        passes.append((time.process_time() - t0) * 1000 / len(files))
    return min(passes), results


def _logit(p: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    p = np.clip(p, eps, 1 - eps)
    return np.log(p / (1 - p))


def random_checkpoint(path: Path, size: int) -> Path:
    import torch

    from cxrdx.imaging.preprocessing import Preprocessing
    from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
    from cxrdx.model.networks import build_model

    torch.manual_seed(0)
    meta = CheckpointMeta(architecture="densenet121", preprocessing=Preprocessing(size=size))
    save_checkpoint(path, build_model("densenet121"), meta)
    return path


def compare(name: str, predictor, sets: dict[str, list[Path]], repeats: int) -> list[list[object]]:
    from cxrdx.imaging.read import read_image

    prep = predictor.meta.preprocessing
    target = prep.decode_target
    rows = []
    for label, files in sets.items():

        def full(f: Path):
            return read_image(f, uint8_ok=True)

        def reduced(f: Path):
            return read_image(f, uint8_ok=True, target=target)

        ms_full, got_full = timed(full, files, repeats)
        ms_red, got_red = timed(reduced, files, repeats)
        ms_full_sq, _ = timed(lambda f: prep.square(full(f)[0]), files, repeats)
        ms_red_sq, _ = timed(lambda f: prep.square(reduced(f)[0]), files, repeats)
        scales = sorted({m.decode_scale for _, m in got_red})
        sq_full = np.stack([prep.square(img)[0] for img, _ in got_full]).astype(np.int16)
        sq_red = np.stack([prep.square(img)[0] for img, _ in got_red]).astype(np.int16)
        delta_sq = np.abs(sq_full - sq_red)
        p_full, _ = predictor.probabilities(prep.to_input(sq_full.astype(np.uint8)))
        p_red, _ = predictor.probabilities(prep.to_input(sq_red.astype(np.uint8)))
        dp = np.abs(p_full - p_red)
        dlogit = np.abs(_logit(p_full) - _logit(p_red))
        flips = int(((p_full >= 0.5) != (p_red >= 0.5)).sum())
        thr = predictor.thresholds
        if thr:
            t = np.array([thr.get(n, 0.5) for n in predictor.labels])
            flips_thr = str(int(((p_full >= t) != (p_red >= t)).sum()))
        else:
            flips_thr = "-"
        rows.append(
            [
                name,
                f"{prep.size} px",
                label,
                "/".join(f"1/{s}" for s in scales),
                f"{ms_full:.1f}",
                f"{ms_red:.1f}",
                f"{ms_full_sq:.1f}",
                f"{ms_red_sq:.1f}",
                int(delta_sq.max()),
                f"{delta_sq.mean():.3f}",
                f"{dp.max():.5f}",
                f"{dlogit.max():.4f}",
                f"{flips} / {dp.size}",
                flips_thr,
            ]
        )
        say(" | ".join(str(v) for v in rows[-1]) + f"  (load {load_average()})")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="NIH films to use")
    parser.add_argument("--sides", type=int, nargs="+", default=[2500, 1024], help="JPEG sides to make")
    parser.add_argument("--sizes", type=int, nargs="*", default=[224, 320], help="random-init model sizes")
    parser.add_argument("--weights", nargs="*", default=[], help="trained checkpoints to compare too")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scales", type=int, nargs="+", help="allowed reductions (default: cxrdx's SCALES)")
    parser.add_argument("--margin", type=float, help="decoded side / resized side (default: DECODE_MARGIN)")
    args = parser.parse_args()
    from cxrdx.imaging import jpeg

    jpeg.SCALES = tuple(sorted(args.scales or jpeg.SCALES, reverse=True))
    jpeg.DECODE_MARGIN = args.margin or jpeg.DECODE_MARGIN
    import torch

    from cxrdx.inference.predictor import Predictor

    torch.set_num_threads(args.threads)
    say(f"machine: {machine_line()}")
    load_before = load_average()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cxrdx-jpeg-") as tmp:
        work = Path(tmp)
        sets = make_jpegs(args.n, args.sides, work)
        models = [(Path(w).name, Path(w)) for w in args.weights]
        models += [
            (f"random d121 ({s})", random_checkpoint(work / f"r{s}.safetensors", s)) for s in args.sizes
        ]
        for name, path in models:
            predictor = Predictor.load(path, backend="torch", threads=args.threads)
            rows += compare(name, predictor, sets, args.repeats)
    print(f"machine: {machine_line()}")
    print(f"load average before {load_before}, after {load_average()}; {args.n} films, JPEG quality 95")
    print(f"allowed scales 1/{', 1/'.join(map(str, jpeg.SCALES))}, margin {jpeg.DECODE_MARGIN:g}")
    headers = [
        "model", "input", "JPEG", "scale", "decode ms full", "reduced", "decode+square ms full", "reduced",
        "max |d square| (levels)", "mean |d square|", "max |d p|", "max |d logit|", "flips @0.5", "flips @thr",
    ]  # fmt: skip
    print_table(headers, rows)


if __name__ == "__main__":
    main()
