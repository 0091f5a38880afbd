"""Peak memory of reading a compressed DICOM whose codestream lies about its size (issue 28, item 2).

Each bomb is a DICOM of a few KB whose Rows/Columns say 64x64 while its first frame's own
header (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ) declares 20000x20000, or whose RLE segment
expands 64-fold, and a deflated data set that inflates to 2 GiB. Each read runs in a fresh subprocess; the script prints the outcome, the
seconds and the child's peak RSS (``ru_maxrss``), with the codestream check on (as shipped)
and, with ``--without-check``, with ``cxrdx.imaging.codestream.check_frame_header`` replaced
and ``check_deflated`` replaced by no-ops (the reader before the fix). ``--limit-gb`` caps the child's address space so a
bomb cannot take the machine down (default 8).

Run:  python benchmarks/dicom_bomb_memory.py [--without-check] [--only jpeg_sof_20000x20000.dcm]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine_line  # noqa: E402

CHILD = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
if {without}:
    import cxrdx.imaging.codestream as c, cxrdx.imaging.dicom as d
    d.check_frame_header = d.check_deflated = lambda *a, **k: None
from cxrdx.imaging.read import read_image
t = time.perf_counter()
try:
    read_image(sys.argv[1]); outcome = "READ"
except MemoryError:
    outcome = "MemoryError"
except Exception as exc:
    outcome = type(exc).__name__ + ": " + str(exc).split(": ", 1)[-1][:70]
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{{time.perf_counter() - t:.2f}}\\t{{rss:.0f}}\\t{{outcome}}")
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--without-check", action="store_true", help="the reader before the fix")
    ap.add_argument("--only", default="", help="one file name of the codestream corpus")
    ap.add_argument("--limit-gb", type=float, default=8.0)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from corpus.codestream_bombs import codestream_cases, deflate_bomb, dicom_with_frame, rle_bomb
    from pydicom.uid import RLELossless

    print(machine_line())
    print(f"codestream check: {'OFF (before the fix)' if args.without_check else 'on'}; "
          f"child address space capped at {args.limit_gb:g} GB")  # fmt: skip
    print("file\tbytes\tseconds\tpeak RSS MB\toutcome")
    code = CHILD.format(limit=int(args.limit_gb * 2**30), without=args.without_check)
    with tempfile.TemporaryDirectory() as tmp:
        big_rle = Path(tmp) / "rle_segment_bomb_20MB.dcm"  # too big for the corpus: 20 MB -> 1.3 GB decoded
        dicom_with_frame(big_rle, rle_bomb(64 * 64, 20_000_000), RLELossless)
        deflated = Path(tmp) / "deflate_bomb_2GiB.dcm"  # a 2 MB deflated data set inflating to 2 GiB
        deflate_bomb(deflated, 2 << 30)
        for path in [case.path for case in codestream_cases(Path(tmp))] + [big_rle, deflated]:
            if args.only and path.name != args.only:
                continue
            out = subprocess.run(
                [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=900
            )
            line = out.stdout.strip() or f"-\t-\tchild exited {out.returncode}: {out.stderr.strip()[-120:]}"
            print(f"{path.name}\t{path.stat().st_size}\t{line}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
