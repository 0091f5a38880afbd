"""External validation on phantoms: train on one phantom "hospital", evaluate on another.

Hospital A: NIH layout, all 14 findings labelled, one scanner look. Hospital B: another
seed, a different scanner look (lower contrast, gamma, more noise: applied to its PNGs),
a different image size and prevalence, and its own *label set* (6 findings, written as a
generic CSV with some uncertain -1 labels, read with the default ``--uncertain ignore``).
A tiny DenseNet is trained on A (patient-disjoint train/val/test), evaluated on A's test
split (internal, thresholds chosen on A's val) and on B (external: only the shared
findings, A's val thresholds moved unchanged), and ``cxrdx.evaluation.external.compare``
prints the internal-vs-external AUROC per finding and the sensitivity/specificity shift.

    python benchmarks/external_validation.py [--n-a 1500] [--n-b 400] [--epochs 15] [--out DIR]

CPU only, a few minutes on 2 cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

B_FINDINGS = ["Atelectasis", "Cardiomegaly", "Effusion", "Mass", "Nodule", "Pneumothorax"]


def _scanner_look(images_dir: Path, contrast: float, gamma: float, noise: float, seed: int) -> None:
    """Rewrite hospital B's PNGs with another detector response: contrast, gamma and noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for path in sorted(images_dir.glob("*.png")):
        x = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
        x = 0.5 + contrast * (x - 0.5)
        x = np.clip(x, 0, 1) ** gamma + rng.normal(0, noise, size=x.shape)
        Image.fromarray(np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)).save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-a", type=int, default=1500)
    parser.add_argument("--n-b", type=int, default=400)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--arch", default="densenet-tiny", help="densenet-tiny (CPU minutes) or densenet121")
    parser.add_argument("--out", help="work folder (default: a temporary one)")
    parser.add_argument("--json", help="also write the comparison here")
    args = parser.parse_args(argv)

    from cxrdx.data.prepare import prepare_cache
    from cxrdx.data.splits import split_by_patient
    from cxrdx.data.tables import read_labels, write_labels
    from cxrdx.evaluation.evaluate import EvaluateConfig, evaluate
    from cxrdx.evaluation.external import compare, format_comparison
    from cxrdx.phantom.config import PhantomConfig
    from cxrdx.phantom.dataset import write_dataset
    from cxrdx.training.config import TrainConfig
    from cxrdx.training.loop import train

    start = time.monotonic()
    work = Path(args.out or tempfile.mkdtemp(prefix="cxrdx-extval-"))
    # ---- hospital A: all 14 labels
    a = write_dataset(work / "hospital_a", n=args.n_a, size=args.size, seed=11, overwrite=True)
    table_a = read_labels(a / "Data_Entry.csv", a / "images")
    splits = split_by_patient(table_a, val=0.15, test=0.2, seed=0)
    for name, part in splits.items():
        write_labels(part, work / "a_splits" / f"{name}.csv")
    files = [work / "a_splits" / f"{n}.csv" for n in ("train", "val", "test")]
    prepare_cache(
        files, work / "cache_a", size=args.size, images=a / "images", progress=False, overwrite=True
    )
    # ---- hospital B: another look, size, prevalence and label set
    size_b = int(args.size * 1.25)
    b = write_dataset(
        work / "hospital_b",
        n=args.n_b,
        size=size_b,
        seed=22,
        config=PhantomConfig(prevalence_scale=1.5, subtle_fraction=0.35),
        overwrite=True,
    )
    _scanner_look(b / "images", contrast=0.7, gamma=1.3, noise=0.04, seed=22)
    table_b = read_labels(b / "Data_Entry.csv", b / "images")
    generic = table_b[["image", "patient", "view", "age", "sex", *B_FINDINGS]].copy()
    rng = np.random.default_rng(3)
    for f in B_FINDINGS:  # ~5% of B's labels are uncertain (-1): ignored, never counted as negatives
        generic.loc[rng.random(len(generic)) < 0.05, f] = -1.0
    b_csv = write_labels(generic, work / "b_labels" / "test.csv")
    prepare_cache(
        [b_csv], work / "cache_b", size=args.size, images=b / "images", progress=False, overwrite=True
    )
    setup_s = time.monotonic() - start

    # ---- train on A
    cfg = TrainConfig(
        data=str(work / "cache_a"),
        out=str(work / "run"),
        arch=args.arch,
        epochs=args.epochs,
        batch_size=32,
        lr=args.lr,
        progress=False,
        workers=0,
    )
    import shutil

    shutil.rmtree(work / "run", ignore_errors=True)
    result = train(cfg)
    train_s = time.monotonic() - start - setup_s
    # ---- internal (A test, thresholds on A val) and external (B, A's thresholds moved)
    common = {"n_boot": 200, "progress": False, "device": "cpu"}
    evaluate(
        EvaluateConfig(
            weights=str(result.best_path),
            data=str(work / "cache_a"),
            split="test",
            val_split="val",
            out=str(work / "eval_a"),
            out_weights=str(work / "model_with_thresholds.safetensors"),
            **common,
        )
    )
    ext = evaluate(
        EvaluateConfig(
            weights=str(work / "model_with_thresholds.safetensors"),
            data=str(work / "cache_b"),
            split="test",
            val_split="(none: external)",
            out=str(work / "eval_b"),
            **common,
        )
    )
    cmp = compare([work / "eval_a", work / "eval_b"], work / "comparison", ["A (internal)", "B (external)"])
    print(format_comparison(cmp))
    print("skipped on B:", ", ".join(f"{k} ({v})" for k, v in list(ext.skipped.items())[:3]), "...")
    print("\nA's val thresholds moved to B (sensitivity / specificity, source -> target):")
    for name, row in (ext.source_thresholds.shift if ext.source_thresholds else {}).items():
        print(
            f"  {name:<14} sens {row.sensitivity_source:.3f} -> {row.sensitivity_target:.3f}   "
            f"spec {row.specificity_source:.3f} -> {row.specificity_target:.3f}"
        )
    print(
        f"\nA: {args.n_a} images at {args.size} px; B: {args.n_b} images at {size_b} px, contrast 0.7, gamma 1.3, "
        f"noise 0.04, prevalence x1.5, labels {len(B_FINDINGS)} findings. setup {setup_s:.0f} s, "
        f"training {train_s:.0f} s ({result.epochs_completed} epochs), total {time.monotonic() - start:.0f} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(cmp, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
