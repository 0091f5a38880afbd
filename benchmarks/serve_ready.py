"""Seconds from starting ``cxrdx serve`` to the page answering and to the first answered upload.

Issue 16 target: ready to answer in <= 10 s. A randomly initialised checkpoint (DenseNet121 at
320 px by default) is written into a fresh, empty cache folder, and then:

- ``after train/import/calibrate``: the checkpoint exported as those commands do when they write
  one (``prepare_export``), so serve finds the ONNX graph;
- ``new checkpoint, never exported``: what serve meets for a checkpoint copied from elsewhere.

Each case starts the real CLI (``python -m cxrdx serve``) on a free loopback port, times the
first HTTP 200 of the page, then one upload of a 1024 px phantom through ``gradio_client``
(``/predict``, the documented API) and the server's own start-up line. Speed does not depend
on the weight values.

    .venv/bin/python benchmarks/serve_ready.py [--arch densenet121] [--size 320] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_average, machine_line, print_table, say  # noqa: E402
from load_app import Server  # noqa: E402


def one_run(ckpt: Path, image: Path, export_first: bool, cache: Path) -> tuple[float, float]:
    from gradio_client import Client, handle_file

    os.environ["CXRDX_CACHE"] = str(cache)  # the child inherits it: a cache of its own
    if export_first:
        from cxrdx.inference.export import prepare_export

        prepare_export(ckpt)
    t0 = time.perf_counter()
    with Server(ckpt, backend="auto") as server:
        page = time.perf_counter() - t0
        result = Client(server.url, verbose=False).predict(handle_file(str(image)), api_name="/predict")
        answered = time.perf_counter() - t0
        if not result:
            raise RuntimeError(f"empty answer from {server.url}:\n{server.output()}")
    return page, answered


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    from predict_throughput import make_checkpoint

    from cxrdx.phantom.dataset import write_dataset

    say(f"# cxrdx serve start-up, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    say(machine_line())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        image = sorted((Path(write_dataset(work / "ph", n=1, size=1024, seed=0)) / "images").glob("*.png"))[0]
        for name, export_first in (
            ("after train/import/calibrate", True),
            ("new checkpoint, never exported", False),
        ):
            pages, answers = [], []
            for r in range(args.repeats):
                ckpt = make_checkpoint(work / f"{export_first}-{r}.safetensors", args.arch, args.size)
                page, answered = one_run(ckpt, image, export_first, work / f"cache-{export_first}-{r}")
                pages.append(page)
                answers.append(answered)
                say(
                    f"  {name}: page {page:.2f} s, first upload answered {answered:.2f} s (load {load_average()})"
                )
            rows.append([name, statistics.median(pages), statistics.median(answers), max(answers)])
    print_table(["case", "page answers (s, median)", "first upload answered (s, median)", "worst (s)"], rows)
    say(f"{args.arch} at {args.size} px; target: ready to answer <= 10 s; load at the end {load_average()}")


if __name__ == "__main__":
    main()
