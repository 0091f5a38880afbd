"""`cxrdx weights`: public pretrained weights by name (list, pull, verify, rm)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Public DenseNet121 chest X-ray weights by name. `pull NAME` downloads the publisher's file into the "
        "cache ($CXRDX_CACHE, else $XDG_CACHE_HOME/cxrdx, else ~/.cache/cxrdx) and imports it; every command "
        "that takes a checkpoint also takes the name. CXRDX_WEIGHTS_MIRROR=URL fetches the same file names "
        "from your own server; CXRDX_OFFLINE=1 never touches the network."
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="the known names, their importer kind, findings, and whether cached")
    pull = actions.add_parser("pull", help="download and import NAME (once); prints the checkpoint path")
    pull.add_argument("name", metavar="NAME")
    pull.add_argument("--mirror", default=None, metavar="URL", help="fetch FILE from URL/FILE instead")
    pull.add_argument(
        "--trust-unverified-mirror",
        action="store_true",
        help="accept a file the registry pins no hash for from a mirror (CXRDX_TRUST_UNVERIFIED_MIRROR=1): "
        "whatever the mirror serves is then trusted",
    )
    verify = actions.add_parser("verify", help="re-hash NAME's cached download (exit 1 when it differs)")
    verify.add_argument("name", metavar="NAME")
    rm = actions.add_parser("rm", help="delete NAME's cached download and checkpoint")
    rm.add_argument("name", metavar="NAME")
    rm.add_argument(
        "--forget", action="store_true", help="also forget the recorded SHA-256 of its first download"
    )


def run(args: argparse.Namespace) -> int:
    from cxrdx.model import pretrained

    if args.action == "list":
        rows = [("NAME", "KIND", "FINDINGS", "CACHED")]
        for name, e in pretrained.registry().items():
            findings = "init only" if e.get("init_only") else str(len(e["findings"]))
            rows.append((name, e["kind"], findings, "yes" if pretrained.is_cached(name) else "no"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        return 0
    if args.action == "pull":
        print(
            pretrained.pull(args.name, mirror=args.mirror, trust_mirror=args.trust_unverified_mirror or None)
        )
        return 0
    if args.action == "verify":
        ok, message = pretrained.verify(args.name)
        print(message, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    removed = pretrained.remove(args.name, forget=args.forget)
    for path in removed:
        print(f"removed {path}")
    if not removed:
        print(f"{args.name}: nothing cached")
    return 0
