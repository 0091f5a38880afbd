"""Phantom speed on one core: drawing rate, and the PNG encoder that write_dataset uses vs Pillow's.

Prints (i) phantoms drawn + encoded per second at 256 px (the figure tests used to
assert as > 50/s) and (ii) the time to encode the same phantoms with
``cxrdx.phantom.dataset.png_bytes`` and with Pillow at several ``compress_level``
settings, with the mean file size, so the choice of encoder can be rechecked.

Run:  python benchmarks/phantom_speed.py [--n 200] [--size 256]
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image

from cxrdx.device import isa_line
from cxrdx.phantom.config import PhantomConfig
from cxrdx.phantom.dataset import plan_dataset, png_bytes
from cxrdx.phantom.render import make_phantom


def _pillow(image: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    print(f"CPU: {isa_line()}; {args.n} phantoms at {args.size} px, one core (process time)")

    rng = np.random.default_rng(0)
    specs = plan_dataset(args.n, 0, PhantomConfig())
    t0 = time.process_time()
    images = [make_phantom(rng, args.size, spec.findings)[0] for spec in specs]
    draw = time.process_time() - t0
    print(f"draw only:               {len(images) / draw:7.0f} phantoms/s")

    encoders = {"png_bytes (Up, zlib 1 RLE)": png_bytes}
    for level in (0, 1, 3, 6):
        encoders[f"Pillow compress_level={level}"] = lambda im, level=level: _pillow(im, level)
    for name, encode in encoders.items():
        t0 = time.process_time()
        sizes = [len(encode(im)) for im in images]
        spent = time.process_time() - t0
        print(
            f"{name:<28} {1000 * spent / len(images):6.2f} ms/image  {np.mean(sizes) / 1024:6.1f} KiB  "
            f"draw+encode {len(images) / (draw + spent):5.0f} phantoms/s"
        )


if __name__ == "__main__":
    main()
