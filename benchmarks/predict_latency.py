"""Single-image latency as the app sees it: one upload -> probabilities, and -> + Grad-CAM top 3.

Runs exactly what ``cxrdx serve`` runs per upload (``cxrdx.app.analyzer.Analyzer.predict``: read the
file, ``Predictor.predict([image], batch_size=1, workers=0)``; then ``Predictor.explain`` and
``overlay_image`` for the 3 most probable findings), on real 1024 px NIH PNGs, for each
backend. Each image is a different file, so the Grad-CAM cache of the previous image
never helps; the first request of each backend is a warm-up and is not counted.

Also times the old Grad-CAM (``GradCam.__call__``: a forward and a full backward per
finding, what ``explain`` did before) against ``GradCam.many`` (one forward for all),
on the same input, and prints their largest difference.

Reports the median and best over ``--n`` images, in ms, plus CPU-ms per request of this
process (less sensitive to other people's load than wall time).

    python benchmarks/predict_latency.py [--size 320] [--n 5] [--backends onnx torch openvino]
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
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine_line, print_table, say  # noqa: E402
from predict_throughput import find_inputs, make_checkpoint  # noqa: E402

TOP_K = 3
TARGETS_MS = {"predict": 150.0, "predict + Grad-CAM top 3": 600.0}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one_request(predictor, path: Path, heatmaps: bool) -> None:
    from cxrdx.app.analyzer import Analyzer
    from cxrdx.app.components import overlay_image

    image, pred = Analyzer(predictor).predict(str(path))
    if heatmaps:
        for name, _ in pred.ranked()[:TOP_K]:
            overlay_image(image, predictor.explain(image, name))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--n", type=int, default=5, help="timed requests per row (different images)")
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--backends", nargs="+", default=["onnx", "torch", "openvino"])
    parser.add_argument("--images", help="folder of PNGs (default: ../shared/data/nih/images or phantoms)")
    parser.add_argument("--no-old-gradcam", action="store_true", help="skip timing the per-finding Grad-CAM")
    args = parser.parse_args()

    from cxrdx.device import available_threads
    from cxrdx.inference.backends import openvino_available
    from cxrdx.inference.predictor import Predictor

    torch.set_num_threads(available_threads())
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CXRDX_CACHE"] = str(Path(tmp) / "cache")
        files, origin = find_inputs(args.images, 2 * args.n + 2, Path(tmp))
        ckpt = make_checkpoint(Path(tmp) / "model.safetensors", args.arch, args.size)
        print(f"# single-image latency, {time.strftime('%Y-%m-%d %H:%M %Z')}")
        print(f"machine: {machine_line()}")
        print(
            f"{args.arch} at {args.size} px, random weights; images from {origin}; {args.n} requests per row"
        )
        rows = []
        for backend in args.backends:
            if backend == "openvino" and not openvino_available():
                say("openvino not installed: skipped")
                continue
            predictor = Predictor.load(ckpt, backend=backend)
            name = backend if backend != "openvino" else f"openvino ({predictor.session.precision})"
            for label, heat in (("predict", False), ("predict + Grad-CAM top 3", True)):
                use = files[1 : 1 + args.n] if not heat else files[1 + args.n : 1 + 2 * args.n]
                one_request(predictor, files[0], heat)  # warm-up
                walls, cpus = [], []
                for f in use:
                    c0, t0 = cpu_seconds(), time.perf_counter()
                    one_request(predictor, f, heat)
                    walls.append(time.perf_counter() - t0)
                    cpus.append(cpu_seconds() - c0)
                med = statistics.median(walls) * 1000
                target = TARGETS_MS[label]
                rows.append(
                    [
                        name,
                        label,
                        med,
                        min(walls) * 1000,
                        statistics.median(cpus) * 1000,
                        f"<= {target:.0f}: {'met' if med <= target else 'not met'}",
                    ]
                )
                say(f"  {name} {label}: {med:.0f} ms (load {load_average()})")
        print_table(["backend", "request", "median ms", "best ms", "CPU-ms", "target (median)"], rows)

        if not args.no_old_gradcam:
            from cxrdx.explain.gradcam import GradCam
            from cxrdx.model.checkpoint import load_checkpoint

            model, meta = load_checkpoint(ckpt)
            model.eval()
            from cxrdx.imaging.read import read_image

            x = torch.from_numpy(meta.preprocessing(read_image(files[0])[0])[0][None])
            cam = GradCam(model)
            classes = list(range(TOP_K))
            t0 = time.perf_counter()
            old = np.stack([cam(x, c) for c in classes])
            t1 = time.perf_counter()
            new = cam.many(x, classes)
            t2 = time.perf_counter()
            print(
                f"\nGrad-CAM for {TOP_K} findings, torch eager, {args.size} px: per finding (forward + full "
                f"backward each) {1000 * (t1 - t0):.0f} ms, GradCam.many (one forward) {1000 * (t2 - t1):.0f} ms, "
                f"max |difference| {float(np.abs(old - new).max()):.1e}"
            )
        print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
