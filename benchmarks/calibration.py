"""Acceptance run for calibrated probabilities (issue 12 section 1), on the TEST split of a phantom model.

Trains a model on the phantom default through the CLI (or takes ``--weights`` and ``--data``):

    cxrdx synth --n N --size S -> cxrdx split (by patient, 70/10/20) -> cxrdx prepare
    -> cxrdx train (which stores the prior shift and fits the temperature on val at the end)

then predicts the TEST split once and prints, per finding: the test prevalence, the mean
predicted score before calibration (raw sigmoid of the class-weighted network), after the
prior shift only, and after prior + temperature (what the checkpoint applies), and the ECE
(10 equal-width bins) before and after. Acceptance (issue 12):

- calibration-in-the-large: mean over findings of |mean predicted - prevalence| <= 0.03
- ECE after <= ECE before / 2 (the mean over findings; the per-finding count is printed too)

A benchmark, not a test: small defaults (64 px, a few minutes on 2 CPUs); the machine line
(CPUs, load) is printed with the figures.

Run:  python benchmarks/calibration.py [--work DIR] [--n 1500] [--size 64] [--max-minutes 3]
      python benchmarks/calibration.py --weights CKPT --data CACHE
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cxrdx_cmd, machine_line  # noqa: E402

GAP_LIMIT = 0.03


def step(title: str, args: list[str]) -> None:
    print(f"== {title}: cxrdx {' '.join(args)}", flush=True)
    start = time.perf_counter()
    subprocess.run(cxrdx_cmd(*args), check=True)
    print(f"   {time.perf_counter() - start:.0f} s", flush=True)


def train_phantom_model(work: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    ph, split, cache, run = work / "phantoms", work / "split", work / "cache", work / "run"
    step("synth", ["synth", "--out", str(ph), "--n", str(args.n), "--size", str(args.size), "--seed", "0"])
    step(
        "split",
        [
            "split",
            "--labels",
            str(ph / "Data_Entry.csv"),
            "--out",
            str(split),
            "--val",
            "0.1",
            "--test",
            "0.2",
            "--seed",
            "0",
        ],
    )
    csvs = [str(split / f"{s}.csv") for s in ("train", "val", "test")]
    step(
        "prepare",
        [
            "prepare",
            "--labels",
            *csvs,
            "--images",
            str(ph / "images"),
            "--size",
            str(args.size),
            "--out",
            str(cache),
        ],
    )
    train = [
        "train",
        "--data",
        str(cache),
        "--out",
        str(run),
        "--arch",
        args.arch,
        "--image-size",
        str(args.size),
        "--epochs",
        str(args.epochs),
        "--max-minutes",
        str(args.max_minutes),
        "--batch-size",
        "32",
        "--lr",
        "1e-3",
        "--no-progress",
    ]
    if args.threads:
        train += ["--threads", str(args.threads)]
    step("train", train)
    return run / "best.safetensors", cache


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path, help="a trained checkpoint (skips synth/split/prepare/train)")
    parser.add_argument("--data", type=Path, help="its prepared cache (with a test split)")
    parser.add_argument("--work", type=Path, help="keep everything here (default: a temporary folder)")
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-minutes", type=float, default=3.0, help="training time budget")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if (args.weights is None) != (args.data is None):
        parser.error("--weights and --data go together")

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cxrdx-calib-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        weights, cache = (args.weights, args.data) if args.weights else train_phantom_model(work, args)
        report(weights, cache, args.threads)
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


def report(weights: Path, cache: Path, threads: int | None) -> None:
    import numpy as np
    import torch

    from cxrdx.evaluation.eval_set import load_eval_set, run_views
    from cxrdx.inference.predictor import Predictor
    from cxrdx.metrics.calibration import apply_calibration, calibration_table

    if threads:
        torch.set_num_threads(threads)
    predictor = Predictor.load(weights, backend="torch")
    names, cal = predictor.labels, predictor.calibration
    prior = {**cal, "method": "prior", "temperature": {n: 1.0 for n in names}}
    test = load_eval_set(str(cache), "test", None, names)
    views, pos = run_views([predictor], test, tta=False, progress=False)
    raw = views[0][0]
    y = test.table.loc[pos, names].to_numpy().astype(np.float64)
    after = apply_calibration(raw, cal, names)
    prior_only = calibration_table(y, raw, apply_calibration(raw, prior, names), names)
    table = calibration_table(y, raw, after, names)

    print(f"\nmachine: {machine_line()}")
    print(f"checkpoint {weights}: calibration {cal['method']}, fitted on {cal.get('fitted_on', {})}")
    print(f"TEST split: {test.description}, {len(pos)} images\n")
    print(
        f"{'finding':<19} {'n pos':>5} {'prev':>6} {'mean raw':>8} {'mean prior':>10} {'mean cal':>8} "
        f"{'ECE raw':>7} {'ECE prior':>9} {'ECE cal':>7} {'T':>5}"
    )
    for c, name in enumerate(names):
        r, p = table[name], prior_only[name]
        print(
            f"{name:<19} {int(y[:, c].sum()):>5} {r['prevalence']:6.3f} {r['mean_predicted_before']:8.3f} "
            f"{p['mean_predicted_after']:10.3f} {r['mean_predicted_after']:8.3f} {r['ece_before']:7.3f} "
            f"{p['ece_after']:9.3f} {r['ece_after']:7.3f} {cal['temperature'].get(name, 1.0):5.2f}"
        )
    rows = list(table.values())
    gap_before = float(np.mean([abs(r["mean_predicted_before"] - r["prevalence"]) for r in rows]))
    gap_prior = float(
        np.mean([abs(r["mean_predicted_after"] - r["prevalence"]) for r in prior_only.values()])
    )
    gap_after = float(np.mean([abs(r["mean_predicted_after"] - r["prevalence"]) for r in rows]))
    ece_before = float(np.mean([r["ece_before"] for r in rows]))
    ece_prior = float(np.mean([r["ece_after"] for r in prior_only.values()]))
    ece_after = float(np.mean([r["ece_after"] for r in rows]))
    halved = sum(r["ece_after"] <= r["ece_before"] / 2 for r in rows)
    print(
        f"\nmean |mean predicted - prevalence| over {len(rows)} findings: raw {gap_before:.4f}, "
        f"prior {gap_prior:.4f}, prior+temperature {gap_after:.4f} (limit {GAP_LIMIT})"
    )
    print(
        f"mean ECE over findings: raw {ece_before:.4f}, prior {ece_prior:.4f}, prior+temperature {ece_after:.4f} "
        f"(limit {ece_before / 2:.4f} = half of raw); ECE halved in {halved}/{len(rows)} findings"
    )
    ok_gap, ok_ece = gap_after <= GAP_LIMIT, ece_after <= ece_before / 2
    print(
        f"acceptance: calibration-in-the-large {'PASS' if ok_gap else 'FAIL'}, "
        f"ECE halved {'PASS' if ok_ece else 'FAIL'}"
    )


if __name__ == "__main__":
    sys.exit(main())
