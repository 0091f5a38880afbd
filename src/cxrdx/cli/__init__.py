"""`cxrdx` command line: one subcommand per file in this folder, errors as one line, never a traceback.

A subcommand module ``cxrdx.cli.<module>`` names its job (``JOB``, a module of ``cxrdx.jobs``
with ``Config``, ``run`` and ``Result``) and renders the result (``render(result, config, args)
-> int``), its flags generated from ``JOB.Config`` by ``cxrdx.cli.generate``. ``train``
defines ``add_arguments(parser)`` and ``run(args) -> int`` itself (its flags generated in
"only given" mode, over a settings file or a resumed run). Either way it imports only light
modules at the top and the library inside functions. This file imports a subcommand's
module only when that subcommand is invoked, so ``cxrdx --help`` and
``cxrdx CMD --help`` load no torch, pandas or gradio.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cxrdx.errors import CxrdxError

# name -> (module in cxrdx.cli, one-line help). Order is the order in `cxrdx --help`: the path a user walks.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("synth", "write a synthetic chest phantom dataset (NIH layout, known labels and boxes)"),
    "stats": ("stats", "images, patients, views and label counts per finding of any supported label table"),
    "split": ("split", "patient-level train/val/test split of a label table"),
    "check-leakage": ("check_leakage", "check that split CSVs share no patient (exit 1 when they do)"),
    "prepare": ("prepare", "decode and resize images once into a memory-mapped cache for training"),
    "train": ("train", "train DenseNet121 on a prepared cache (or CSV splits); resumable; DDP via torchrun"),
    "calibrate": ("calibrate", "fit calibrated probabilities on validation data into a new checkpoint"),
    "evaluate": ("evaluate", "AUROC with patient-bootstrap CIs, thresholds, calibration, HTML report"),
    "compare": ("compare", "one model's evaluations on several datasets side by side (internal vs external)"),
    "explain": (
        "explain",
        "Grad-CAM heatmaps per finding (overlay PNG + raw .npy), optional localisation scores",
    ),
    "predict": ("predict", "findings for chest X-ray images (PNG, JPEG, DICOM; files or folders)"),
    "export": ("export", "export a checkpoint to ONNX for fast CPU inference"),
    "quantize": (
        "quantize",
        "an int8 model for predict --precision int8, kept only if validation AUROC holds",
    ),
    "import": (
        "import_weights",
        "convert public DenseNet121 weights (torchvision, CheXNet, torchxrayvision, Keras)",
    ),
    "weights": ("weights", "pretrained weights by name: list, pull, verify, rm"),
    "serve": ("serve", "web app: upload a chest X-ray, see findings and Grad-CAM"),
    "listen": (
        "listen",
        "DICOM node: receive chest X-rays by C-STORE, send SR + Grad-CAM results to a PACS",
    ),
}


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand named in argv (the first argument that is not an option), if it is one of ours."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s own arguments are added (importing only that module)."""
    from cxrdx import __version__

    parser = argparse.ArgumentParser(
        prog="cxrdx",
        description="Chest X-ray findings (NIH ChestX-ray14, 14 labels) with DenseNet121: "
        "data, training, evaluation, Grad-CAM and serving.",
    )
    parser.add_argument("--version", action="version", version=f"cxrdx {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(f"cxrdx.cli.{module_name}")
            if hasattr(module, "render"):  # a job: flags from JOB.Config, JOB.run, then render
                _add_job(sub, name, module)
            else:
                module.add_arguments(sub)
                sub.set_defaults(func=module.run)
    return parser


def _add_job(sub: argparse.ArgumentParser, name: str, module) -> None:
    """The subcommand's flags from its job's Config; running it = job.run(config, console reporter) + render."""
    from cxrdx.cli.console import ConsoleReporter
    from cxrdx.cli.generate import add_config_arguments, config_from_args

    sub.description = getattr(module, "DESCRIPTION", sub.description)
    add_config_arguments(sub, module.JOB.Config)
    if hasattr(module, "add_arguments"):  # front-end-only flags (e.g. how to print), if any
        module.add_arguments(sub)

    def run(args: argparse.Namespace) -> int:
        config = config_from_args(module.JOB.Config, args, sub)
        reporter = module.reporter(args) if hasattr(module, "reporter") else ConsoleReporter(name)
        result = module.JOB.run(config, reporter)
        return int(module.render(result, config, args) or 0)

    sub.set_defaults(func=run, job_config=module.JOB.Config)


def _message(exc: CxrdxError, args: argparse.Namespace) -> str:
    """The error's text, with the parameter names a job's error gives (`image_size`) shown as flags."""
    config_cls = getattr(args, "job_config", None)
    if config_cls is None:
        return str(exc)
    from cxrdx.cli.generate import flags_in

    return flags_in(str(exc), config_cls)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CxrdxError as exc:
        print(f"cxrdx {args.command}: error: {_message(exc, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cxrdx {args.command}: interrupted", file=sys.stderr)
        return 130
    except (
        OSError
    ) as exc:  # a path that cannot be made or written (full disk, a file in the way, permissions)
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"cxrdx {args.command}: error: {where}{exc.strerror or exc}; check that the path can be written "
            "and the disk is not full",
            file=sys.stderr,
        )
        return 2
    except MemoryError:
        print(
            f"cxrdx {args.command}: error: out of memory; use a smaller --batch-size or image size",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
