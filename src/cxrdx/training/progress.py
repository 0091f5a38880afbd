"""The per-epoch progress bar of a training run (its lines go to the job's ``Reporter``)."""

from __future__ import annotations

import sys


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="batch",
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        leave=False,
    )
