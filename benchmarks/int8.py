"""Reduced-precision CPU inference: speed, and agreement with fp32 on a trained model.

Paths compared with ONNX Runtime fp32 (the default backend):

- ``ort int8``: ONNX Runtime static quantization, QDQ format, uint8 activations, int8
  weights per channel, MinMax calibration on training-split images (never the test split);
- ``ort int8 per-tensor``: the same with one weight scale per tensor;
- ``openvino int8``: the same QDQ file run by OpenVINO;
- ``openvino bf16`` / ``openvino f32``: the fp32 ONNX file run by OpenVINO, bf16 being
  what OpenVINO picks by itself on CPUs with native bf16 (AMX / AVX512-BF16).

Agreement: on the *test split of a prepared phantom cache* with a checkpoint *trained on
that cache's training split* (``benchmarks/train_phantom.py`` makes both), the largest
probability difference to fp32 and the mean AUROC over the findings with positives and
negatives in the test split. The adoption rule from the issue: AUROC drop <= 0.005.

Speed: the same trained weights exported at ``--speed-size`` (320) and calibrated on
real NIH images (or phantoms) at that size, network only, batch ``--batch-size``, in
wall img/s and img per CPU-second; ratios to ORT fp32 and to the fp32 compute limit
(a 2048^3 fp32 matmul's GFLOP/s over DenseNet121's GFLOP per image).

    python benchmarks/int8.py --weights RUN/best.safetensors --cache CACHE
"""

from __future__ import annotations

import cxrdx  # noqa: F401 - first: it sets OMP_WAIT_POLICY=PASSIVE before torch loads

# isort: split

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine_line, print_table, say  # noqa: E402
from predict_throughput import GFLOP_PER_IMAGE, find_inputs, matmul_gflops, measure  # noqa: E402

ADOPT_MAX_AUROC_DROP = 0.005
SPEED_TARGET_X_LIMIT = 1.5


def cache_split(cache: Path, split: str, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S) uint8 letterboxed images and (N, L) 0/1 labels of one split of a prepared cache."""
    images = np.load(cache / "images.npy", mmap_mode="r")
    with open(cache / "index.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == split]
    idx = np.array([int(r["row"]) for r in rows])
    y = np.array(
        [[int(float(r[n])) for n in labels] for r in rows], dtype=np.int8
    )  # "1.0" since labels are float
    return np.asarray(images[idx]), y


def onnx_file(model: torch.nn.Module, meta, size: int, out: Path) -> Path:
    """The checkpoint's network exported at ``size`` (DenseNet is size-agnostic: global pooling)."""
    from dataclasses import replace

    from cxrdx.inference.export import onnx_bytes

    meta = replace(meta, preprocessing=replace(meta.preprocessing, size=size))
    out.write_bytes(onnx_bytes(model, meta, "benchmark", fold=FOLD["prep"] is not None))
    return out


# --fold: the graphs take the gray image (inference/fold.py), as `cxrdx predict`'s cached export does
FOLD: dict[str, object] = {"prep": None}


def _feed(x: np.ndarray) -> dict[str, np.ndarray]:
    """The input dict for a (N, C, S, S) normalised batch: as it is, or as gray for a folded graph."""
    prep = FOLD["prep"]
    if prep is None:
        return {"image": np.ascontiguousarray(x, dtype=np.float32)}
    from cxrdx.inference.backends import GRAY_NAME, channel_affine

    a, d = channel_affine(prep)
    return {GRAY_NAME: np.ascontiguousarray((x[:, :1] - d[0]) / a[0], dtype=np.float32)}


