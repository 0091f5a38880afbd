"""`cxrdx` command line: one subcommand per job, errors as one line, never a traceback.

Each concept module owns its subcommands through ``register_cli(subparsers)``,
which adds parsers whose ``func(args) -> int`` does the work. This module only
wires them together and turns ``CxrdxError`` into a message and an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cxrdx.errors import CxrdxError

# Order here is the order in `cxrdx --help`: the path a user walks.
COMMAND_MODULES = (
    "cxrdx.phantom",  # synth
    "cxrdx.datasets",  # stats, split, check-leakage
    "cxrdx.cache",  # prepare
    "cxrdx.train",  # train
    "cxrdx.evaluate",  # evaluate
    "cxrdx.gradcam",  # explain
    "cxrdx.predict",  # predict
    "cxrdx.export",  # export
    "cxrdx.weights",  # import
    "cxrdx.app",  # serve
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrdx",
        description="Chest X-ray findings (NIH ChestX-ray14, 14 labels) with DenseNet121: "
        "data, training, evaluation, Grad-CAM and serving.",
    )
    from cxrdx import __version__

    parser.add_argument("--version", action="version", version=f"cxrdx {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CxrdxError as exc:
        print(f"cxrdx {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cxrdx {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a path that cannot be made or written (full disk, a file in the way, permissions)
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"cxrdx {args.command}: error: {where}{exc.strerror or exc}; check that the path can be written "
            "and the disk is not full",
            file=sys.stderr,
        )
        return 2
    except MemoryError:
        print(f"cxrdx {args.command}: error: out of memory; use a smaller --batch-size or image size", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
