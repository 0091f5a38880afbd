"""Training throughput on CPU: DenseNet121 train steps, and the cache loader vs decoding PNGs.

Part 1 (model): img/s of one full train step of ``build_model("densenet121")`` --
forward, class-weighted BCE on logits (``cxrdx.training.loss.WeightedBCEWithLogits``),
backward, Adam step -- on a fixed random batch, for

- ``eager``: fp32, NCHW (contiguous) tensors;
- ``channels_last``: fp32, model and input in channels_last (``cxrdx train``'s default);
- ``compile``: ``torch.compile`` of the channels_last model (what ``cxrdx train --compile`` does).

Each (variant, size) runs in its own subprocess, so one variant's allocator and
thread state cannot colour the next, and a compile that takes too long is killed
after ``--compile-timeout`` seconds and reported as such. Compile time is the wall
time of the first (compiling) step; steady-state img/s is measured after warmup.

Part 2 (loader): the cache loader vs decode-on-the-fly comparison is
``benchmarks/loader_throughput.py`` (another engineer's; it synthesises or reads
PNGs, runs ``prepare_cache`` and iterates ``cxrdx.train``'s loader): this script
runs it and prints its output, then adds what only CPU training pays: the per-batch
input step ``cxrdx.training.data.to_input`` (uint8 -> float, flip, normalise, memory format).

Run:  .venv/bin/python benchmarks/train_throughput.py            (everything)
      .venv/bin/python benchmarks/train_throughput.py --no-compile --no-loader
(an idle 2-core machine needs several minutes without compile; compiling DenseNet121
for training takes many more)
Numbers go to stdout as Markdown tables; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    load_average,
    machine_line,
    print_table,
    say,
    time_steps,
    train_loader_helpers,
)

VARIANTS = ("eager", "channels_last", "compile")
RESULT_TAG = "RESULT "


# =========================================================================== part 1: model


def _worker(spec: dict) -> dict:
    """One (variant, size) measurement in this process; returns a JSON-able result."""
    import torch

    from cxrdx.labels import FINDINGS
    from cxrdx.model.networks import build_model
    from cxrdx.training.loss import WeightedBCEWithLogits

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    variant, size, batch = spec["variant"], spec["size"], spec["batch"]
    fmt = torch.contiguous_format if variant == "eager" else torch.channels_last
    model = build_model(spec["arch"]).to(memory_format=fmt).train()
    gen = torch.Generator().manual_seed(0)
    train_labels = (torch.rand(4096, len(FINDINGS), generator=gen) < 0.08).to(torch.uint8)
    criterion = WeightedBCEWithLogits.from_labels(train_labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, generator=gen).contiguous(memory_format=fmt)
    y = (torch.rand(batch, len(FINDINGS), generator=gen) < 0.08).float()
    net = torch.compile(model) if variant == "compile" else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(net(x), y)
        loss.backward()
        optimizer.step()

    t0 = time.perf_counter()
    step()  # first step: allocations, Adam state, and for "compile" the whole compilation
    first = time.perf_counter() - t0
    times = time_steps(step, warmup=max(0, spec["warmup"] - 1), steps=spec["steps"], items_per_step=batch)
    return {
        **spec,
        "first_step_s": first,
        "step_s": times.seconds,
        "median_step_s": times.median,
        "img_s": times.rate,
        "best_img_s": times.best_rate,
        "torch": torch.__version__,
    }


def _run_worker(spec: dict, timeout: float) -> dict:
    """Run ``_worker`` in a subprocess (own session, so a timeout kills compile helpers too)."""
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {
            **spec,
            "error": f"did not finish within {timeout:.0f} s (killed)",
            "wall_s": time.perf_counter() - t0,
        }
    wall = time.perf_counter() - t0
    for line in out.splitlines():
        if line.startswith(RESULT_TAG):
            return {**json.loads(line[len(RESULT_TAG) :]), "wall_s": wall}
    tail = " | ".join(err.strip().splitlines()[-3:]) or f"exit code {proc.returncode}"
    return {**spec, "error": f"failed: {tail}", "wall_s": wall}


def model_part(args: argparse.Namespace) -> list[dict]:
    results = []
    sizes = list(zip(args.sizes, args.batches, args.steps, strict=True))
    for variant in args.variants:
        for size, batch, steps in sizes:
            if variant == "compile" and size not in args.compile_sizes:
                continue
            spec = {
                "variant": variant,
                "arch": args.arch,
                "size": size,
                "batch": batch,
                "warmup": args.warmup,
                "steps": steps,
                "threads": args.threads,
            }
            timeout = args.compile_timeout if variant == "compile" else args.step_timeout
            say(
                f"[model] {variant} {size}px batch {batch}: {args.warmup} warmup + {steps} timed steps "
                f"(timeout {timeout:.0f} s; load {load_average()})"
            )
            result = _run_worker(spec, timeout)
            say(
                f"[model]   -> {result.get('error') or format(result['img_s'], '.2f') + ' img/s'} "
                f"({result['wall_s']:.0f} s)"
            )
            results.append(result)
    return results


def print_model_table(results: list[dict]) -> None:
    eager = {r["size"]: r for r in results if r["variant"] == "eager" and "error" not in r}
    rows = []
    for r in results:
        label = {
            "eager": "eager fp32 NCHW",
            "channels_last": "eager fp32 channels_last",
            "compile": "torch.compile fp32 channels_last",
        }[r["variant"]]
        if "error" in r:
            rows.append([label, r["size"], r["batch"], "", "", "", "", r["error"]])
            continue
        base = eager.get(r["size"])
        ratio = r["img_s"] / base["img_s"] if base else None
        note = (
            f"compile (first step) {r['first_step_s']:.0f} s"
            if r["variant"] == "compile"
            else (f"first step {r['first_step_s']:.1f} s")
        )
        rows.append(
            [
                label,
                r["size"],
                r["batch"],
                f"{r['median_step_s']:.2f}",
                r["img_s"],
                r["best_img_s"],
                "n/a (no eager NCHW row)" if ratio is None else f"{ratio:.2f}x",
                note,
            ]
        )
    print(
        f"\nTrain step (forward + weighted BCE + backward + Adam), {results[0]['arch'] if results else ''}, fp32 on CPU:\n"
    )
    print_table(["variant", "px", "batch", "median s/step", "img/s", "best img/s", "vs eager", "note"], rows)


# =========================================================================== part 2: loader


def input_step_rows(args: argparse.Namespace) -> list[list]:
    """img/s of cxrdx.training's per-batch input step on the CPU (uint8 squares -> network input).

    On a GPU this runs on the device; on a CPU it runs in the training process, so it
    is part of the CPU training cost that loader_throughput.py (loader only) leaves out.
    """
    import torch

    from cxrdx.imaging.preprocessing import Preprocessing

    torch.set_num_threads(args.threads)
    _, make_to_input, how = train_loader_helpers("cpu")
    pre = Preprocessing(size=args.cache_size, mean=(0.5,), std=(0.25,))
    gen = torch.Generator().manual_seed(0)
    shape = (args.loader_batch, args.cache_size, args.cache_size)
    squares = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    where = (
        "cxrdx.training.data.to_input"
        if how.startswith("cxrdx.training")
        else "stand-in for cxrdx.training.data.to_input"
    )
    rows = []
    for name, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        to_input = make_to_input(pre, fmt)
        times = time_steps(
            lambda f=to_input: f(squares), warmup=2, steps=30, items_per_step=args.loader_batch
        )
        rows.append(
            [
                f"{where}: uint8 -> float, flip, normalise, {name}",
                args.loader_batch,
                times.rate,
                times.best_rate,
            ]
        )
    return rows


def loader_part(args: argparse.Namespace) -> None:
    """Cache loader vs decoding is loader_throughput.py's job (run it); then the CPU input step."""
    script = Path(__file__).resolve().parent / "loader_throughput.py"
    if script.is_file():
        cmd = [sys.executable, str(script), *args.loader_args.split()]
        say(f"[loader] {' '.join(cmd[1:])}")
        print(f"\nCache loader vs decode-on-the-fly (output of {script.name} {args.loader_args}):\n")
        sys.stdout.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        print(proc.stdout.rstrip() or f"(no output; exit code {proc.returncode})")
    else:
        print(f"\n{script.name} is missing: no cache-loader numbers")
    print(
        f"\nPer-batch input step on the CPU at {args.cache_size} px, batch {args.loader_batch} "
        "(part of CPU training; on CUDA it runs on the GPU):\n"
    )
    print_table(["step", "batch", "img/s", "best img/s"], input_step_rows(args))


