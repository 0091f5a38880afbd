"""Acceptance run: DenseNet121 on the phantom default, mean AUROC on the TEST split with its bootstrap CI.

The whole user path through the CLI, timed step by step:

    cxrdx synth --n 1500 --size 128  ->  cxrdx split (by patient, 70/10/20)
    ->  cxrdx prepare --size 128  ->  cxrdx train --arch densenet121 --max-minutes M
    ->  cxrdx evaluate --split test (thresholds on val, 1000 patient-bootstrap replicates)

then prints the model-selection epoch's validation AUROC (what chose the checkpoint) and the
test AUROC per finding with 95 % patient-bootstrap CIs and the mean over the findings the
phantoms draw (cxrdx.phantom.lesions.DRAWN_FINDINGS), the training time and every setting.
The headline is the test figure: validation picked the epoch, so its AUROC is optimistic. A benchmark, not a test: its number
goes into the README together with the machine line (CPU count and load average;
the number is only comparable on an otherwise idle machine).

Run:  python benchmarks/train_phantom.py [--work DIR] [--max-minutes 14] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cxrdx_cmd, machine_line  # noqa: E402


def step(title: str, args: list[str]) -> float:
    print(f"== {title}: cxrdx {' '.join(args)}", flush=True)
    start = time.perf_counter()
    subprocess.run(cxrdx_cmd(*args), check=True)
    seconds = time.perf_counter() - start
    print(f"   {seconds:.0f} s", flush=True)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, help="keep everything here (default: a temporary folder)")
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--max-minutes", type=float, default=14.0, help="training time budget")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--patience", type=int, default=5, help="early-stopping patience")
    parser.add_argument("--lr-patience", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: cxrdx's, the CPU count)")
    parser.add_argument("--target", type=float, default=0.90)
    args = parser.parse_args()

    from cxrdx.labels import FINDINGS
    from cxrdx.phantom.lesions import DRAWN_FINDINGS

    print(machine_line(), flush=True)
    tmp = None
    work = args.work
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="cxrdx-phantom-")
        work = Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    times = {}
    try:
        times["synth"] = step(
            "synth",
            [
                "synth",
                "--out",
                str(work / "phantoms"),
                "--n",
                str(args.n),
                "--size",
                str(args.size),
                "--seed",
                str(args.seed),
                "--workers",
                "2",
                "--overwrite",
            ],
        )
        times["split"] = step(
            "split",
            [
                "split",
                "--labels",
                str(work / "phantoms" / "Data_Entry.csv"),
                "--out",
                str(work / "split"),
                "--val",
                "0.1",
                "--test",
                "0.2",
                "--seed",
                str(args.seed),
            ],
        )
        times["prepare"] = step(
            "prepare",
            [
                "prepare",
                "--labels",
                *(str(work / "split" / f"{s}.csv") for s in ("train", "val", "test")),
                "--images",
                str(work / "phantoms" / "images"),
                "--size",
                str(args.size),
                "--out",
                str(work / "cache"),
                "--overwrite",
                "--no-progress",
            ],
        )
        run = work / "run"
        if run.exists():
            import shutil

            shutil.rmtree(run)
        train_args = [
            "train",
            "--data",
            str(work / "cache"),
            "--out",
            str(run),
            "--arch",
            args.arch,
            "--epochs",
            str(args.epochs),
            "--max-minutes",
            str(args.max_minutes),
            "--batch-size",
            str(args.batch_size),
            "--lr",
            str(args.lr),
            "--patience",
            str(args.patience),
            "--lr-patience",
            str(args.lr_patience),
            "--seed",
            str(args.seed),
            "--findings",
            *DRAWN_FINDINGS,
            "--no-progress",
        ]
        if args.threads:
            train_args += ["--threads", str(args.threads)]
        times["train"] = step("train", train_args)

        times["evaluate"] = step(
            "evaluate",
            ["evaluate", "--weights", str(run / "best.safetensors"), "--data", str(work / "cache"),
             "--split", "test", "--val-split", "val", "--out", str(work / "report"), "--no-progress"],
        )  # fmt: skip
        from cxrdx.evaluation.metrics_record import read_metrics

        metrics = read_metrics(work / "report")
        history = json.loads((run / "history.json").read_text())
        from cxrdx.model.checkpoint import read_checkpoint

        _, meta = read_checkpoint(run / "best.safetensors")
        auroc = meta.provenance["val_auroc"]
        drawn = [f for f in FINDINGS if f in DRAWN_FINDINGS and f in auroc]
        mean = sum(auroc[f] for f in drawn) / len(drawn)
        print("\nper-finding val AUROC at the best epoch:")
        for name in drawn:
            print(f"  {name:<20s} {auroc[name]:.3f}")
        print("\nepochs:")
        for h in history:
            print(
                f"  {h['epoch']:>3d}  train {h['train_loss']:.4f}  val {h['val_loss']:.4f}  "
                f"AUROC {h['val_auroc_mean']:.3f}  lr {h['lr']:.1e}  {h['seconds']:.0f} s  "
                f"{h['train_images_per_s']:.1f} img/s"
            )
        print(f"\n{machine_line()}")
        print(
            f"settings: {args.n} phantoms at {args.size} px (seed {args.seed}), split by patient 70/10/20, "
            f"{meta.provenance['splits']}, {args.arch} from scratch, batch {args.batch_size}, Adam lr {args.lr}, "
            f"ReduceLROnPlateau patience {args.lr_patience}, early stopping {args.patience}, "
            f"flip on, budget {args.max_minutes} min, threads {args.threads or 'default'}"
        )
        print(
            f"time: synth {times['synth']:.0f} s, split {times['split']:.0f} s, prepare {times['prepare']:.0f} s, "
            f"train {times['train'] / 60:.1f} min ({len(history)} epochs), total {sum(times.values()) / 60:.1f} min"
        )
        print("\nper-finding TEST AUROC (95% patient-bootstrap CI):")
        for name, c in metrics.classes.items():
            if c.auroc is not None and c.auroc_ci is not None:
                lo, hi = c.auroc_ci
                print(f"  {name:<20s} {c.auroc:.3f} ({lo:.3f}-{hi:.3f})  n_pos {c.n_pos}")
        test_mean, ci = metrics.mean_auroc, metrics.mean_auroc_ci or (None, None)
        verdict = "met" if test_mean >= args.target else "NOT met"
        print(
            f"validation (model selection): mean AUROC over {len(drawn)} drawn findings = {mean:.3f} "
            f"at epoch {meta.provenance['epoch']}"
        )
        print(
            f"RESULT: mean TEST AUROC over {len(metrics.mean_auroc_classes)} findings = {test_mean:.3f} "
            f"(95% patient-bootstrap CI {ci[0]:.3f}-{ci[1]:.3f}) (target >= {args.target}: {verdict})"
        )
        return 0 if test_mean >= args.target else 1
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