def quantize(src: Path, out: Path, calib: np.ndarray, per_channel: bool) -> Path:
    """Static QDQ quantization (uint8 activations, int8 weights) calibrated on ``calib`` inputs."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else _feed(x[None])

    pre = out.with_suffix(".pre.onnx")
    if not pre.exists():
        quant_pre_process(str(src), str(pre))
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return out


def runners(files: dict[str, Path], threads: int) -> dict[str, object]:
    """name -> run(x) for every path that can be built here."""
    from cxrdx.inference.backends import OUTPUT_NAME, OpenVinoSession, make_session, openvino_available

    out: dict[str, object] = {}

    def ort(path: Path):
        s = make_session(path, threads)
        return lambda x: s.run([OUTPUT_NAME], _feed(x))[0]

    def ov(s: OpenVinoSession):
        return lambda x: s.run([OUTPUT_NAME], _feed(x))[0]

    out["ort fp32"] = ort(files["fp32"])
    out["ort int8 (per-channel)"] = ort(files["int8"])
    out["ort int8 (per-tensor)"] = ort(files["int8-pt"])
    if openvino_available():
        for name, path, prec in (
            ("openvino f32", files["fp32"], "f32"),
            ("openvino bf16", files["fp32"], "bf16"),
            ("openvino int8 (QDQ file)", files["int8"], "auto"),
        ):
            out[name] = ov(OpenVinoSession(path, threads, precision=prec))
    return out


def batched(run, x: np.ndarray, bs: int = 32) -> np.ndarray:
    return np.concatenate([run(np.ascontiguousarray(x[i : i + bs])) for i in range(0, len(x), bs)])


def mean_auroc(y: np.ndarray, p: np.ndarray, cols: list[int]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(np.mean([roc_auc_score(y[:, c], p[:, c]) for c in cols]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", required=True, help="checkpoint trained on --cache's training split")
    parser.add_argument(
        "--cache", required=True, help="prepared cache (cxrdx prepare) with train and test splits"
    )
    parser.add_argument("--calib", type=int, default=128, help="training-split images for calibration")
    parser.add_argument("--speed-size", type=int, default=320)
    parser.add_argument(
        "--speed-calib", type=int, default=32, help="NIH images for calibration at speed-size"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--fold", action="store_true", help="quantize the folded graph (gray input) that `cxrdx predict` runs"
    )
    args = parser.parse_args()

    from cxrdx.device import available_threads
    from cxrdx.imaging.read import read_image
    from cxrdx.model.checkpoint import load_checkpoint

    threads = available_threads()
    torch.set_num_threads(threads)
    model, meta = load_checkpoint(args.weights)
    model.eval()
    FOLD["prep"] = meta.preprocessing if args.fold else None
    pre = meta.preprocessing
    cache = Path(args.cache)
    print(f"# reduced-precision inference, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"machine: {machine_line()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # ---------------------------------------------------------------- agreement (trained model)
        train_x, _ = cache_split(cache, "train", meta.labels)
        test_x, test_y = cache_split(cache, "test", meta.labels)
        rng = np.random.default_rng(0)
        calib = pre.to_input(train_x[rng.choice(len(train_x), min(args.calib, len(train_x)), replace=False)])
        x_test = pre.to_input(test_x)
        files = {"fp32": onnx_file(model, meta, pre.size, tmp / "fp32.onnx")}
        say(f"quantizing at {pre.size} px with {len(calib)} training images ...")
        files["int8"] = quantize(files["fp32"], tmp / "int8.onnx", calib, per_channel=True)
        files["int8-pt"] = quantize(files["fp32"], tmp / "int8-pt.onnx", calib, per_channel=False)
        run = runners(files, threads)
        cols = [c for c in range(len(meta.labels)) if 0 < test_y[:, c].sum() < len(test_y)]
        probs = {name: batched(r, x_test) for name, r in run.items()}
        ref = probs["ort fp32"]
        auc_ref = mean_auroc(test_y, ref, cols)
        print(
            f"\n## agreement: {args.weights} ({meta.architecture}, {pre.size} px), test split of {cache}: "
            f"{len(test_y)} images, AUROC over {len(cols)} findings with both classes; "
            f"calibration: {len(calib)} training-split images"
        )
        rows, verdict = [], {}
        for name, p in probs.items():
            auc = mean_auroc(test_y, p, cols)
            drop = auc_ref - auc
            ok = drop <= ADOPT_MAX_AUROC_DROP
            verdict[name] = ok
            rows.append(
                [
                    name,
                    f"{np.abs(p - ref).max():.4f}",
                    f"{np.abs(p - ref).mean():.5f}",
                    f"{auc:.4f}",
                    f"{drop:+.4f}",
                    ok,
                ]
            )
        print_table(
            ["path", "max |p - fp32|", "mean |p - fp32|", "mean AUROC", "drop vs fp32", "drop <= 0.005"], rows
        )

        # ---------------------------------------------------------------- speed at --speed-size
        s = args.speed_size
        from dataclasses import replace

        big = replace(pre, size=s)
        images, origin = find_inputs(None, args.speed_calib + args.batch_size, tmp)
        arrays = np.stack([big(read_image(f)[0])[0] for f in images])
        calib_big, x_big = arrays[: args.speed_calib], arrays[args.speed_calib :]
        sfiles = {"fp32": onnx_file(model, meta, s, tmp / f"fp32-{s}.onnx")}
        say(f"quantizing at {s} px with {len(calib_big)} images from {origin} ...")
        sfiles["int8"] = quantize(sfiles["fp32"], tmp / f"int8-{s}.onnx", calib_big, per_channel=True)
        sfiles["int8-pt"] = quantize(sfiles["fp32"], tmp / f"int8-pt-{s}.onnx", calib_big, per_channel=False)
        wall_gf, cpu_gf = matmul_gflops(threads, args.repeats)
        gflop = GFLOP_PER_IMAGE.get(s)
        limit_wall = wall_gf / gflop if gflop else float("nan")
        limit_idle = cpu_gf * threads / gflop if gflop else float("nan")
        print(
            f"\n## speed: network only, {s} px, batch {len(x_big)} ({origin}), load {load_average()}; "
            f"fp32 matmul {wall_gf:.0f} GFLOP/s wall, {cpu_gf:.0f} per CPU-s; "
            f"compute limit {limit_wall:.1f} img/s (this run, wall), {limit_idle:.1f} img/s (idle estimate)"
        )
        speed = {}
        for name, r in runners(sfiles, threads).items():
            r(x_big)
            speed[name] = measure(lambda r=r: r(x_big), len(x_big), args.repeats)
            say(f"  {name}: {speed[name][0]:.2f} img/s (load {load_average()})")
        base = speed["ort fp32"]
        rows = []
        for name, (wall, _best, per_cpu) in speed.items():
            rows.append(
                [
                    name,
                    wall,
                    per_cpu,
                    per_cpu * threads,
                    f"{per_cpu / base[2]:.2f}x",
                    f"{per_cpu * threads / limit_idle:.2f}x",
                    verdict.get(name, ""),
                ]
            )
        print_table(
            [
                "path",
                "img/s (wall)",
                "img/CPU-s",
                f"idle est. ({threads} CPUs)",
                "x ort fp32 (CPU)",
                "x compute limit (idle est.)",
                "AUROC ok",
            ],
            rows,
        )
        print(
            f"adoption rule: AUROC drop <= {ADOPT_MAX_AUROC_DROP} and faster than ORT fp32; "
            f"speed target: >= {SPEED_TARGET_X_LIMIT}x the fp32 compute limit. load at the end {load_average()}"
        )


if __name__ == "__main__":
    main()