# =========================================================================== main


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--arch", default="densenet121", help="registry name (densenet-tiny for a smoke run)")
    p.add_argument(
        "--sizes", type=_int_list, default=[224, 320], help="image sizes, comma separated (224,320)"
    )
    p.add_argument("--batches", type=_int_list, default=[16, 8], help="batch per size (16,8)")
    p.add_argument("--steps", type=_int_list, default=[3, 2], help="timed steps per size (3,2)")
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed steps first (default 1; the first one always)"
    )
    p.add_argument(
        "--variants",
        type=lambda s: s.split(","),
        default=list(VARIANTS),
        help=f"comma separated subset of {','.join(VARIANTS)}",
    )
    p.add_argument(
        "--no-compile", action="store_true", help="skip torch.compile (it takes minutes on 2 cores)"
    )
    p.add_argument("--compile-sizes", type=_int_list, default=[224], help="sizes to compile at (224)")
    p.add_argument(
        "--compile-timeout", type=float, default=900, help="seconds before a compile run is killed"
    )
    p.add_argument("--step-timeout", type=float, default=600, help="seconds before an eager run is killed")
    p.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all CPUs)"
    )
    p.add_argument("--no-model", action="store_true", help="skip part 1 (train steps)")
    p.add_argument("--no-loader", action="store_true", help="skip part 2 (cache loader vs PNG decoding)")
    p.add_argument("--cache-size", type=int, default=320, help="input step image side (320)")
    p.add_argument("--loader-batch", type=int, default=32, help="input step batch size (32)")
    p.add_argument(
        "--loader-args", default="", help="arguments passed to loader_throughput.py, e.g. '--source phantoms'"
    )
    args = p.parse_args(argv)

    if args.worker:
        print(RESULT_TAG + json.dumps(_worker(json.loads(args.worker))), flush=True)
        return 0
    if not (len(args.sizes) == len(args.batches) == len(args.steps)):
        p.error("--sizes, --batches and --steps need the same number of values")
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variant(s) {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.no_compile:
        args.variants = [v for v in args.variants if v != "compile"]

    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"# train_throughput {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"machine: {machine_line()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    if not args.no_model:
        print_model_table(model_part(args))
    if not args.no_loader:
        try:
            loader_part(args)
        except (subprocess.CalledProcessError, ImportError, OSError) as exc:
            print(f"\nloader part could not run: {exc}")
    print(f"\nload average at the end: {load_average()}; total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
