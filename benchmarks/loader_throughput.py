"""Training-loader throughput: the prepared uint8 cache vs decoding image files on the fly.

Measures images/s out of the DataLoader that ``cxrdx train`` builds (whole-batch
gathers, batch 32, 2 worker processes by default) at 320 px, for

1. the cache made by ``cxrdx prepare`` (what training reads), and
2. decode-on-the-fly: the same images read from their files with
   ``cxrdx.imaging.read.read_image`` + letterbox per image (what training from CSVs does).

Only the loader is timed: flips and normalisation run on the batch tensor on the
training device (the GPU path), so they cost the CPU nothing there. The target is
>= 2,000 img/s from the cache at 320 px on 2 cores.

Images: ``--source nih`` uses the real 1024 px NIH PNGs in ../shared/data/nih/images
when present (that is what decoding costs in practice); ``--source phantoms``
(default when they are absent) synthesises phantoms at ``--phantom-size``.

Run:  python benchmarks/loader_throughput.py [--source nih|phantoms] [--n 512] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine_line, train_loader_helpers  # noqa: E402

NIH = REPO.parent / "shared" / "data" / "nih"


def images_per_second(loader, min_seconds: float, max_epochs: int) -> tuple[float, int]:
    """Iterate epochs until min_seconds have passed; the first batch (worker start-up) is not timed."""
    count, start, epochs = 0, None, 0
    while epochs < max_epochs:
        epochs += 1
        for squares, _labels in loader:
            if start is None:
                start = time.perf_counter()
                continue
            count += len(squares)
        if start is not None and time.perf_counter() - start >= min_seconds:
            break
    return count / (time.perf_counter() - start), count


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source", choices=["nih", "phantoms"], default="nih" if (NIH / "images").is_dir() else "phantoms"
    )
    parser.add_argument(
        "--n", type=int, default=512, help="images in the cache (phantoms; NIH has 200, repeated)"
    )
    parser.add_argument("--size", type=int, default=320, help="cache / network input size")
    parser.add_argument(
        "--phantom-size", type=int, default=1024, help="phantom image size (file decoding cost)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="minimum timed seconds per loader")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd

    from cxrdx.data.cache import open_cache
    from cxrdx.data.loaders import FileBatches
    from cxrdx.data.prepare import prepare_cache
    from cxrdx.data.tables import read_labels, write_labels

    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="cxrdx-loader-") as tmp:
        tmp = Path(tmp)
        if args.source == "nih":
            names = sorted(p.name for p in (NIH / "images").glob("*.png"))
            table = read_labels(NIH / "Data_Entry_2017_v2020.csv.gz")
            table = table[table["image"].isin(set(names))].reset_index(drop=True)
            images_dir = NIH / "images"
            what = f"{len(table)} real NIH PNGs (1024 px)"
        else:
            from cxrdx.phantom.dataset import write_dataset

            t0 = time.perf_counter()
            write_dataset(tmp / "ph", n=args.n, size=args.phantom_size, seed=0, workers=2)
            print(
                f"synthesised {args.n} phantoms at {args.phantom_size} px in {time.perf_counter() - t0:.0f} s"
            )
            table = read_labels(tmp / "ph" / "Data_Entry.csv")
            images_dir = tmp / "ph" / "images"
            what = f"{args.n} phantom PNGs ({args.phantom_size} px)"
        csv = write_labels(table, tmp / "train.csv")
        t0 = time.perf_counter()
        result = prepare_cache(
            [csv], tmp / "cache", size=args.size, images=images_dir, workers=args.workers, progress=False
        )
        prep_s = time.perf_counter() - t0
        print(
            f"prepare: {result.cached} images -> {args.size} px cache in {prep_s:.1f} s "
            f"({result.cached / prep_s:.0f} img/s decode+resize with {args.workers} workers)"
        )

        cache = open_cache(tmp / "cache").subset("train")
        source = cache.batches()
        # Repeat the rows so an epoch is long enough to time (the NIH sample has only 200 images).
        reps = max(1, -(-args.n // len(source)))
        source.rows = np.tile(source.rows, reps)
        source.labels = np.tile(source.labels, (reps, 1))
        make_loader, _, how = train_loader_helpers("cpu")
        cache_rate, cache_n = images_per_second(
            make_loader(source, args.batch_size, args.workers), args.seconds, 50
        )

        paths = pd.Series(cache.index["path"]).tolist()
        files = FileBatches(paths * reps, np.tile(cache.labels, (reps, 1)), args.size)
        file_rate, file_n = images_per_second(
            make_loader(files, args.batch_size, args.workers), args.seconds, 3
        )

    print(f"loader: {how}; batch {args.batch_size}, {args.workers} workers, {args.size} px; images: {what}")
    print(f"{'source':<28}{'img/s':>10}{'images timed':>14}")
    print(f"{'cache (uint8 memmap)':<28}{cache_rate:>10.0f}{cache_n:>14}")
    print(f"{'decode on the fly':<28}{file_rate:>10.0f}{file_n:>14}")
    print(
        f"cache / on-the-fly: {cache_rate / file_rate:.1f}x; target >= 2000 img/s from the cache: "
        f"{'met' if cache_rate >= 2000 else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
