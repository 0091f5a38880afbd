"""CPU training step: fp32 channels_last against bf16 autocast (AMX / AVX512-BF16), DenseNet121.

One full train step as ``cxrdx train`` runs it on CPU -- forward (under
``torch.autocast("cpu", dtype=torch.bfloat16)`` for ``bf16``), the class-weighted BCE
on fp32 logits (``cxrdx.training.loss.WeightedBCEWithLogits``, outside autocast),
backward, Adam on the fp32 master weights -- on a fixed random batch, model and input
in channels_last. Each (precision, size, batch) runs in its own subprocess so one
cannot warm the other's allocator; the order alternates so a load change on a shared
machine does not favour one precision. Prints img/s (median step) and the best step, and images
per CPU-second of the process over the timed steps (less disturbed by other processes on a shared
machine, though it counts OpenMP's spin-waiting too), with the CPU's flags and the load average.

Run:  .venv/bin/python benchmarks/cpu_train.py                      (320 px, batch 8 and 16)
      .venv/bin/python benchmarks/cpu_train.py --sizes 64 --batches 32 --steps 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_average, machine_line, print_table, say, time_steps  # noqa: E402

RESULT_TAG = "RESULT "


def _worker(spec: dict) -> dict:
    import torch

    from cxrdx.labels import FINDINGS
    from cxrdx.model.networks import build_model
    from cxrdx.training.loss import WeightedBCEWithLogits

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    size, batch = spec["size"], spec["batch"]
    bf16 = spec["precision"] == "bf16"
    model = build_model(spec["arch"]).to(memory_format=torch.channels_last).train()
    gen = torch.Generator().manual_seed(0)
    criterion = WeightedBCEWithLogits.from_labels(
        (torch.rand(4096, len(FINDINGS), generator=gen) < 0.08).byte()
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, generator=gen).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, len(FINDINGS), generator=gen) < 0.08).float()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(spec["warmup"]):
        step()
    cpu0 = time.process_time()
    times = time_steps(step, warmup=0, steps=spec["steps"], items_per_step=batch)
    cpu = time.process_time() - cpu0
    return {
        **spec,
        "img_s": times.rate,
        "best_img_s": times.best_rate,
        "img_per_cpu_s": batch * spec["steps"] / cpu,
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--sizes", type=int, nargs="+", default=[320])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(RESULT_TAG + json.dumps(_worker(json.loads(args.worker))), flush=True)
        return
    import torch

    say(f"machine: {machine_line()}")
    say(f"torch {torch.__version__}, mkldnn bf16 supported: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    load_before = load_average()
    rows = []
    for size in args.sizes:
        for batch in args.batches:
            got = {}
            order = args.precisions if (size + batch) % 2 == 0 else list(reversed(args.precisions))
            for precision in order:
                spec = dict(
                    arch=args.arch,
                    size=size,
                    batch=batch,
                    precision=precision,
                    warmup=args.warmup,
                    steps=args.steps,
                    threads=args.threads,
                )
                t0 = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, __file__, "--worker", json.dumps(spec)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                line = next((s for s in proc.stdout.splitlines() if s.startswith(RESULT_TAG)), None)
                if line is None:
                    raise SystemExit(f"worker failed: {proc.stderr.strip()[-800:]}")
                got[precision] = json.loads(line[len(RESULT_TAG) :])
                say(f"{size} px batch {batch} {precision}: {got[precision]['img_s']:.2f} img/s "
                    f"({time.perf_counter() - t0:.0f} s, load {load_average()})")  # fmt: skip
            for precision in args.precisions:
                r = got[precision]
                ratio = r["img_s"] / got["fp32"]["img_s"] if "fp32" in got else float("nan")
                per_cpu = r["img_per_cpu_s"] / got["fp32"]["img_per_cpu_s"] if "fp32" in got else float("nan")
                rows.append(
                    [size, batch, precision, f"{r['img_s']:.2f}", f"{r['best_img_s']:.2f}", f"{ratio:.2f}x"]
                    + [f"{r['img_per_cpu_s']:.2f}", f"{per_cpu:.2f}x"]
                )
    print(f"machine: {machine_line()}")
    print(
        f"load average before {load_before}, after {load_average()}; {args.steps} timed steps after {args.warmup} warmup"
    )
    headers = ["size", "batch", "precision", "img/s (median step)", "img/s (best step)", "vs fp32"]
    print_table([*headers, "img per CPU-s", "vs fp32"], rows)


if __name__ == "__main__":
    main()
