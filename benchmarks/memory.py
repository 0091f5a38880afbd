"""Peak resident memory of `cxrdx predict` on a folder and of `cxrdx serve` under a few requests.

Both run as subprocesses (``python -m cxrdx ...``, the real CLI) and are measured
from outside: the kernel's peak RSS of the process (``ru_maxrss`` from wait4, and
/proc/PID/status VmHWM sampled while it runs) and the largest sampled sum over the
process and its children (psutil when installed, else /proc). Requests to the
server come from this process through ``gradio_client``, so they do not count.

Weights: ``--weights CKPT``, or by default a randomly initialised DenseNet121
checkpoint written to a temp folder (memory does not depend on the weights'
values). Images: ``--images DIR``, or by default the first ``--n`` real NIH PNGs
from ../shared/data/nih/images when present, else ``cxrdx synth`` phantoms at
1024 px. ONNX exports go to a temp CXRDX_CACHE, so the first `auto` run
includes the one-off export and the second shows the steady state.

Run:  .venv/bin/python benchmarks/memory.py            (predict and serve; a few minutes on 2 cores)
      .venv/bin/python benchmarks/memory.py --no-serve
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MemoryWatch, cxrdx_cmd, free_port, load_average, machine_line, print_table, say  # noqa: E402

NIH_IMAGES = Path(__file__).resolve().parents[2] / "shared/data/nih/images"


def _checkpoint(tmp: Path, arch: str) -> Path:
    """A randomly initialised checkpoint with default metadata (320 px, 3 channels)."""
    import torch

    from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
    from cxrdx.model.networks import build_model

    torch.manual_seed(0)
    path = tmp / f"{arch}-random.safetensors"
    save_checkpoint(path, build_model(arch), CheckpointMeta(architecture=arch))
    return path


def _images(tmp: Path, args: argparse.Namespace) -> tuple[Path, str]:
    if args.images:
        return Path(args.images), f"{args.images} (given)"
    nih = sorted(NIH_IMAGES.glob("*.png"))[: args.n] if NIH_IMAGES.is_dir() else []
    folder = tmp / "images"
    folder.mkdir()
    if nih:
        for p in nih:
            shutil.copy(p, folder / p.name)
        return folder, f"{len(nih)} real NIH PNGs (1024 px) copied from {NIH_IMAGES}"
    subprocess.run(
        cxrdx_cmd("synth", "--out", str(tmp / "phantoms"), "--n", str(args.n), "--size", "1024"),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return tmp / "phantoms" / "images", f"{args.n} phantom PNGs (1024 px) from cxrdx synth"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def predict_rows(args, weights: Path, images: Path, env: dict) -> list[list]:
    rows = []
    n = len([p for p in images.iterdir() if p.is_file()])
    runs = [
        ("torch", "torch"),
        ("auto", "auto (first run: includes ONNX export)"),
        ("auto", "auto (ONNX cached)"),
    ]
    for backend, label in runs:
        cmd = cxrdx_cmd(
            "predict",
            "--weights",
            str(weights),
            str(images),
            "--format",
            "csv",
            "--out",
            str(weights.parent / f"pred-{backend}.csv"),
            "--backend",
            backend,
            "--batch-size",
            str(args.batch_size),
        )
        say(f"[predict] {label}: {' '.join(cmd[2:])}")
        result = MemoryWatch(cmd, env=env).wait(timeout=args.timeout)
        found = re.search(r"\(backend (\w+)\)", result.stderr)
        used = found.group(1) if found else "?"
        note = f"exit {result.rc}" + (
            "" if result.rc == 0 else ": " + " | ".join(result.stderr.strip().splitlines()[-2:])
        )
        rows.append(
            [
                f"cxrdx predict --backend {label} (used: {used})",
                n,
                result.seconds,
                result.peak_rss_mb,
                result.peak_tree_mb,
                note,
            ]
        )
        say(f"[predict]   -> peak {result.peak_rss_mb:.0f} MB in {result.seconds:.0f} s, exit {result.rc}")
    return rows


def serve_rows(args, weights: Path, images: Path, env: dict) -> list[list]:
    try:
        from gradio_client import Client, handle_file
    except ImportError:
        return [["cxrdx serve", 0, float("nan"), float("nan"), None, "gradio_client not installed: skipped"]]
    port = free_port()
    cmd = cxrdx_cmd("serve", "--weights", str(weights), "--port", str(port), "--backend", args.serve_backend)
    say(f"[serve] {' '.join(cmd[2:])}")
    watch = MemoryWatch(cmd, env=env)
    deadline = time.monotonic() + args.timeout
    while not _port_open(port) and watch.alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    rows = []
    if not _port_open(port):
        watch.interrupt()
        result = watch.wait(timeout=30)
        tail = " | ".join(result.stderr.strip().splitlines()[-2:])
        return [
            ["cxrdx serve (did not start)", 0, result.seconds, result.peak_rss_mb, result.peak_tree_mb, tail]
        ]
    time.sleep(2.0)
    idle = watch.current_mb()
    startup = time.perf_counter() - watch.start
    files = sorted(p for p in images.iterdir() if p.is_file())[: args.requests]
    ok, errors, t0 = 0, [], time.perf_counter()
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        for path in files:
            try:
                client.predict(handle_file(str(path)), api_name="/predict")
                ok += 1
            except Exception as exc:  # report, keep measuring
                errors.append(f"{path.name}: {type(exc).__name__}: {exc}"[:200])
    except Exception as exc:
        errors.append(f"client: {type(exc).__name__}: {exc}"[:200])
    request_s = time.perf_counter() - t0
    after = watch.current_mb()
    watch.interrupt()
    result = watch.wait(timeout=30)
    note = f"{ok}/{len(files)} requests ok in {request_s:.1f} s; start-up {startup:.0f} s; RSS idle {idle:.0f} MB, after requests {after:.0f} MB"
    if errors:
        note += "; first error: " + errors[0]
    rows.append(
        [
            f"cxrdx serve --backend {args.serve_backend} + {len(files)} /predict requests",
            len(files),
            result.seconds,
            result.peak_rss_mb,
            result.peak_tree_mb,
            note,
        ]
    )
    say(f"[serve]   -> peak {result.peak_rss_mb:.0f} MB; {note}")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--weights", help="checkpoint to use (default: random DenseNet121 in a temp folder)")
    p.add_argument("--arch", default="densenet121", help="architecture of the default random checkpoint")
    p.add_argument("--images", help="folder of images (default: real NIH PNGs when present, else phantoms)")
    p.add_argument("--n", type=int, default=32, help="images when none are given (32)")
    p.add_argument("--batch-size", type=int, default=8, help="cxrdx predict --batch-size (8)")
    p.add_argument("--requests", type=int, default=5, help="/predict requests to the server (5)")
    p.add_argument("--serve-backend", default="auto", choices=("auto", "torch", "onnx"))
    p.add_argument("--timeout", type=float, default=600, help="seconds before a command is killed (600)")
    p.add_argument("--no-predict", action="store_true")
    p.add_argument("--no-serve", action="store_true")
    args = p.parse_args(argv)

    start = time.perf_counter()
    print(f"# memory {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"machine: {machine_line()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    with tempfile.TemporaryDirectory(prefix="cxrdx-mem-bench-") as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "CXRDX_CACHE": str(tmp / "onnx-cache"), "GRADIO_ANALYTICS_ENABLED": "False"}
        weights = Path(args.weights) if args.weights else _checkpoint(tmp, args.arch)
        images, what = _images(tmp, args)
        print(f"weights: {args.weights or f'random {args.arch} (default metadata: 320 px)'}; images: {what}")
        rows = []
        if not args.no_predict:
            rows += predict_rows(args, weights, images, env)
        if not args.no_serve:
            rows += serve_rows(args, weights, images, env)
    print("\nPeak resident memory (MB = MiB):\n")
    print_table(
        ["command", "images", "seconds", "peak RSS MB", "sampled peak MB, process + children", "note"], rows
    )
    print(f"\nload average at the end: {load_average()}; total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
