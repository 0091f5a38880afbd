"""``cxrdx predict --precision int8`` against fp32: agreement on a trained model, and speed end to end.

The int8 model is the product's (``cxrdx.jobs.quantize_build``): ONNX Runtime static QDQ,
per-channel int8 weights (7-bit on x86 without VNNI), uint8 activations, MinMax-calibrated on
``--calib`` training-split images of ``--cache``, kept only when its mean *validation* AUROC is
within 0.005 of fp32's. Then, with a checkpoint *trained on that cache's training split*
(``make demo`` or ``benchmarks/train_phantom.py`` makes both):

1. agreement on the cache's *test* split at the checkpoint's own size: mean AUROC of fp32
   and int8 (findings with both classes), largest and mean |p_int8 - p_fp32| (calibrated
   probabilities, as predict reports them), and the calls that change at the stored thresholds;
2. at each ``--sizes`` (the same weights, exported at that size, quantized the same way):
   |p_int8 - p_fp32| on real NIH PNGs (``../shared/data/nih/images``, else phantoms), the
   network alone at 1 thread and at all threads, and end to end ``Predictor.predict``
   with the settings ``cxrdx predict`` measures at first use (autotune), fp32 vs int8.
   The issue's target: int8 end to end >= 1.5x fp32.

    python benchmarks/int8.py --weights demo/run/model.safetensors --cache demo/cache
"""

from __future__ import annotations

import cxrdx  # noqa: F401 - first: it sets OMP_WAIT_POLICY=PASSIVE before torch loads

# isort: split

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine_line, print_table, say  # noqa: E402
from predict_throughput import find_inputs, measure  # noqa: E402

E2E_TARGET = 1.5


def resized_checkpoint(ckpt: str, size: int, out: Path) -> Path:
    """The same weights and record at another input size (DenseNet pools globally)."""
    from cxrdx.model.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(ckpt)
    save_checkpoint(out, model, replace(meta, preprocessing=replace(meta.preprocessing, size=size)))
    return out


def quantized(ckpt: Path, cache: str, n_calib: int, gate: bool = True):
    """(fp32 Predictor, int8 Predictor, the quantize report) for ``ckpt``, int8 made by the product.

    ``gate=False`` keeps the int8 model whatever the validation check says (for speed only).
    """
    from cxrdx.inference.predictor import Predictor
    from cxrdx.jobs.quantize_build import MAX_AUROC_DROP, QuantizeConfig, quantize

    config = QuantizeConfig(str(ckpt), cache, n_calib=n_calib, max_auroc_drop=MAX_AUROC_DROP if gate else 1.0)
    report = quantize(config, log=say)
    say(
        f"  validation check: mean AUROC {report.mean_fp32:.4f} -> {report.mean_int8:.4f} ({report.seconds:.0f} s)"
    )
    return Predictor.load(ckpt, backend="onnx"), Predictor.load(ckpt, precision="int8"), report


