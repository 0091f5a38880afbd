"""Wall time of ``cxrdx --help`` and ``cxrdx CMD --help`` (issue 11 target: < 0.5 s).

Each command is the real CLI in a fresh interpreter (``python -m cxrdx ...``), run ``--repeats``
times after one untimed run (so the file cache is warm, as for a user's second call); the median
and the worst are printed. ``tests/test_architecture.py`` checks, without timing, that these
commands import no torch, pandas, gradio, MONAI, ONNX Runtime or matplotlib.

    .venv/bin/python benchmarks/cli_startup.py [--repeats 5] [--commands predict train evaluate]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cxrdx_cmd, load_average, machine_line, print_table, say  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--commands", nargs="+", default=["predict", "train", "evaluate", "serve"])
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    say(machine_line())
    rows = []
    for argv in [["--help"], *([c, "--help"] for c in args.commands)]:
        cmd = cxrdx_cmd(*argv)
        subprocess.run(cmd, check=True, capture_output=True)  # untimed: warms the file cache
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        rows.append(["cxrdx " + " ".join(argv), statistics.median(times), max(times)])
        say(f"  cxrdx {' '.join(argv)}: {rows[-1][1]:.3f} s (load {load_average()})")
    print_table(["command", "wall s (median)", "wall s (worst)"], rows)
    say(f"target < 0.5 s; load at the end {load_average()}")


if __name__ == "__main__":
    main()
