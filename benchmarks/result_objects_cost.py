"""CPU seconds per image of each part of the node's work beside the network (issue 29).

On the same DICOM files (real NIH PNGs wrapped as DICOM, or the given files), one process measures
``time.process_time`` per image of: the network (``Predictor.predict``, the loop of ``cxrdx predict
--format csv``), the Grad-CAM maps of the SEG's findings (``segmentation.heatmap_findings``: as the
node makes them, from the prediction's own pass where the graph has ``cams``, ``capture_maps``), building
the SEG, building the SR (as the node does: from pieces compiled on first use, ``sr_template``, the first use
shown apart; and with ``checked=True``: highdicom's ComprehensiveSR over the whole tree, the cost before issue
29), and encoding both (``processing.encode``). The listener's
end-to-end rate is ``benchmarks/listen_throughput.py --compare seg``; this says where its time goes.

    python benchmarks/result_objects_cost.py [--weights CKPT] [--net-size 320] [--nih 8] [FILE.dcm ...]
"""

from __future__ import annotations

import cxrdx  # noqa: F401 - first: it sets OMP_WAIT_POLICY=PASSIVE before torch loads

# isort: split

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402
from listen_throughput import make_nih_dicoms, make_weights  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="DICOM files (default: --nih real NIH PNGs wrapped as DICOM)")
    ap.add_argument("--weights", help="checkpoint (default: random DenseNet121 at --net-size)")
    ap.add_argument("--net-size", type=int, default=320)
    ap.add_argument("--nih", type=int, default=8)
    ap.add_argument("--backend", default="auto", help="the network's backend (Grad-CAM runs on torch)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    import pydicom
    import torch

    from cxrdx.device import available_threads
    from cxrdx.inference import choose
    from cxrdx.inference.heatmaps import capture_maps, heatmaps
    from cxrdx.inference.predictor import Predictor
    from cxrdx.interop.processing import encode
    from cxrdx.interop.segmentation import heatmap_findings, heatmap_segmentation, segment_findings
    from cxrdx.interop.sr import algorithm_for, structured_report
    from cxrdx.interop.study import source_header

    torch.set_num_threads(available_threads())
    work = Path(tempfile.mkdtemp(prefix="cxrdx-objects-"))
    weights = Path(args.weights) if args.weights else make_weights(work / "d121.safetensors", args.net_size)
    files = [Path(f) for f in args.files] or make_nih_dicoms(work / "dicom", args.nih)
    threads = available_threads()
    backend, precision = choose.load_args(str(weights), args.backend, "auto", threads)  # as the node
    net = Predictor.load(weights, backend=backend, precision=precision, threads=threads)
    capture_maps(net)
    cam = heatmaps(net)
    algorithm = algorithm_for(weights, net.meta, net.calibrated, thresholds=net.thresholds)
    print(f"machine: {machine_line()}")
    print(
        f"{len(files)} files, {net.meta.architecture} at {net.meta.preprocessing.size} px, backend {net.backend}"
    )
    net.predict(files[:2])  # warm-up
    t = time.process_time()
    predictions = net.predict(files)
    parts = {"network": time.process_time() - t, "grad-cam": 0.0, "SEG": 0.0, "SR": 0.0, "SR 1st use": 0.0}
    parts["SR checked"] = 0.0
    parts["encode SR"] = parts["encode SEG"] = 0.0
    maps = sizes = 0
    for path, pred in zip(files, predictions, strict=True):
        header = source_header(pydicom.dcmread(path, stop_before_pixels=True))
        names = heatmap_findings(pred, algorithm)
        t = time.process_time()
        heat = cam.maps(str(path), names)  # reads the film as the node does
        parts["grad-cam"] += time.process_time() - t
        t = time.process_time()
        seg = heatmap_segmentation(header, pred, heatmaps=heat, algorithm=algorithm)
        parts["SEG"] += time.process_time() - t
        t = time.process_time()  # the first SR of a kind compiles its pieces (sr_template): counted apart
        structured_report(header, pred, algorithm=algorithm, segments=segment_findings(pred))
        parts["SR 1st use"] += time.process_time() - t
        t = time.process_time()
        sr = structured_report(header, pred, algorithm=algorithm, segments=segment_findings(pred))
        parts["SR"] += time.process_time() - t
        t = time.process_time()
        structured_report(header, pred, algorithm=algorithm, segments=segment_findings(pred), checked=True)
        parts["SR checked"] += time.process_time() - t
        t = time.process_time()
        sizes += len(encode(sr))
        parts["encode SR"] += time.process_time() - t
        t = time.process_time()
        sizes += len(encode(seg))
        parts["encode SEG"] += time.process_time() - t
        maps += len(names)
    n = len(files)
    print(f"{maps / n:.1f} heatmaps (segments) per image; SR + SEG {sizes / n / 1e3:.0f} KB per image")
    for name, seconds in parts.items():
        print(f"{name:>12}: {seconds / n:.3f} CPU-s per image")
    extra = parts["grad-cam"] + parts["SEG"] + parts["SR"] + parts["encode SR"] + parts["encode SEG"]
    print(
        f"network alone {n / parts['network']:.2f} img/CPU-s; with the result objects "
        f"{n / (parts['network'] + extra):.2f} img/CPU-s ({parts['network'] / (parts['network'] + extra):.0%}; "
        f"without Grad-CAM {parts['network'] / (parts['network'] + extra - parts['grad-cam']):.0%})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
