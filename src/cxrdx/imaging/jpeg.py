"""Decoding a large JPEG at a reduced scale in the DCT domain when the network needs far fewer pixels.

CheXpert and MIMIC-CXR-JPG ship films of about 2,500 px; a 320 px network sees an eighth of
that side. libjpeg can run its inverse DCT at 1/2, 1/4 or 1/8 scale (Pillow's ``Image.draft``),
keeping only the low-frequency coefficients of each 8x8 block: a band-limited downsample that
skips most of the decode. ``read_image(path, target=...)`` does that when told the size the
film is resized to next.

Decisions (why):

- **Margin.** The reduced image keeps at least ``DECODE_MARGIN`` (8) times the pixels the
  following resize writes, on the side that decides it. Measured (``benchmarks/jpeg_decode.py``,
  docs/performance.md) on the real NIH films as JPEGs, with the trained ``make demo`` model:
  against an exact decode, max |delta p| was 0.025 when the decoded film had 4x the network's
  side, 0.019 at 6x and 0.006 at 8x (full-band films; upscaled ones lose less), so 8x keeps the
  tolerance max |delta p| <= 0.01. It is conservative: a 2,500 px film is reduced for networks
  up to ~156 px (1/2) or ~78 px (1/4), not at 224 or 320 px, where the anti-aliased resize of
  the exact decode keeps detail the reduced one has already dropped.
- **Scales.** 1/2 and 1/4 only: libjpeg's 1/8 scale keeps the DC coefficient alone (an 8x8 block
  mean) and moved the demo model's outputs by 0.03-0.06 even where 1/4 moved them by 0.004.
- **Only where the recipe allows it.** ``Preprocessing.decode_target`` is None (exact decode)
  for the publishers' recipes (torchxrayvision's skimage resize, CheXNet's 8-bit Pillow
  resize, Keras' nearest neighbour): they reproduce a pipeline that decodes the whole file.
  Our own anti-aliased ``pil`` recipe (the training cache's) gets a target.
- **What reads reduced.** The paths that only need the network's input: ``predict``'s batch
  loop, ``prepare``'s cache, the CSV training loader and ``evaluate`` from files. Anything
  that shows or maps pixels back onto the film (explain overlays, boxes, DICOM captures)
  reads the full image, since those use the film's own pixel grid.
- Only baseline/progressive JPEG (and MPO's primary picture) is affected; every other format
  ignores the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DECODE_MARGIN = 8.0  # the decoded side stays >= this times the side the next resize writes
SCALES = (4, 2)  # the reduced IDCT scales used (libjpeg also has 1/8: the block mean; see above)
JPEG_FORMATS = ("JPEG", "MPO")


@dataclass(frozen=True)
class DecodeTarget:
    """The side lengths the film is resized to next: ``longer`` for its longer side, ``shorter`` for its
    shorter one (0: no demand on that side). A letterbox to S is (S, 0); a crop or stretch to S is (0, S)."""

    longer: int = 0
    shorter: int = 0

    def scale(self, width: int, height: int) -> int:
        """The largest of ``SCALES`` (else 1) keeping both decoded sides >= ``DECODE_MARGIN`` x their demand."""
        long_side, short_side = max(width, height), min(width, height)
        margin = DECODE_MARGIN
        for s in SCALES:
            if long_side // s >= margin * self.longer and short_side // s >= margin * self.shorter:
                return s
        return 1


def common_target(targets: list[DecodeTarget | None]) -> DecodeTarget | None:
    """The target that serves every consumer of one decode: None (exact) if any needs exactness."""
    if not targets or any(t is None for t in targets):
        return None
    return DecodeTarget(max(t.longer for t in targets), max(t.shorter for t in targets))  # type: ignore[union-attr]


def draft_reduced(im: Any, target: DecodeTarget | None, fmt: str) -> int:
    """Ask Pillow to decode a not yet loaded JPEG at the reduced scale ``target`` allows; returns the scale.

    The mode is kept (no libjpeg colour conversion), so only the resolution changes.
    """
    if target is None or fmt not in JPEG_FORMATS:
        return 1
    width, height = im.size
    s = target.scale(width, height)
    if s == 1:
        return 1
    # draft() picks the largest of 8/4/2/1 not above min(width // w, height // h): asking for
    # (width // s, height // s) makes that exactly s.
    if im.draft(im.mode, (width // s, height // s)) is None:
        return 1  # not a plain single-tile JPEG (or drafted already): decoded in full
    return s if im.size != (width, height) else 1
