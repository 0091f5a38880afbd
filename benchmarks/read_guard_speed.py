"""How fast ``read_image`` refuses a decompression bomb (the figure the unit test used to assert).

A PNG of under 200 bytes can declare 100,000 x 100,000 pixels. ``read_image`` must refuse
it from the declared header size, before decoding: tests/imaging/test_read.py checks that
nothing is decoded and that the peak Python allocation stays under 5 MB; this script
prints how long the refusal takes (it was asserted to be under 1 s), median over ``--repeat``
runs, for the same three bombs as the test (two too large, one with an extreme aspect).

Run:  python benchmarks/read_guard_speed.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine_line  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
from corpus.bad_inputs import png_bomb  # noqa: E402

from cxrdx.errors import ImageReadError  # noqa: E402
from cxrdx.imaging.read import read_image  # noqa: E402

BOMBS = ((100_000, 100_000), (8000, 8000), (60_000, 16))


def refuse_ms(path: Path) -> float:
    start = time.perf_counter()
    try:
        read_image(path)
    except ImageReadError:
        return (time.perf_counter() - start) * 1000
    raise SystemExit(f"{path} was read, not refused")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(machine_line())
    print(f"| declared size (w x h) | file bytes | refusal ms (median of {args.repeat}) | peak MB |")
    print("|-----------------------|------------|------------------------|---------|")
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in BOMBS:
            path = Path(tmp) / f"bomb_{w}x{h}.png"
            path.write_bytes(png_bomb(w, h))
            refuse_ms(path)  # warm-up: imports, Pillow plugin registry
            times = [refuse_ms(path) for _ in range(args.repeat)]
            tracemalloc.start()
            refuse_ms(path)
            peak = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
            print(f"| {w:,} x {h:,} | {path.stat().st_size} | {statistics.median(times):.3f} | {peak:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
