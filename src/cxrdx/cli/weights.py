"""`cxrdx weights`: public pretrained weights by name (list, pull, verify, rm)."""

from __future__ import annotations

import argparse
import sys

from cxrdx.jobs import weights as JOB

DESCRIPTION = (
    "Public DenseNet121 chest X-ray weights by name. `pull NAME` downloads the publisher's file into the "
    "cache ($CXRDX_CACHE, else $XDG_CACHE_HOME/cxrdx, else ~/.cache/cxrdx) and imports it; every command "
    "that takes a checkpoint also takes the name. CXRDX_WEIGHTS_MIRROR=URL fetches the same file names "
    "from your own server; CXRDX_OFFLINE=1 never touches the network."
)


def render(result: JOB.Result, config: JOB.Config, args: argparse.Namespace) -> int:
    if result.action == "list":
        rows = [("NAME", "KIND", "FINDINGS", "CACHED")]
        rows += [(e.name, e.kind, e.findings, "yes" if e.cached else "no") for e in result.entries]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        return 0
    if result.action == "pull":
        print(result.path)
        return 0
    if result.action == "verify":
        print(result.message, file=sys.stdout if result.ok else sys.stderr)
        return 0 if result.ok else 1
    for path in result.removed:
        print(f"removed {path}")
    if not result.removed:
        print(f"{result.name}: nothing cached")
    return 0
