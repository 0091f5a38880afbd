import subprocess
import sys

import pytest

from cxrdx.cli import build_parser, main

COMMANDS = [
    "synth", "stats", "split", "check-leakage", "prepare", "train", "calibrate", "evaluate", "compare",
    "explain", "predict", "export", "quantize", "import", "weights", "serve", "listen",
]  # fmt: skip


def test_every_command_is_registered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: cxrdx " + command in capsys.readouterr().out


def test_console_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "cxrdx", "--help"], capture_output=True, text=True, check=True
    )
    assert all(c in out.stdout for c in COMMANDS)


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_cli_copies_of_library_constants_match():
    """The CLI spells a few library constants itself (so --help loads no torch); they must not drift."""
    from cxrdx.cli import predict
    from cxrdx.inference import formats, predict_job, predictor

    assert predict.BACKENDS == predictor.BACKENDS
    assert predict.HEATMAP_TOP_K == formats.HEATMAP_TOP_K
    assert predict.DEFAULT_BATCH == predict_job.DEFAULT_BATCH
