"""Where the DICOM node's CPU goes per image: cProfile of the processing path (``Processing``, results in
this process) on real NIH PNGs wrapped as DICOM, with the backend and precision ``cxrdx listen`` uses.

    python benchmarks/profile_node.py --nih 16 [--weights CKPT] [--net-size 320] [--top 30]

Prints CPU seconds per image for the whole path and cProfile's top functions (total time).
"""

from __future__ import annotations

import cxrdx  # noqa: F401 - first: it sets OMP_WAIT_POLICY=PASSIVE before torch loads

# isort: split

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402
from listen_throughput import make_nih_dicoms, make_weights  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="checkpoint (default: random DenseNet121 at --net-size)")
    ap.add_argument("--net-size", type=int, default=320)
    ap.add_argument("--nih", type=int, default=16)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--work", help="work folder (default: a temporary one)")
    args = ap.parse_args()

    import torch

    from cxrdx.device import available_threads
    from cxrdx.inference import choose
    from cxrdx.inference.heatmaps import capture_maps
    from cxrdx.inference.predictor import Predictor
    from cxrdx.interop.processing import Processing
    from cxrdx.interop.sr import algorithm_for, results_for

    threads = available_threads()
    torch.set_num_threads(threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="cxrdx-profile-node-"))
    work.mkdir(parents=True, exist_ok=True)
    weights = Path(args.weights) if args.weights else make_weights(work / "d121.safetensors", args.net_size)
    files = sorted((work / "dicom").glob("*.dcm"))[: args.nih] or make_nih_dicoms(work / "dicom", args.nih)
    backend, precision = choose.load_args(str(weights), args.backend, args.precision, threads)
    predictor = Predictor.load(weights, backend=backend, precision=precision, threads=threads)
    capture_maps(predictor)
    algorithm = algorithm_for(weights, predictor.meta, predictor.calibrated, thresholds=predictor.thresholds)
    algorithm["demo"] = False
    processing = Processing(predictor, results_for, algorithm, result_workers=0)
    print(f"machine: {machine_line()}")
    print(f"{len(files)} NIH DICOMs, backend {predictor.backend}, precision {predictor.precision}")
    list(processing(files[:4]))  # warm-up
    prof = cProfile.Profile()
    t, c = time.perf_counter(), time.process_time()
    prof.enable()
    out = list(processing(files))
    prof.disable()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    assert all(isinstance(r, list) for _, r in out), [r for _, r in out if not isinstance(r, list)]
    print(f"{len(files) / wall:.2f} img/s, {cpu / len(files):.3f} CPU-s per image (profiled)")
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.top)
    print(s.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
