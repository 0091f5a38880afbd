"""The one mechanism: a job's Config -> its flags -> the Config again; errors shown with flags; the reporter."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from cxrdx.cli import COMMANDS, build_parser, main
from cxrdx.cli.generate import add_config_arguments, config_from_args, flags_in, given_settings
from cxrdx.options import option, spec_of
from cxrdx.reporter import Reporter


@dataclass
class Demo:
    GROUPS: ClassVar[dict[str, str]] = {"more": "the other settings"}

    out: Path = option(metavar="DIR", help="where")
    image_size: int = option(320, aliases=("--size",), help="side in px")
    mode: str = option("a", choices=("a", "b"), help="which")
    names: list[str] = option(default_factory=list, metavar="NAME", help="names")
    finding: list[str] = option(default_factory=list, repeat=True, flag="--finding", help="one each")
    fast: bool = option(False, help="go fast")
    flip: bool = option(True, negatable=True, help="flip")
    autotune: bool = option(True, flag="--no-autotune", help="measure")
    inputs: list[str] = option(default_factory=list, positional=True, metavar="PATH", help="inputs")
    extra: float | None = option(None, group="more", help="an extra")
    hidden: int = 7  # not on the command line


def _parse(argv: list[str], only_given: bool = False):
    parser = argparse.ArgumentParser(prog="demo")
    add_config_arguments(parser, Demo, only_given=only_given)
    return parser, parser.parse_args(argv)


def test_flags_types_defaults_and_config_round_trip():
    parser, args = _parse(["--out", "o", "p1", "p2", "--size", "64", "--mode", "b", "--names", "x", "y",
                           "--finding", "A", "--finding", "B", "--fast", "--no-flip", "--no-autotune",
                           "--extra", "0.5"])  # fmt: skip
    config = config_from_args(Demo, args, parser)
    assert config == Demo(
        out=Path("o"), image_size=64, mode="b", names=["x", "y"], finding=["A", "B"], fast=True, flip=False,
        autotune=False, inputs=["p1", "p2"], extra=0.5,
    )  # fmt: skip
    parser, args = _parse(["--out", "o"])
    assert config_from_args(Demo, args, parser) == Demo(out=Path("o"))


def test_help_shows_defaults_and_hides_old_spellings(capsys):
    parser = argparse.ArgumentParser(prog="demo")
    add_config_arguments(parser, Demo)
    text = parser.format_help()
    assert "--image-size IMAGE_SIZE" in text and "(default 320)" in text and "--size" not in text
    assert "the other settings" in text and "--no-flip" in text and "hidden" not in text
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "o", "--mode", "c"])  # not a choice
    assert "invalid choice" in capsys.readouterr().err


@dataclass
class Renamed:
    image_size: int = option(aliases=("--size",), help="required, with an old spelling")


def test_required_flag_is_a_usage_error_whatever_its_spelling(capsys):
    with pytest.raises(SystemExit):
        _parse(["p"])  # --out missing
    assert "--out" in capsys.readouterr().err
    parser = argparse.ArgumentParser(prog="demo")
    add_config_arguments(parser, Renamed)
    assert config_from_args(Renamed, parser.parse_args(["--size", "5"]), parser) == Renamed(5)
    with pytest.raises(SystemExit):
        config_from_args(Renamed, parser.parse_args([]), parser)
    assert "required: --image-size" in capsys.readouterr().err


def test_only_given_keeps_what_the_command_line_names():
    _, args = _parse(["--size", "96", "--no-flip"], only_given=True)
    assert given_settings(Demo, args) == {"image_size": 96, "flip": False, "inputs": []}


def test_library_messages_name_parameters_and_the_cli_shows_flags():
    assert flags_in("`image_size` 8 is too small; `finding` X; `unknown` stays", Demo) == (
        "--image-size 8 is too small; --finding X; `unknown` stays"
    )


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_job_option_has_help(name):
    """Each job's settings are described once, in its Config; cli/ renders and adds front-end flags only."""
    module = importlib.import_module(f"cxrdx.cli.{COMMANDS[name][0]}")
    job = module.JOB
    specs = [spec_of(f) for f in dataclasses.fields(job.Config)]
    assert any(specs) and all(s.help.strip() for s in specs if s)
    assert build_parser(name) is not None


def test_old_size_spelling_still_works_and_is_hidden(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "a"), "--n", "3", "--size", "32"]) == 0
    assert main(["synth", "--out", str(tmp_path / "b"), "--n", "3", "--image-size", "32"]) == 0
    a = sorted(p.read_bytes() for p in (tmp_path / "a" / "images").iterdir())
    b = sorted(p.read_bytes() for p in (tmp_path / "b" / "images").iterdir())
    assert a == b
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    text = capsys.readouterr().out
    assert "--image-size" in text and "--size" not in text


def test_python_users_call_what_the_cli_calls(tmp_path, caplog, capsys):
    """jobs.split.run is the CLI's work: same files; its notes go to logging, not to the terminal."""
    from cxrdx.jobs import split, synth

    phantoms = synth.run(synth.Config(out=tmp_path / "ph", n=20, image_size=32))
    assert phantoms.n_images == 20 and sum(phantoms.boxes.values()) > 0
    with caplog.at_level(logging.WARNING, logger="cxrdx"):
        result = split.run(split.Config(labels=tmp_path / "ph" / "Data_Entry.csv", out=tmp_path / "py"))
    assert capsys.readouterr().err == ""
    assert result.no_positives and any("no positives" in r.getMessage() for r in caplog.records)
    assert (
        main(["split", "--labels", str(tmp_path / "ph" / "Data_Entry.csv"), "--out", str(tmp_path / "cli")])
        == 0
    )
    assert "cxrdx split: WARNING: no positives" in capsys.readouterr().err
    for name in ("train", "val", "test"):
        assert (tmp_path / "py" / f"{name}.csv").read_bytes() == (
            tmp_path / "cli" / f"{name}.csv"
        ).read_bytes()
        assert (
            result.splits[name].images == len((tmp_path / "py" / f"{name}.csv").read_text().splitlines()) - 1
        )


def test_default_reporter_passes_progress_through_and_logs():
    reporter = Reporter("demo")
    assert list(reporter.progress(iter([1, 2, 3]), 3, "x")) == [1, 2, 3]
    assert reporter.log.name == "cxrdx.demo" and reporter.bars is False
