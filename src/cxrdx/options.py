"""``option(...)``: a ``Config`` field that holds a setting's default, choices and help text once.

Every job's ``Config`` is a dataclass of such fields. The CLI builds its flags from them
(``cxrdx.cli.generate``: ``--field-name``, the type from the annotation), Python users pass the
same names as keyword arguments, and library errors name the field (in backquotes: `image_size`),
which the CLI shows as the flag (``--image-size``). Config modules import only the standard
library and light cxrdx modules, so ``cxrdx CMD --help`` loads no torch, pandas or numpy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import MISSING
from typing import Any

KEY = "cxrdx"  # the metadata key of a field made by option()


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """How a field appears on the command line (besides its name, type and default)."""

    help: str
    metavar: str | None = None
    choices: Sequence[Any] | None = None
    aliases: tuple[str, ...] = ()  # old spellings, accepted but not shown (e.g. "--size")
    positional: bool = False
    flag: str | None = None  # the flag when it is not --field-name (e.g. "--from" for source_kind)
    short: str | None = None  # a one-letter spelling shown beside the flag, e.g. "-q"
    negatable: bool = False  # a bool given as --x / --no-x (else --x sets True)
    repeat: bool = False  # a list given one value per flag: --finding A --finding B
    group: str | None = None  # a heading in --help; its text is the Config's GROUPS[group]


def option(
    default: Any = MISSING,
    *,
    help: str,
    default_factory: Callable[[], Any] | Any = MISSING,
    metavar: str | None = None,
    choices: Sequence[Any] | None = None,
    aliases: Sequence[str] = (),
    positional: bool = False,
    flag: str | None = None,
    short: str | None = None,
    negatable: bool = False,
    repeat: bool = False,
    group: str | None = None,
) -> Any:
    """A dataclass field with its command-line description; no default means the setting is required.

    A ``bool`` defaulting to True with ``flag="--no-x"`` is switched off by that flag.
    """
    spec = OptionSpec(
        help, metavar, choices, tuple(aliases), positional, flag, short, negatable, repeat, group
    )
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={KEY: spec})
    return dataclasses.field(default=default, metadata={KEY: spec})


def spec_of(field: dataclasses.Field) -> OptionSpec | None:
    """The field's command-line description, or None for a field the CLI does not show."""
    return field.metadata.get(KEY)


def flag_of(field: dataclasses.Field) -> str:
    """The flag that sets ``field`` on the command line (a positional's name in capitals)."""
    spec = spec_of(field)
    if spec and spec.positional:
        return spec.metavar or field.name.upper()
    return (spec.flag if spec and spec.flag else None) or "--" + field.name.replace("_", "-")
