"""Training throughput on one CUDA GPU at 320 px: fp32 vs channels_last vs bf16 autocast, and the loader.

One prepared script for a lent GPU (total run time under ~5 minutes on an H100):

1. data: ``cxrdx synth`` phantoms and ``cxrdx prepare`` them into a 320 px cache
   in a temp folder (timed);
2. model: img/s of a full train step (forward, weighted BCE on logits, backward,
   Adam) of DenseNet121 on a batch already on the GPU, for fp32 NCHW, fp32
   channels_last, bf16 autocast + channels_last (``cxrdx train``'s CUDA default),
   and optionally ``torch.compile`` of the last (``--compile``);
3. loader: the loader ``cxrdx train`` builds for CUDA (whole-batch gathers from the
   memmap, pinned memory, worker processes) plus the non_blocking copy and input
   step (``to_input``) on the GPU, alone;
4. end to end: that loader feeding the bf16 + channels_last train step, to show
   whether the GPU or the loader is the limit.

Without CUDA it exits with status 2 and a message. ``--dry-run`` runs every code
path on the CPU with a tiny network and images (the bf16 autocast path on the
CPU too), to check the script before spending GPU time on it.

Run:  python benchmarks/gpu_train.py              (on a CUDA machine)
      python benchmarks/gpu_train.py --dry-run    (anywhere; about a minute on 2 cores)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cxrdx_cmd, machine_line, print_table, say, train_loader_helpers  # noqa: E402


def _prepare_data(args: argparse.Namespace, tmp: Path) -> tuple[Path, list[list]]:
    """Synthesise phantoms and prepare the cache with the CLI; returns the cache folder and timing rows."""
    phantoms, cache = tmp / "phantoms", tmp / "cache"
    rows = []
    workers = str(args.cpu_workers)
    say(f"synth: {args.images} phantoms at {args.phantom_size} px with {workers} processes")
    t0 = time.perf_counter()
    subprocess.run(
        cxrdx_cmd(
            "synth",
            "--out",
            str(phantoms),
            "--n",
            str(args.images),
            "--size",
            str(args.phantom_size),
            "--workers",
            workers,
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    secs = time.perf_counter() - t0
    rows.append(
        [f"cxrdx synth ({args.phantom_size} px, {workers} procs)", args.images, secs, args.images / secs]
    )
    say(f"prepare: {args.size} px cache")
    t0 = time.perf_counter()
    subprocess.run(
        cxrdx_cmd(
            "prepare",
            "--labels",
            str(phantoms / "Data_Entry.csv"),
            "--images",
            str(phantoms / "images"),
            "--size",
            str(args.size),
            "--out",
            str(cache),
            "--workers",
            workers,
            "--no-progress",
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    secs = time.perf_counter() - t0
    rows.append(
        [
            f"cxrdx prepare ({args.phantom_size} -> {args.size} px, {workers} procs)",
            args.images,
            secs,
            args.images / secs,
        ]
    )
    return cache, rows


class TrainStep:
    """One configured train step (model, optimizer, loss) for a precision / memory-format variant."""

    def __init__(self, args, device, channels_last: bool, amp: bool, compile_: bool) -> None:
        import torch

        from cxrdx.labels import FINDINGS
        from cxrdx.model.networks import build_model
        from cxrdx.training.loss import WeightedBCEWithLogits

        torch.manual_seed(0)
        self.torch = torch
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = build_model(args.arch).to(device, memory_format=self.memory_format).train()
        gen = torch.Generator().manual_seed(0)
        train_labels = (torch.rand(4096, len(FINDINGS), generator=gen) < 0.08).to(torch.uint8)
        self.criterion = WeightedBCEWithLogits.from_labels(train_labels).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.amp = amp
        self.net = torch.compile(self.model) if compile_ else self.model

    def __call__(self, x, y) -> None:
        torch = self.torch
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.net(x)
        loss = self.criterion(logits, y)  # fp32 inside, whatever the logits' dtype
        loss.backward()
        self.optimizer.step()


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_rows(args, device) -> tuple[list[list], TrainStep | None]:
    import torch

    from cxrdx.labels import FINDINGS

    variants = [
        ("fp32 NCHW (eager)", False, False, False),
        ("fp32 channels_last", True, False, False),
        ("bf16 autocast + channels_last", True, True, False),
    ]
    if args.compile:
        variants.append(("bf16 autocast + channels_last + torch.compile", True, True, True))
    gen = torch.Generator().manual_seed(0)
    x_cpu = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
    y = (torch.rand(args.batch, len(FINDINGS), generator=gen) < 0.08).float().to(device)
    rows, base, keep = [], None, None
    for name, cl, amp, comp in variants:
        say(f"model: {name}, batch {args.batch} at {args.size} px: {args.warmup} warmup + {args.steps} steps")
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        step = TrainStep(args, device, cl, amp, comp)
        x = x_cpu.to(device).contiguous(memory_format=step.memory_format)
        t0 = time.perf_counter()
        step(x, y)
        _sync(device)
        first = time.perf_counter() - t0
        for _ in range(max(0, args.warmup - 1)):
            step(x, y)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(x, y)
        _sync(device)
        secs = time.perf_counter() - t0
        rate = args.steps * args.batch / secs
        base = base or rate
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        rows.append([name, args.batch, rate, f"{rate / base:.2f}x", first, peak])
        say(f"  -> {rate:.1f} img/s")
        if amp and not comp:
            keep = step
        else:
            del step
    return rows, keep


def _loader_rows(args, device, cache_dir: Path, step: TrainStep | None) -> list[list]:
    import torch

    from cxrdx.data.cache import open_cache
    from cxrdx.imaging.preprocessing import Preprocessing

    cache = open_cache(cache_dir)
    make_loader, make_to_input, how = train_loader_helpers(str(device))
    say(f"loader: {how}, workers {args.workers if args.workers is not None else 'default'}")
    source = cache.batches()
    pre = Preprocessing(size=cache.size, mean=(0.5,), std=(0.25,))
    loader = make_loader(source, args.batch, args.workers)
    to_input = make_to_input(pre, torch.channels_last)
    rows = []

    def run(with_step: bool, max_batches: int) -> tuple[int, float]:
        n, seen = 0, 0
        t0 = None
        while n < max_batches:
            for squares, targets in loader:
                x = to_input(squares)
                y = targets.to(device, non_blocking=True)
                if with_step:
                    step(x, y)
                n += 1
                if n == 2:  # start the clock once workers are up and the first batches are through
                    _sync(device)
                    t0 = time.perf_counter()
                elif n > 2:
                    seen += len(squares)
                if n >= max_batches:
                    break
        _sync(device)
        return seen, time.perf_counter() - (t0 or time.perf_counter())

    seen, secs = run(False, args.loader_batches)
    loader_rate = seen / secs
    copied = "pinned, non_blocking copy, " if device.type == "cuda" else ""
    rows.append([f"cache loader -> {device.type} input ({copied}flip, normalise)", seen, secs, loader_rate])
    if step is not None:
        seen, secs = run(True, args.e2e_batches)
        rows.append(["cache loader feeding bf16 + channels_last train step", seen, secs, seen / secs])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny network and images: check every code path"
    )
    p.add_argument("--arch", default="densenet121")
    p.add_argument("--size", type=int, default=320, help="cache and input side in pixels (320)")
    p.add_argument("--batch", type=int, default=64, help="batch size (64)")
    p.add_argument(
        "--warmup", type=int, default=5, help="untimed steps per variant (5; cudnn.benchmark picks here)"
    )
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant (20)")
    p.add_argument("--images", type=int, default=2048, help="phantoms to synthesise and cache (2048)")
    p.add_argument("--phantom-size", type=int, default=512, help="phantom PNG side (512)")
    p.add_argument(
        "--workers", type=int, default=None, help="loader workers (default: cxrdx train's, min(8, CPUs))"
    )
    p.add_argument("--cpu-workers", type=int, default=os.cpu_count() or 1, help="synth/prepare processes")
    p.add_argument("--loader-batches", type=int, default=60, help="batches for the loader-only timing (60)")
    p.add_argument("--e2e-batches", type=int, default=40, help="batches for the end-to-end timing (40)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (adds a minute or more)")
    args = p.parse_args(argv)

    import torch

    if args.dry_run:
        device = torch.device("cpu")
        args.arch, args.size, args.batch, args.warmup, args.steps = "densenet-tiny", 64, 4, 1, 2
        args.images, args.phantom_size, args.loader_batches, args.e2e_batches = 32, 128, 6, 4
        args.workers = 0 if args.workers is None else args.workers
        args.cpu_workers = min(args.cpu_workers, 2)
        say("dry run: CPU, densenet-tiny, 64 px, tiny counts; the numbers mean nothing")
    elif not torch.cuda.is_available():
        print(
            "gpu_train.py: no CUDA device is available (torch.cuda.is_available() is False); run it on a "
            "machine with an NVIDIA GPU and a CUDA build of torch, or use --dry-run to check the script on CPU",
            file=sys.stderr,
        )
        return 2
    else:
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True  # as cxrdx train does on CUDA

    start = time.perf_counter()
    print(f"# gpu_train {time.strftime('%Y-%m-%d %H:%M:%S %Z')}{' (DRY RUN)' if args.dry_run else ''}")
    print(f"machine: {machine_line()}")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        print(
            f"gpu: {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, "
            f"cudnn {torch.backends.cudnn.version()}, bf16 supported {torch.cuda.is_bf16_supported()}, "
            f"cudnn.allow_tf32 {torch.backends.cudnn.allow_tf32}, "
            f"matmul.allow_tf32 {torch.backends.cuda.matmul.allow_tf32}"
        )
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")

    with tempfile.TemporaryDirectory(prefix="cxrdx-gpu-bench-") as tmp:
        cache_dir, data_rows = _prepare_data(args, Path(tmp))
        model_rows, bf16_step = _model_rows(args, device)
        loader_rows = _loader_rows(args, device, cache_dir, bf16_step)

    print("\nData preparation:\n")
    print_table(["step", "images", "seconds", "img/s"], data_rows)
    print(
        f"\nTrain step, {args.arch} at {args.size} px on {device.type} (synthetic batch already on the device):\n"
    )
    print_table(["variant", "batch", "img/s", "vs fp32 NCHW", "first step s", "peak GPU GiB"], model_rows)
    print("\nLoader (cxrdx train's) and end to end:\n")
    print_table(["path", "images", "seconds", "img/s"], loader_rows)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    with contextlib.suppress(Exception):
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