def tuned(predictor, ckpt: Path, files: list[Path], cores: int):
    """``predictor`` with the batch size ``cxrdx predict`` would measure for it (autotune on the reference images)."""
    from cxrdx.files import file_sha256
    from cxrdx.inference import autotune, choose

    sha = file_sha256(ckpt)
    name = choose.current(predictor)
    t, _fresh, session = choose.tune(predictor, sha, [name], cores)
    choose.apply(predictor, t, session, sha, cores)
    t.decode_ms = autotune.decode_ms(
        [lambda f=f: predictor.prepare(predictor.read(f, uint8_ok=True)[0]) for f in files[:4]]
    )
    t.workers = autotune.workers_for(t.decode_ms, t.net_img_per_s, cores)
    return predictor, t


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", required=True, help="checkpoint trained on --cache's training split")
    parser.add_argument("--cache", required=True, help="its prepared cache (train, val and test splits)")
    parser.add_argument("--calib", type=int, default=128, help="training-split images to calibrate on")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 320])
    parser.add_argument("--n", type=int, default=32, help="NIH images for agreement and speed")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from cxrdx.data.cache import open_cache
    from cxrdx.device import available_threads
    from cxrdx.inference.backends import GRAY_NAME, make_session
    from cxrdx.metrics.auroc import mean_auroc, per_finding_auroc
    from cxrdx.model.checkpoint import read_checkpoint_meta

    cores = available_threads()
    import onnxruntime

    print(f"# int8 vs fp32, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"machine: {machine_line()}; onnxruntime {onnxruntime.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["CXRDX_CACHE"] = str(tmp / "cxrdx-cache")  # fresh exports, not a stale cache
        # ------------------------------------------------------------ 1. agreement on the test split
        meta = read_checkpoint_meta(args.weights)
        ckpt = resized_checkpoint(args.weights, meta.preprocessing.size, tmp / "own.safetensors")
        fp32, int8, report = quantized(ckpt, args.cache, args.calib)
        test = open_cache(args.cache).subset("test")
        squares = test.squares(np.arange(len(test.index)))
        p = {
            name: pr.probabilities(pr.meta.preprocessing.to_input(squares))[0]
            for name, pr in (("fp32", fp32), ("int8", int8))
        }
        y = test.labels_for(meta.labels)
        auc = {k: per_finding_auroc(y, v, meta.labels) for k, v in p.items()}
        both = [n for n in meta.labels if auc["fp32"][n] is not None]
        diff = np.abs(p["int8"] - p["fp32"])
        flips = "no thresholds"
        if meta.thresholds:
            t = np.array([meta.thresholds[n] for n in meta.labels])
            changed = (p["int8"] >= t) != (p["fp32"] >= t)
            flips = f"{int(changed.sum())} of {changed.size} ({100 * changed.mean():.2f} %)"
        print(
            f"\n## agreement: {args.weights} at {meta.preprocessing.size} px, test split of {args.cache} "
            f"({len(test.index)} images; AUROC over {len(both)} findings with both classes); "
            f"{report.variant} calibrated on {report.n_calib} training-split images, checked on "
            f"{report.n_check} validation images (drop {report.drop:+.4f})"
        )
        print_table(
            [
                "mean AUROC fp32",
                "mean AUROC int8",
                "drop",
                "max |p - fp32|",
                "mean |p - fp32|",
                "calls changed",
            ],
            [
                [
                    f"{mean_auroc(auc['fp32'], both):.4f}",
                    f"{mean_auroc(auc['int8'], both):.4f}",
                    f"{mean_auroc(auc['fp32'], both) - mean_auroc(auc['int8'], both):+.4f}",
                    f"{diff.max():.4f}",
                    f"{diff.mean():.5f}",
                    flips,
                ]
            ],
        )

        # ------------------------------------------------------------ 2. each size: NIH agreement + speed
        files, origin = find_inputs(None, args.n, tmp)
        for size in args.sizes:
            say(f"{size} px ...")
            ckpt = resized_checkpoint(args.weights, size, tmp / f"m{size}.safetensors")
            fp32, int8, report = quantized(ckpt, args.cache, args.calib, gate=False)
            nih = np.stack([fp32.prepare(fp32.read(f, uint8_ok=True)[0])[0] for f in files])
            d = np.abs(int8.probabilities(nih)[0] - fp32.probabilities(nih)[0])
            rows, rate = [], {}
            feed = {GRAY_NAME: _gray(fp32, nih[:8])}
            for name, pr in (("fp32", fp32), (f"int8 ({report.variant})", int8)):
                for threads in sorted({1, cores}):
                    s = make_session(_file(ckpt, pr.precision), threads)
                    s.run(None, feed)
                    r = measure(lambda s=s, f=feed: s.run(None, f), 8, args.repeats)
                    rows.append([f"{name}, network alone, batch 8, {threads} thread(s)", *r])
                best, t = tuned(pr, ckpt, files, cores)
                best.predict(files, batch_size=t.batch_size, workers=t.workers)  # warm-up
                r = measure(
                    lambda b=best, t=t: b.predict(files, batch_size=t.batch_size, workers=t.workers),
                    len(files),
                    args.repeats,
                )
                rate[name] = r[0]
                rows.append([f"{name}, end to end (bs{t.batch_size}, {t.threads}+{t.workers} threads)", *r])
                say(f"  {rows[-1][0]}: {r[0]:.2f} img/s (load {load_average()})")
            fp, i8 = rate["fp32"], rate[f"int8 ({report.variant})"]
            print(
                f"\n## {size} px: {len(files)} images from {origin}; load {load_average()}\n"
                f"int8 vs fp32 on these images: max |p - fp32| {d.max():.4f}, mean {d.mean():.5f}; validation "
                f"check at this size (not gated here: speed only; the weights were trained at {meta.preprocessing.size} px): "
                f"mean AUROC {report.mean_fp32:.4f} -> {report.mean_int8:.4f}"
            )
            print_table(["path", "img/s (wall, median)", "img/s (best)", "img/CPU-s"], rows)
            print(f"end to end int8 / fp32 = {i8 / fp:.2f}x (target >= {E2E_TARGET}x)")


def _file(ckpt: Path, precision: str) -> Path:
    from cxrdx.files import file_sha256
    from cxrdx.inference import export

    return export.cached_export_path(file_sha256(ckpt), precision)


def _gray(predictor, x: np.ndarray) -> np.ndarray:
    from cxrdx.inference.backends import channel_affine

    a, d = channel_affine(predictor.meta.preprocessing)  # the normalised input back to gray in [0, 1]
    return np.ascontiguousarray((x[:, :1] - d[0]) / a[0], dtype=np.float32)


if __name__ == "__main__":
    main()
