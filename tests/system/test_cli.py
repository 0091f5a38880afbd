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


def test_cli_holds_no_copies_of_library_settings():
    """Defaults and choices live in the jobs' Configs and cxrdx.settings; cli/ defines no constant of its own."""
    import ast
    from pathlib import Path

    import cxrdx.cli

    allowed = {"COMMANDS", "DESCRIPTION"}
    found = []
    for path in Path(cxrdx.cli.__file__).parent.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.Assign | ast.AnnAssign) or not isinstance(
                node.value, ast.Constant | ast.Tuple | ast.List | ast.Set | ast.Dict
            ):
                continue  # a literal value: a number, a name, a tuple of choices ...
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name) and t.id.isupper() and t.id not in allowed:
                    found.append(f"{path.name}: {t.id}")
    assert not found, found
