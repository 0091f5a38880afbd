"""Wall time of the first `cxrdx predict --weights NEW_CKPT one.png` (issue 16 target: <= 3 s).

Each case runs the real CLI as a subprocess with its own empty ONNX cache, on a freshly
written, randomly initialised checkpoint (DenseNet121 at 320 px by default) and one image
(a real NIH PNG when ../shared/data is there, else a phantom):

- ``new, auto``: nothing exported yet, a few images -> PyTorch now, the export in the background;
- ``new, --backend onnx``: the export made inline first (what every first call did before);
- ``after train/import/calibrate``: those commands export the checkpoint they write
  (``prepare_export``, timed here too), so predict finds it and loads neither torch nor MONAI;
- ``second call``: the export cached by the background process of the first case.

Run:  .venv/bin/python benchmarks/first_call.py            (about a minute on 2 idle cores)
      .venv/bin/python benchmarks/first_call.py --arch densenet-tiny --size 64
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cxrdx_cmd, load_average, machine_line, print_table, say  # noqa: E402

NIH_IMAGES = Path(__file__).resolve().parents[2] / "shared/data/nih/images"

SETUP = """
import sys, torch
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
from cxrdx.model.networks import build_model
arch, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for i, path in enumerate(out):
    torch.manual_seed(i)
    save_checkpoint(path, build_model(arch), CheckpointMeta(architecture=arch, preprocessing=Preprocessing(size=size)))
"""


def _run(cmd: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    backend = (
        proc.stderr.split("(backend ")[1].split(")")[0]
        if "(backend " in proc.stderr
        else f"rc {proc.returncode}"
    )
    return seconds, backend


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="densenet121")
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--image", help="the image (default: a real NIH PNG, else a phantom)")
    args = p.parse_args(argv)
    say(machine_line())
    with tempfile.TemporaryDirectory(prefix="cxrdx-first-call-") as tmp_name:
        tmp = Path(tmp_name)
        ckpts = [tmp / f"{name}.safetensors" for name in ("auto", "onnx", "prewarmed")]
        subprocess.run([sys.executable, "-c", SETUP, args.arch, str(args.size), *map(str, ckpts)], check=True)
        image = args.image or next(iter(sorted(NIH_IMAGES.glob("*.png"))), None)
        if image is None:
            subprocess.run(
                cxrdx_cmd("synth", "--out", str(tmp / "ph"), "--n", "1", "--size", "1024"), check=True
            )
            image = next((tmp / "ph" / "images").glob("*.png"))
        rows = []

        def case(label: str, ckpt: Path, *extra: str, cache: str) -> None:
            env = {**os.environ, "CXRDX_CACHE": str(tmp / cache)}
            load = load_average()
            seconds, backend = _run(cxrdx_cmd("predict", "--weights", str(ckpt), str(image), *extra), env)
            rows.append([label, backend, f"{seconds:.2f}", "yes" if seconds <= 3 else "no", load])
            say(f"{label}: {seconds:.2f} s ({backend})")

        case("new checkpoint, --backend auto (torch now, export in background)", ckpts[0], cache="c0")
        case("new checkpoint, --backend onnx (export inline)", ckpts[1], "--backend", "onnx", cache="c1")
        env = {**os.environ, "CXRDX_CACHE": str(tmp / "c2")}
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "import sys; from cxrdx.inference.export import prepare_export; "
             "prepare_export(sys.argv[1])", str(ckpts[2])], env=env, check=True,
        )  # fmt: skip
        say(f"prepare_export (what train/import/calibrate add): {time.perf_counter() - start:.2f} s")
        case("checkpoint written by train/import/calibrate (exported then)", ckpts[2], cache="c2")
        deadline = time.monotonic() + 300
        while not list((tmp / "c0").rglob("*.onnx")) and time.monotonic() < deadline:
            time.sleep(0.5)  # the first case's background export
        case("second call after the background export", ckpts[0], cache="c0")
    print(f"\n{args.arch} at {args.size} px, one image ({image})")
    print_table(["first call", "backend used", "wall s", "<= 3 s", "load at start"], rows)
    print(f"load average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
